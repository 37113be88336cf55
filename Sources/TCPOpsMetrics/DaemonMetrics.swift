// Every metric tcpopsd exports, on one Prometheus registry (swift-prometheus renders the
// exposition text). Counters and gauges are atomics: the relay loop, the hook runner and the
// control thread update them without a lock, and the metrics server renders them from its own
// thread. Labels stay bounded: listener names and enumerated reasons, never addresses or conids.
import Prometheus
import Synchronization
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsPosix
import TCPOpsProtocol

/// A metric's descriptor from its full name ("tcpopsd_accepted_total": the part after the last
/// underscore is the unit) and its help text.
package func d(_ name: String, _ help: String) -> MetricNameDescriptor {
    let cut = name.lastIndex(of: "_")!
    return MetricNameDescriptor(metricName: String(name[..<cut]), unitName: String(name[name.index(after: cut)...]), helpText: help)
}

public final class DaemonMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let listeners = Locked<[String: ListenerMetrics]>([:])

    public let hooks: HookMetrics
    package let controlClients: Gauge
    package let subscribers: Gauge
    package let reloads: [String: Counter]

    public init() {
        registry.makeGauge(descriptor: d("tcpopsd_build_info", "Always 1: the running build's version and git revision."),
                           labels: [("version", TCPOpsVersion.version), ("revision", TCPOpsVersion.revision ?? "")]).set(to: 1.0)
        registry.makeGauge(descriptor: d("tcpopsd_process_start_time_seconds", "When tcpopsd started, in seconds since the Unix epoch."))
            .set(to: Double(Clock.unixMicroseconds()) / 1e6)
        hooks = HookMetrics(registry)
        controlClients = registry.makeGauge(descriptor: d("tcpopsd_control_clients", "Clients connected to the control socket."))
        subscribers = registry.makeGauge(descriptor: d("tcpopsd_event_subscribers", "Control clients following the event stream."))
        let r = registry
        reloads = Dictionary(uniqueKeysWithValues: ["ok", "partial", "failed"].map {
            ($0, r.makeCounter(descriptor: d("tcpopsd_reloads_total", "Reloads (SIGHUP): applied, applied with errors, or refused."),
                               labels: [("result", $0)]))
        })
    }

    /// The metrics of one listener (made on first use, then kept: a counter does not go away
    /// when a reload removes its listener).
    public func listener(_ name: String) -> ListenerMetrics {
        listeners.withLock { all in
            if let m = all[name] { return m }
            let m = ListenerMetrics(registry, listener: name)
            all[name] = m
            return m
        }
    }

    public func reloaded(_ result: String) { reloads[result]?.increment() }

    /// The exposition text (Prometheus text format 0.0.4).
    public func render() -> [UInt8] { registry.emitToBuffer() }
}

public final class ListenerMetrics: Sendable {
    package let accepted: Counter
    package let rejectedMaxConnections: Counter
    package let rejectedOutOfFds: Counter
    package let rejectedProxyHeader: Counter
    package let rejectedProxySource: Counter
    package let rejectedProxyPending: Counter
    /// The listener's load, shared by every worker: its tracked connections, and how many of them
    /// still await their PROXY header (the listener's max_connections counts the others).
    package let openConnections = Atomic<Int>(0)
    package let awaitingHeader = Atomic<Int>(0)
    package let relaysOpen: Gauge
    package let connectionsOpen: Gauge
    package let bytesToUpstream: Counter
    package let bytesToClient: Counter
    package let duration: DurationHistogram
    /// By CloseReason's raw value; only the reasons a connect attempt fails with.
    package let connectFailures: [String: Counter]
    /// By reason and side (`eventIndex`): every combination an event can have, so that each
    /// series exists (at 0) from the start.
    package let events: [Counter?]

    package static let durationBuckets: [Duration] = [.milliseconds(10), .milliseconds(100), .seconds(1), .seconds(10), .seconds(60),
                                              .seconds(600), .seconds(3600), .seconds(86400)]

