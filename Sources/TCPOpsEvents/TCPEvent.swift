// The event value and the closed list of reasons a connection ends. Its fields, and their names in
// the journal, the hooks and the event stream, are in EventSchema.swift.
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

    package var messageID: MessageID {
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

    /// `allCases` once (the synthesized property makes an array at each use).
    private static let ordered = CloseReason.allCases

    /// The reason's place in `allCases`.
    package static func index(_ r: CloseReason) -> Int { ordered.firstIndex(of: r)! }

    /// Sorts a socket error: what the peer or the network did, or nil when the error is not
    /// theirs (our own call was wrong, or this host refused: `SocketErrorOrigin`). No default: an
    /// errno nobody listed here is never reported as a peer's reset.
    public static func classify(errno e: Int32, connecting: Bool = false) -> CloseReason? {
        switch e {
        case ECONNREFUSED: return .refused
        case ETIMEDOUT: return connecting ? .connectTimeout : .keepalive
        case EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN: return .unreachable
        // ENOTCONN: a splice from a socket the peer's reset or a timeout already closed.
        case ECONNRESET, EPIPE, ECONNABORTED, ENETRESET, EPROTO, ENOTCONN: return .rst
        default: return nil
        }
    }
}

/// An error that is not the peer's: tcpopsd's own bug (a call on a socket it should not have made
/// that way), or this host (out of ports, buffers or memory; a local firewall rule).
public enum SocketErrorOrigin {
    case bug, host

    public init(errno e: Int32) {
        switch e {
        case EBADF, EFAULT, EINVAL, ENOTSOCK, EISCONN, EALREADY, EOPNOTSUPP, EAFNOSUPPORT, EDESTADDRREQ: self = .bug
        default: self = .host
        }
    }

    /// How the log says it.
    public func describe(_ e: Int32) -> String {
        switch self {
        case .bug: return "\(errnoName(e)) from tcpopsd's own call: a bug in tcpopsd, not the peer's doing"
        case .host: return "\(errnoName(e)) from this host, not the peer"
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
    /// What the journal does with it (the relay that raised it decides, by `[events] journal`).
    public var journal = JournalDisposition.write
    /// The peer closed while no tcpopsd ran (a crash, a restart): the event comes late.
    public var late = false
    /// Set by the dispatcher: the event's number (1, 2, ...) and wall-clock time.
    public var seq: UInt64 = 0
    public var unixMicros: UInt64 = 0

    public init(kind: EventKind, reason: CloseReason, conid: UInt64, peerConid: UInt64?, side: Side, listener: String,
                local: SocketAddress?, remote: SocketAddress?, durationMs: UInt64, bytesIn: UInt64, bytesOut: UInt64) {
        self.kind = kind
        self.reason = reason
        self.conid = conid
        self.peerConid = peerConid
        self.side = side
        self.listener = listener
        self.local = local
        self.remote = remote
        self.durationMs = durationMs
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
    }

    /// The name of the errno the kernel reported, or "".
    public var errnoText: String { errno == 0 ? "" : errnoName(errno) }

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
