// An event as a JSON value (the control protocol's vocabulary): the reference the byte-level
// rendering of the event stream is tested against.

import TCPOpsProtocol

extension TCPEvent {
    /// The event as a JSON value: the reference `jsonLine()` (what subscribers get, written
    /// straight into bytes) is tested against.
    public func json(seq: UInt64, unixMicros: UInt64) -> JSON {
        var o: [(String, JSON)] = [
            ("seq", .uint(seq)), ("time_us", .uint(unixMicros)),
            ("event", .string(kind.rawValue)), ("reason", .string(reason.rawValue)), ("conid", .uint(conid)),
        ]
        o.append(("peer_conid", peerConid.map { .uint($0) } ?? .null))
        o.append(("side", .string(side.rawValue)))
        o.append(("listener", .string(listener)))
        o.append(("local", local.map { .string($0.description) } ?? .null))
        o.append(("remote", remote.map { .string($0.description) } ?? .null))
        o.append(("duration_ms", .uint(durationMs)))
        o.append(("bytes_in", .uint(bytesIn)))
        o.append(("bytes_out", .uint(bytesOut)))
        o.append(("origin", .string(reason.origin.rawValue)))
        o.append(("errno", .string(errnoText)))
        for (name, value) in TCPEvent.tcpFields(tcp) { o.append(("tcp_" + name, value.map { .uint(UInt64($0)) } ?? .null)) }
        return .object(o)
    }
}