    package init(_ r: PrometheusCollectorRegistry, listener name: String) {
        let l = ("listener", name)
        accepted = r.makeCounter(descriptor: d("tcpopsd_accepted_total", "Clients accepted."), labels: [l])
        let rejected = d("tcpopsd_rejected_total", "Clients refused: max_connections reached, no fd for the upstream socket, no valid PROXY "
                         + "header, a PROXY header from a source not in accept_proxy_from, too many awaiting their PROXY header.")
        rejectedMaxConnections = r.makeCounter(descriptor: rejected, labels: [l, ("cause", "max_connections")])
        rejectedOutOfFds = r.makeCounter(descriptor: rejected, labels: [l, ("cause", "out_of_fds")])
        rejectedProxyHeader = r.makeCounter(descriptor: rejected, labels: [l, ("cause", "proxy_header")])
        rejectedProxySource = r.makeCounter(descriptor: rejected, labels: [l, ("cause", "proxy_source")])
        rejectedProxyPending = r.makeCounter(descriptor: rejected, labels: [l, ("cause", "proxy_pending")])
        relaysOpen = r.makeGauge(descriptor: d("tcpopsd_relays_open", "Relays now (a client and its upstream)."), labels: [l])
        connectionsOpen = r.makeGauge(descriptor: d("tcpopsd_connections_open", "Tracked connections now (both sides of every relay)."),
                                      labels: [l])
        let bytes = d("tcpopsd_relayed_bytes_total", "Bytes written to the upstreams or to the clients.")
        bytesToUpstream = r.makeCounter(descriptor: bytes, labels: [l, ("direction", "to_upstream")])
        bytesToClient = r.makeCounter(descriptor: bytes, labels: [l, ("direction", "to_client")])
        duration = r.makeDurationHistogram(descriptor: d("tcpopsd_connection_duration_seconds", "How long relays lasted, accept to end."),
                                           labels: [l], buckets: ListenerMetrics.durationBuckets)
        let failures = d("tcpopsd_upstream_connect_failures_total", "Upstream connect attempts that failed, by reason.")
        connectFailures = Dictionary(uniqueKeysWithValues: [CloseReason.refused, .unreachable, .connectTimeout, .rst].map { reason in
            (reason.rawValue, r.makeCounter(descriptor: failures, labels: [l, ("reason", reason.rawValue)]))
        })
        let raised = d("tcpopsd_events_total", "Events raised (as closed_event and event_sides let them), by event, reason and side.")
        var events = [Counter?](repeating: nil, count: CloseReason.allCases.count * Side.allCases.count)
        for reason in CloseReason.allCases {
            guard let kind = reason.event else { continue }
            for side in Side.allCases {
                events[ListenerMetrics.eventIndex(reason, side)] = r.makeCounter(
                    descriptor: raised, labels: [("event", kind.rawValue), ("reason", reason.rawValue), ("side", side.rawValue), l])
            }
        }
        self.events = events
    }

    /// Each reason's place in `CloseReason.allCases` (made once), twice for the two sides: a new
    /// reason needs no edit here.
    package static func eventIndex(_ reason: CloseReason, _ side: Side) -> Int {
        CloseReason.index(reason) * 2 + (side == .client ? 0 : 1)
    }

    /// (The event kind follows from the reason.)
    package func event(_ kind: EventKind, _ reason: CloseReason, _ side: Side) {
        events[ListenerMetrics.eventIndex(reason, side)]?.increment()
    }
}

public final class HookMetrics: Sendable {
    package let run: Counter
    package let failed: Counter
    package let killed: Counter
    package let dropped: Counter
    package let duration: DurationHistogram

    package init(_ r: PrometheusCollectorRegistry) {
        let hooks = d("tcpopsd_hooks_total", "Hook runs: started, failed (not 0, a signal, could not start), killed, dropped past queue_limit.")
        run = r.makeCounter(descriptor: hooks, labels: [("outcome", "run")])
        failed = r.makeCounter(descriptor: hooks, labels: [("outcome", "failed")])
        killed = r.makeCounter(descriptor: hooks, labels: [("outcome", "killed")])
        dropped = r.makeCounter(descriptor: hooks, labels: [("outcome", "dropped")])
        duration = r.makeDurationHistogram(descriptor: d("tcpopsd_hook_duration_seconds", "How long hooks ran."),
                                           buckets: [.milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(500),
                                                     .seconds(1), .seconds(5), .seconds(30)])
    }
}
