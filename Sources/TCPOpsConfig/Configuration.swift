// The validated, immutable configuration: what the TOML file says, with defaults filled in.
import CShims
import Glibc
import TCPOpsPosix
import TCPOpsProtocol

public enum LogLevel: Int, Sendable, Comparable, CaseIterable {
    // Values are syslog priorities, as the journal's PRIORITY field wants them.
    case error = 3, warning = 4, notice = 5, info = 6, debug = 7

    public static func < (a: LogLevel, b: LogLevel) -> Bool { a.rawValue > b.rawValue }

    public init?(name: String) {
        switch name {
        case "debug": self = .debug
        case "info": self = .info
        case "notice": self = .notice
        case "warning": self = .warning
        case "error": self = .error
        default: return nil
        }
    }

    public var name: String {
        switch self {
        case .debug: return "debug"
        case .info: return "info"
        case .notice: return "notice"
        case .warning: return "warning"
        case .error: return "error"
        }
    }
}

/// Which side of a relay a connection is.
public enum Side: String, Sendable, CaseIterable {
    case client, upstream
}

public struct DaemonSettings: Sendable, Equatable {
    public var controlSocket = "/run/tcpopsd/control.sock"
    public var controlMode: UInt32 = 0o660
    public var controlGroup: String? = nil
    /// The file's max_connections; nil: not given, then `maxConnections(fdLimit:)` fits the
    /// open-files limit (a default that every start warned about was no default).
    public var maxConnectionsGiven: Int? = nil
    /// What bounds the connections when the file says nothing and nothing is known of the fd limit.
    public static let defaultMaxConnections = 100_000
    public var maxConnections: Int {
        get { maxConnectionsGiven ?? DaemonSettings.defaultMaxConnections }
        set { maxConnectionsGiven = newValue }
    }

    /// max_connections as it applies under an open-files limit of `fdLimit`: the file's, or when
    /// it says nothing, 100,000 or what the limit allows (an fd a connection, 64 kept for the
    /// rest), whichever is less.
    public func maxConnections(fdLimit: UInt64) -> Int {
        if let n = maxConnectionsGiven { return n }
        let allowed = fdLimit > 66 ? Int(min(fdLimit - 64, UInt64(DaemonSettings.defaultMaxConnections))) : 2
        return min(DaemonSettings.defaultMaxConnections, allowed)
    }
    public var logLevel = LogLevel.info
    public var shutdownTimeout = 10.0
    /// Event loops (threads) relaying; nil: "auto", one per CPU the process may run on.
    public var workers: Int? = nil
    /// Relays, their bytes and the event counters survive a crash of tcpopsd (the crash keep,
    /// in systemd's fd store; without one, as when not run by systemd, nothing can).
    public var crashSafe = true

    /// The number of event loops to run: `workers`, or the CPUs this process may run on.
    public var workerCount: Int { workers ?? max(1, min(DaemonSettings.maxWorkers, CPUs.allowed())) }

    public static let maxWorkers = 256
}

public enum CPUs {
    /// The CPUs the process may run on (sched_getaffinity), at least 1.
    public static func allowed() -> Int { max(1, Int(tcpops_allowed_cpus())) }
}

public struct EventSettings: Sendable, Equatable {
    /// 0 never, 1 always, 2 only where enabled.
    public var closedEvent = 1
    public var callback: [String]? = nil
    public var routes: [String: [String]] = [:]
    public var hookTimeout = 10.0
    public var maxRunningHooks = 16
    public var queueLimit = 10_000
    /// tcp:opened when a relay is established (opt-in: off, it costs nothing).
    public var opened = false
    /// Which events become journal entries (the other sinks get every event).
    public var journal = JournalEvents.all

    public init() {}
}

/// [events] journal: which events become journal entries.
public enum JournalEvents: String, Sendable, CaseIterable {
    /// Every event; a relay whose two sides both closed normally is one entry.
    case all
    /// Only tcp:reset and tcp:timeout (HAProxy's `option dontlog-normal`).
    case abnormal
    /// No event entries.
    case none
}

/// One upstream as the file names it: an address, or a host name resolved to addresses (tried in
/// the resolver's order). `line` is where the file says it, for messages; it is not compared.
public struct Upstream: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: UInt16
    /// The address itself for an IP literal; for a name, what it resolved to (empty until then).
    public var addresses: [SocketAddress]
    public let isName: Bool
    public let line: Int

    public init(address: SocketAddress, line: Int = 0) {
        host = address.ip
        port = address.port
        addresses = [address]
        isName = false
        self.line = line
    }

    public init(name: String, port: UInt16, line: Int = 0) {
        host = name
        self.port = port
        addresses = []
        isName = true
        self.line = line
    }

    /// "host:port", IPv6 in brackets.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public static func == (a: Upstream, b: Upstream) -> Bool {
        a.host == b.host && a.port == b.port && a.addresses == b.addresses && a.isName == b.isName
    }
}

