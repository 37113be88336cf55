// The event value and the closed list of reasons a connection ends. One CloseReason feeds the
// journal, the hook environment and (later) the control output alike.
import Glibc
import TCPOpsConfig
import TCPOpsPosix

public enum EventKind: String, Sendable, CaseIterable {
    case closed = "tcp:closed"
    case reset = "tcp:reset"
    case timeout = "tcp:timeout"
    /// A relay established (`[events] opened = true`): both conids and the client's addresses
    /// known. To hooks and the stream; the journal has it only at debug.
    case opened = "tcp:opened"

    var messageID: MessageID {
        switch self {
        case .closed: return .eventClosed
        case .reset: return .eventReset
        case .timeout: return .eventTimeout
        case .opened: return .connectionOpened
        }
    }
}

/// Where a close came from: the peer itself, the network between, tcpopsd (or an operator), or a
/// timer tcpopsd keeps.
public enum CloseOrigin: String, Sendable, CaseIterable {
    case peer, network, local, timer
}

public enum CloseReason: String, Sendable, CaseIterable {
    case fin, rst, refused, keepalive, unreachable
    case connectTimeout = "connect-timeout"
    case lifetime
    /// tcpopsd closed it itself: no event.
    case local
    /// Not a close: the reason tcp:opened gives (the upstream accepted the relay's connect).
    case established

    /// The event this reason raises; nil for closes tcpopsd starts (other than lifetime).
    public var event: EventKind? {
        switch self {
        case .fin: return .closed
        case .rst, .refused: return .reset
        case .keepalive, .unreachable, .connectTimeout, .lifetime: return .timeout
        case .local: return nil
        case .established: return .opened
        }
    }

    public var origin: CloseOrigin {
        switch self {
        case .fin, .rst, .refused, .established: return .peer
        case .keepalive, .unreachable: return .network
        case .connectTimeout, .lifetime: return .timer
        case .local: return .local
        }
    }

    /// Sorts a socket error. ETIMEDOUT comes from keepalive probes or TCP_USER_TIMEOUT.
    public static func classify(errno e: Int32, connecting: Bool = false) -> CloseReason {
        switch e {
        case ECONNREFUSED: return .refused
        case ETIMEDOUT: return connecting ? .connectTimeout : .keepalive
        case EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN: return .unreachable
        default: return .rst  // ECONNRESET, EPIPE, ECONNABORTED and any other broken-connection error
        }
    }
}

public struct TCPEvent: Sendable {
    public var kind: EventKind
    public var reason: CloseReason
    public var conid: UInt64
    public var peerConid: UInt64?
    public var side: Side
    public var listener: String
    public var local: SocketAddress?
    public var remote: SocketAddress?
    public var durationMs: UInt64
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    /// The errno the kernel reported for the close (0: none).
    public var errno: Int32 = 0
    /// TCP_INFO just before the socket was closed (nil when there was no socket to ask).
    public var tcp: TCPInfo?
    /// Set by the dispatcher: the event's number (1, 2, ...) and wall-clock time.
    public var seq: UInt64 = 0
    public var unixMicros: UInt64 = 0

    /// Journal fields, SPEC names, as values: the reference the byte-level rendering
    /// (EventText.swift, what the journal gets) is tested against.
    public var journalFields: [Logger.Field] {
        var f: [Logger.Field] = [
            ("TCPOPS_EVENT", kind.rawValue), ("TCPOPS_REASON", reason.rawValue), ("TCPOPS_CONID", String(conid)),
        ]
        if let p = peerConid { f.append(("TCPOPS_PEER_CONID", String(p))) }
        f.append(("TCPOPS_SIDE", side.rawValue))
        f.append(("TCPOPS_LISTENER", listener))
        if let local { f.append(("TCPOPS_LOCAL", local.description)) }
        if let remote { f.append(("TCPOPS_REMOTE", remote.description)) }
        f.append(("TCPOPS_DURATION_MS", String(durationMs)))
        f.append(("TCPOPS_BYTES_IN", String(bytesIn)))
        f.append(("TCPOPS_BYTES_OUT", String(bytesOut)))
        for (k, v) in explanation { f.append((k, v)) }
        return f
    }

    /// The name of the errno the kernel reported, or "".
    public var errnoText: String { errno == 0 ? "" : errnoName(errno) }

    /// Why it closed: TCPOPS_ORIGIN, TCPOPS_ERRNO and the TCP_INFO snapshot (empty values when
    /// there was none), in the order hooks and the journal get them.
    public var explanation: [(String, String)] {
        var f: [(String, String)] = [("TCPOPS_ORIGIN", reason.origin.rawValue), ("TCPOPS_ERRNO", errnoText)]
        for (name, value) in TCPEvent.tcpFields(tcp) { f.append(("TCPOPS_TCP_" + name.uppercased(), value.map(String.init) ?? "")) }
        return f
    }

    /// The TCP_INFO fields by their lowercase names (`rtt_us`, ...), nil where unknown.
    static func tcpFields(_ t: TCPInfo?) -> [(String, UInt32?)] {
        [("rtt_us", t?.rttMicros), ("rttvar_us", t?.rttvarMicros), ("retransmits", t?.retransmits), ("unacked", t?.unacked),
         ("lost", t?.lost), ("last_data_recv_ms", t?.lastDataReceivedMs), ("last_ack_recv_ms", t?.lastAckReceivedMs),
         ("pmtu", t?.pmtu), ("snd_cwnd", t?.sendCwnd)]
    }

    /// The hook environment (SPEC "Hooks"), without PATH and TCPOPS_CONTROL_SOCKET.
    public var hookEnvironment: [String] {
        [
            "TCPOPS_EVENT=\(kind.rawValue)",
            "TCPOPS_REASON=\(reason.rawValue)",
            "TCPOPS_CONID=\(conid)",
            "TCPOPS_PEER_CONID=\(peerConid.map(String.init) ?? "")",
            "TCPOPS_SIDE=\(side.rawValue)",
            "TCPOPS_LISTENER=\(listener)",
            "TCPOPS_PROTO=tcp",
            "TCPOPS_LOCAL_IP=\(local?.ip ?? "")",
            "TCPOPS_LOCAL_PORT=\(local.map { String($0.port) } ?? "")",
            "TCPOPS_REMOTE_IP=\(remote?.ip ?? "")",
            "TCPOPS_REMOTE_PORT=\(remote.map { String($0.port) } ?? "")",
            "TCPOPS_DURATION_MS=\(durationMs)",
            "TCPOPS_BYTES_IN=\(bytesIn)",
            "TCPOPS_BYTES_OUT=\(bytesOut)",
        ] + explanation.map { "\($0.0)=\($0.1)" }
    }
}

/// closed_event: 0 none, 1 all, 2 only where enabled (listener closed_event = true or by hand);
/// event_sides narrows it to the listed sides.
public enum EventPolicy {
    public static func raises(mode: Int, enabled: Bool, side: Side, sides: Set<Side>) -> Bool {
        guard sides.contains(side) else { return false }
        switch mode {
        case 0: return false
        case 2: return enabled
        default: return true
        }
    }
}
