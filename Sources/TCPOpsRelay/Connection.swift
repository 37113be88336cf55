// One tracked TCP connection: a side of a relay, under its conid.
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix

public enum ConnectionState: Int, Sendable {
    case ok = 1, accepting = 2, connecting = 3, gone = -1, eof = -2, error = -3, bad = -4

    public var name: String {
        switch self {
        case .ok: return "ok"
        case .accepting: return "accepting"
        case .connecting: return "connecting"
        case .gone: return "gone"
        case .eof: return "eof"
        case .error: return "error"
        case .bad: return "bad"
        }
    }
}

public final class Connection: EventHandler, TimerSlot {
    // Stored properties by alignment, widest first, padding filled (Swift lays them out in this
    // order): one connection object is 136 bytes (a 136-byte malloc block), two per relay. Its
    // keepalive is not kept here: the socket has it (Connection.socketOptions reads it back).
    public let conid: UInt64
    public let openedAt: UInt64
    package var lastActivity: UInt64
    public internal(set) var bytesIn: UInt64 = 0
    public internal(set) var bytesOut: UInt64 = 0
    /// Idle lifetime in ns; 0 = none.
    package var lifetime: UInt64 = 0
    /// When the lifetime runs out unless data moved since, and this connection's place in its
    /// loop's timers (-1: not armed): the connection is its own entry there (TimerSlot).
    public var timerDeadline: UInt64 = 0
    /// The relay owns both of its connections and they own it back; Relay.release() breaks the
    /// cycle (nil from then on, and for a failed attempt's connection).
    package var relay: Relay?
    /// The local address: set at accept (or adoption); for an upstream, asked of the kernel
    /// (getsockname) the first time something wants it, not on every connect.
    public internal(set) var local: SocketAddress? {
        get {
            if localUnasked && fdOpen {
                localUnasked = false
                knownLocal = Socket.localAddress(fd)
            }
            return knownLocal
        }
        set {
            knownLocal = newValue
            localUnasked = false
        }
    }
    private var knownLocal: SocketAddress?
    package let fd: Int32  // here: it fills the 4 bytes between the two 19-byte addresses
    public internal(set) var remote: SocketAddress?
    /// The errno the kernel gave for this connection's end (0: none, e.g. a FIN or a timer).
    package var closeErrno: Int32 = 0
    public var timerSlot: Int32 = -1
    public let side: Side
    public internal(set) var state: ConnectionState
    /// Set once an event was raised or the close was classified: at most one event a connection.
    package var closeReason: CloseReason?
    /// The yes/no state below, one bit each (six Bools would cost the object a 16-byte malloc step).
    private var flags: UInt8 = 0
    private static let eventsBit: UInt8 = 1, raisedBit: UInt8 = 2, fdOpenBit: UInt8 = 4, lateBit: UInt8 = 8
    private static let localUnaskedBit: UInt8 = 16, trackedBit: UInt8 = 32, balancerOwnBit: UInt8 = 64, journalHeldBit: UInt8 = 128

    @inline(__always) private func flag(_ bit: UInt8) -> Bool { flags & bit != 0 }
    @inline(__always) private func set(_ bit: UInt8, _ on: Bool) { flags = on ? flags | bit : flags & ~bit }

    /// closed_event = 2: raise events for this connection (listener closed_event, or by hand).
    public var eventsEnabled: Bool {
        get { flag(Self.eventsBit) }
        set { set(Self.eventsBit, newValue) }
    }
    /// Its peer closed while no tcpopsd ran (seen when a crash's relays were taken back): its
    /// event says it comes late.
    package var late: Bool {
        get { flag(Self.lateBit) }
        set { set(Self.lateBit, newValue) }
    }
    /// Its close raised a tcp:* event.
    package var raisedEvent: Bool {
        get { flag(Self.raisedBit) }
        set { set(Self.raisedBit, newValue) }
    }
    /// False once tcpopsd closed this socket (a broken side closes before its relay ends).
    package var fdOpen: Bool {
        get { flag(Self.fdOpenBit) }
        set { set(Self.fdOpenBit, newValue) }
    }
    /// The socket is connected and its local address not yet asked for.
    package var localUnasked: Bool {
        get { flag(Self.localUnaskedBit) }
        set { set(Self.localUnaskedBit, newValue) }
    }
    /// A client that said with its PROXY header (v2 LOCAL, v1 UNKNOWN) that it is the balancer in
    /// front speaking for itself, as its health checks do: its relay raises no tcp:* event.
    package var balancerOwn: Bool {
        get { flag(Self.balancerOwnBit) }
        set { set(Self.balancerOwnBit, newValue) }
    }
    /// Its tcp:closed is held by the dispatcher for the journal, to be one entry with the other
    /// side's (`[events] journal = "all"`).
    package var journalHeld: Bool {
        get { flag(Self.journalHeldBit) }
        set { set(Self.journalHeldBit, newValue) }
    }
    /// Counted among its worker's connections (RelayContext.track) and found by conid.
    package var tracked: Bool {
        get { flag(Self.trackedBit) }
        set { set(Self.trackedBit, newValue) }
    }

    package init(conid: UInt64, side: Side, fd: Int32, state: ConnectionState, now: UInt64, eventsEnabled: Bool) {
        self.conid = conid
        self.side = side
        self.fd = fd
        self.state = state
        self.openedAt = now
        self.lastActivity = now
        flags = (fd >= 0 ? Self.fdOpenBit : 0) | (eventsEnabled ? Self.eventsBit : 0)
    }

    public override func handleEvents(_ events: UInt32) {
        relay?.handle(self, events)
    }

    /// The other side of its relay (nil while there is none: a PROXY header awaited, or gone).
    /// Its lifetime's deadline came.
    public func timerFired() { relay?.lifetimeCame(self) }

    public var peer: Connection? { side == .client ? relay?.upstream : relay?.client }
}