/// One [[listener]]'s settings. Its fields live in one shared, copy-on-write object: a relay keeps
/// the settings it was accepted under (a reload changes only new connections) for the price of a
/// reference, not a copy of every field.
public struct ListenerSettings: Sendable, Equatable {
    private final class Storage: @unchecked Sendable {
        // @unchecked: written only while uniquely referenced (ListenerSettings.unique), so never
        // while another thread can see it.
        package var name: String
        package var listen: SocketAddress
        package var upstreams: [Upstream]
        package var connectTimeout: Double = 5.0
        package var lifetime: Double = 0.0
        package var keepalive: KeepaliveSettings? = nil
        package var userTimeout: Double = 0.0
        package var upstreamUserTimeout: Double = 0.0
        package var closedEvent: Bool = false
        package var eventSides: Set<Side> = [.client, .upstream]
        package var upstreamKeepalive: KeepaliveSettings? = nil
        package var proxyProtocol: ProxyProtocol.Version? = nil
        package var acceptProxy: Bool = false
        package var acceptProxyFrom: [AddressRange]? = nil
        package var proxyHeaderTimeout: Double = 3.0
        package var proxyHeaderMaxPending: Int = 1000
        package var maxConnections: Int? = nil
        package var connectAttempts: Int = 3
        package var connectDeadline: Double = 10.0

        package init(name: String, listen: SocketAddress, upstreams: [Upstream]) {
            self.name = name
            self.listen = listen
            self.upstreams = upstreams
        }

        package func copy() -> Storage {
            let c = Storage(name: name, listen: listen, upstreams: upstreams)
            c.connectTimeout = connectTimeout
            c.lifetime = lifetime
            c.keepalive = keepalive
            c.userTimeout = userTimeout
            c.upstreamUserTimeout = upstreamUserTimeout
            c.closedEvent = closedEvent
            c.eventSides = eventSides
            c.upstreamKeepalive = upstreamKeepalive
            c.proxyProtocol = proxyProtocol
            c.acceptProxy = acceptProxy
            c.acceptProxyFrom = acceptProxyFrom
            c.proxyHeaderTimeout = proxyHeaderTimeout
            c.proxyHeaderMaxPending = proxyHeaderMaxPending
            c.maxConnections = maxConnections
            c.connectAttempts = connectAttempts
            c.connectDeadline = connectDeadline
            return c
        }
    }

    private var storage: Storage

    private mutating func unique() -> Storage {
        if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
        return storage
    }

    public var name: String {
        get { storage.name }
        set { unique().name = newValue }
    }
    public var listen: SocketAddress {
        get { storage.listen }
        set { unique().listen = newValue }
    }
    /// Tried in order when a connect fails (refused, unreachable, timed out), each address of a
    /// name in turn.
    public var upstreams: [Upstream] {
        get { storage.upstreams }
        set { unique().upstreams = newValue }
    }
    public var connectTimeout: Double {
        get { storage.connectTimeout }
        set { unique().connectTimeout = newValue }
    }
    /// Idle lifetime in seconds; 0 = none.
    public var lifetime: Double {
        get { storage.lifetime }
        set { unique().lifetime = newValue }
    }
    public var keepalive: KeepaliveSettings? {
        get { storage.keepalive }
        set { unique().keepalive = newValue }
    }
    /// TCP_USER_TIMEOUT of the client side in seconds; 0 = kernel default.
    public var userTimeout: Double {
        get { storage.userTimeout }
        set { unique().userTimeout = newValue }
    }
    /// TCP_USER_TIMEOUT of the upstream side in seconds; 0 = kernel default.
    public var upstreamUserTimeout: Double {
        get { storage.upstreamUserTimeout }
        set { unique().upstreamUserTimeout = newValue }
    }
    public var closedEvent: Bool {
        get { storage.closedEvent }
        set { unique().closedEvent = newValue }
    }
    public var eventSides: Set<Side> {
        get { storage.eventSides }
        set { unique().eventSides = newValue }
    }
    public var upstreamKeepalive: KeepaliveSettings? {
        get { storage.upstreamKeepalive }
        set { unique().upstreamKeepalive = newValue }
    }
    /// proxy_protocol: a PROXY header (v1 or v2) before the bytes relayed to the upstream.
    public var proxyProtocol: ProxyProtocol.Version? {
        get { storage.proxyProtocol }
        set { unique().proxyProtocol = newValue }
    }
    /// accept_proxy: each client must begin with a PROXY header, whose addresses are the client's.
    public var acceptProxy: Bool {
        get { storage.acceptProxy }
        set { unique().acceptProxy = newValue }
    }

