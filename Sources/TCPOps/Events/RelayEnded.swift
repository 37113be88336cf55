// A relay's end as the log says it (MESSAGE_ID connectionClosed, "relay ended: ..."): values taken
// on the relay's loop, text made on the log writer's thread. Its journal entry is written straight
// into bytes, as an event's is; its fields are in EventSchema.swift.
import TCPOpsConfig
import TCPOpsPosix

struct RelayEnded: Sendable {
    let level: LogLevel
    let clientConid: UInt64
    let upstreamConid: UInt64?
    let listener: String
    let local: SocketAddress?
    let remote: SocketAddress?
    let durationMs: UInt64
    let bytesIn: UInt64
    let bytesOut: UInt64
    /// How the relay ended (the failed side's reason, else the reason given), and each side's.
    let reason: CloseReason
    let clientReason: CloseReason
    let upstreamReason: CloseReason
    let toUpstream: UInt64
    let toClient: UInt64
    let why: String

    var message: String { "relay ended: conid \(clientConid) <-> \(upstreamConid.map { String($0) } ?? "-") (\(why))" }

    func putMessage(_ t: inout ByteText) {
        t.put("relay ended: conid ")
        t.put(clientConid)
        t.put(" <-> ")
        if let upstreamConid { t.put(upstreamConid) } else { t.put("-") }
        t.put(" (")
        t.put(why)
        t.put(")")
    }
}
