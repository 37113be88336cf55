// A relay's end as the log says it (MESSAGE_ID connectionClosed, "relay ended: ..."): values taken
// on the relay's loop, text made on the log writer's thread. Its journal entry is written straight
// into bytes, as an event's is; `message` and `fields` are the value-level rendering (the stderr
// line, and the reference the byte rendering is tested against).
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

    var fields: [Logger.Field] {
        var f: [Logger.Field] = [("TCPOPS_CONID", String(clientConid)), ("TCPOPS_SIDE", Side.client.rawValue), ("TCPOPS_LISTENER", listener)]
        if let l = local { f.append(("TCPOPS_LOCAL", l.description)) }
        if let r = remote { f.append(("TCPOPS_REMOTE", r.description)) }
        f.append(("TCPOPS_DURATION_MS", String(durationMs)))
        f.append(("TCPOPS_BYTES_IN", String(bytesIn)))
        f.append(("TCPOPS_BYTES_OUT", String(bytesOut)))
        if let upstreamConid { f.append(("TCPOPS_PEER_CONID", String(upstreamConid))) }
        f.append(("TCPOPS_REASON", reason.rawValue))
        f.append(("TCPOPS_ORIGIN", reason.origin.rawValue))
        f.append(("TCPOPS_CLIENT_REASON", clientReason.rawValue))
        f.append(("TCPOPS_UPSTREAM_REASON", upstreamReason.rawValue))
        f.append(("TCPOPS_BYTES_TO_UPSTREAM", String(toUpstream)))
        f.append(("TCPOPS_BYTES_TO_CLIENT", String(toClient)))
        return f
    }

    func putMessage(_ t: inout ByteText) {
        t.put("relay ended: conid ")
        t.put(clientConid)
        t.put(" <-> ")
        if let upstreamConid { t.put(upstreamConid) } else { t.put("-") }
        t.put(" (")
        t.put(why)
        t.put(")")
    }

    /// The fields of `fields`, in its order, written into `t` (see TCPEvent.forEachField).
    func forEachField(_ t: inout ByteText, _ field: (inout ByteText, StaticString) -> Void, _ end: (inout ByteText) -> Void) {
        field(&t, "TCPOPS_CONID"); t.put(clientConid); end(&t)
        field(&t, "TCPOPS_SIDE"); t.put(Side.client.rawValue); end(&t)
        putConnectionFields(&t, listener: listener, local: local, remote: remote, durationMs: durationMs, bytesIn: bytesIn,
                            bytesOut: bytesOut, field, end)
        if let upstreamConid { field(&t, "TCPOPS_PEER_CONID"); t.put(upstreamConid); end(&t) }
        field(&t, "TCPOPS_REASON"); t.put(reason.rawValue); end(&t)
        field(&t, "TCPOPS_ORIGIN"); t.put(reason.origin.rawValue); end(&t)
        field(&t, "TCPOPS_CLIENT_REASON"); t.put(clientReason.rawValue); end(&t)
        field(&t, "TCPOPS_UPSTREAM_REASON"); t.put(upstreamReason.rawValue); end(&t)
        field(&t, "TCPOPS_BYTES_TO_UPSTREAM"); t.put(toUpstream); end(&t)
        field(&t, "TCPOPS_BYTES_TO_CLIENT"); t.put(toClient); end(&t)
    }
}