    /// accept_proxy_from: the sources allowed to send a PROXY header (nil: any; the docs say such a
    /// listener must be reachable only from the balancers).
    public var acceptProxyFrom: [AddressRange]? {
        get { storage.acceptProxyFrom }
        set { unique().acceptProxyFrom = newValue }
    }
    /// proxy_header_timeout: how long a client may take to send its whole PROXY header.
    public var proxyHeaderTimeout: Double {
        get { storage.proxyHeaderTimeout }
        set { unique().proxyHeaderTimeout = newValue }
    }
    /// proxy_header_max_pending: connections awaiting their PROXY header at most (per listener);
    /// past it the oldest is closed. They count against no max_connections until their header came.
    public var proxyHeaderMaxPending: Int {
        get { storage.proxyHeaderMaxPending }
        set { unique().proxyHeaderMaxPending = newValue }
    }
    /// The listener's own max_connections (tracked connections, both sides of its relays), within
    /// [daemon] max_connections; nil: only that one bounds it.
    public var maxConnections: Int? {
        get { storage.maxConnections }
        set { unique().maxConnections = newValue }
    }
    /// connect_attempts: upstream addresses tried for one client at most.
    public var connectAttempts: Int {
        get { storage.connectAttempts }
        set { unique().connectAttempts = newValue }
    }
    /// connect_deadline: how long one client's upstream attempts may take in all.
    public var connectDeadline: Double {
        get { storage.connectDeadline }
        set { unique().connectDeadline = newValue }
    }

    public init(name: String, listen: SocketAddress, upstreams: [Upstream]) {
        storage = Storage(name: name, listen: listen, upstreams: upstreams)
    }

    public init(name: String, listen: SocketAddress, upstream: SocketAddress) {
        self.init(name: name, listen: listen, upstreams: [Upstream(address: upstream)])
    }

    public static func == (a: ListenerSettings, b: ListenerSettings) -> Bool {
        if a.storage === b.storage { return true }
        return a.name == b.name
            && a.listen == b.listen
            && a.upstreams == b.upstreams
            && a.connectTimeout == b.connectTimeout
            && a.lifetime == b.lifetime
            && a.keepalive == b.keepalive
            && a.userTimeout == b.userTimeout
            && a.upstreamUserTimeout == b.upstreamUserTimeout
            && a.closedEvent == b.closedEvent
            && a.eventSides == b.eventSides
            && a.upstreamKeepalive == b.upstreamKeepalive
            && a.proxyProtocol == b.proxyProtocol
            && a.acceptProxy == b.acceptProxy
            && a.acceptProxyFrom == b.acceptProxyFrom
            && a.proxyHeaderTimeout == b.proxyHeaderTimeout
            && a.proxyHeaderMaxPending == b.proxyHeaderMaxPending
            && a.maxConnections == b.maxConnections
            && a.connectAttempts == b.connectAttempts
            && a.connectDeadline == b.connectDeadline
    }

    /// The `index`th address to try (the upstreams in order, each address of a name in turn), with
    /// the upstream it belongs to; nil past the last.
    public func candidate(_ index: Int) -> (upstream: Upstream, address: SocketAddress)? {
        var i = index
        for u in upstreams {
            if i < u.addresses.count { return (u, u.addresses[i]) }
            i -= u.addresses.count
        }
        return nil
    }

    public var candidateCount: Int { upstreams.reduce(0) { $0 + $1.addresses.count } }

    /// The upstreams as the file lists them ("a:1, b:2").
    public var upstreamText: String { upstreams.map(\.description).joined(separator: ", ") }
}

/// [metrics]: where Prometheus scrapes (nil: not served).
public struct MetricsSettings: Sendable, Equatable {
    public var listen: SocketAddress? = nil
}

public struct Configuration: Sendable, Equatable {
    public var path: String
    public var daemon = DaemonSettings()
    public var events = EventSettings()
    public var metrics = MetricsSettings()
    public var listeners: [ListenerSettings] = []

    public init(path: String) { self.path = path }

    public static let defaultPath = "/etc/tcpopsd/tcpopsd.toml"
    public static let eventNames = ["tcp:closed", "tcp:reset", "tcp:timeout", "tcp:opened"]
}

/// Every problem found in one file, each as `PATH:LINE: message`.
public struct ConfigError: Error, CustomStringConvertible {
    public struct Problem: Sendable, Equatable {
        public let line: Int
        public let message: String
    }

    public let path: String
    public let problems: [Problem]

    /// `PATH:LINE: message`, or `PATH: message` for what concerns the whole file (line 0).
    public var description: String {
        problems.map { $0.line > 0 ? "\(path):\($0.line): \($0.message)" : "\(path): \($0.message)" }.joined(separator: "\n")
    }
}

extension Double {
    /// Seconds as the logs say them: "3 s", "0.5 s".
    public var secondsText: String { self == rounded() && abs(self) < 1e15 ? "\(Int(self)) s" : "\(self) s" }

    /// Seconds to nanoseconds for the loop's clock.
    package var nanoseconds: UInt64 { self <= 0 ? 0 : UInt64(self * 1_000_000_000) }
}
