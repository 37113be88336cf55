// A relay's end as the log says it (MESSAGE_ID connectionClosed, "relay ended: ..."): values taken
// on the relay's loop, text made on the log writer's thread. Its journal entry is written straight
// into bytes, as an event's is; its fields are in EventSchema.swift.
import TCPOpsConfig
import TCPOpsPosix

package struct RelayEnded: Sendable {
    package let level: LogLevel
    package let clientConid: UInt64
    package let upstreamConid: UInt64?
    package let listener: String
    package let local: SocketAddress?
    package let remote: SocketAddress?
    package let durationMs: UInt64
    package let bytesIn: UInt64
    package let bytesOut: UInt64
    /// How the relay ended (the failed side's reason, else the reason given), and each side's.
    package let reason: CloseReason
    package let clientReason: CloseReason
    package let upstreamReason: CloseReason
    package let toUpstream: UInt64
    package let toClient: UInt64
    package let why: String

    package init(level: LogLevel, clientConid: UInt64, upstreamConid: UInt64?, listener: String, local: SocketAddress?, remote: SocketAddress?,
                 durationMs: UInt64, bytesIn: UInt64, bytesOut: UInt64, reason: CloseReason, clientReason: CloseReason,
                 upstreamReason: CloseReason, toUpstream: UInt64, toClient: UInt64, why: String) {
        self.level = level
        self.clientConid = clientConid
        self.upstreamConid = upstreamConid
        self.listener = listener
        self.local = local
        self.remote = remote
        self.durationMs = durationMs
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.reason = reason
        self.clientReason = clientReason
        self.upstreamReason = upstreamReason
        self.toUpstream = toUpstream
        self.toClient = toClient
        self.why = why
    }

    package var message: String { "relay ended: conid \(clientConid) <-> \(upstreamConid.map { String($0) } ?? "-") (\(why))" }

    package func putMessage(_ t: inout ByteText) {
        t.put("relay ended: conid ")
        t.put(clientConid)
        t.put(" <-> ")
        if let upstreamConid { t.put(upstreamConid) } else { t.put("-") }
        t.put(" (")
        t.put(why)
        t.put(")")
    }
}
