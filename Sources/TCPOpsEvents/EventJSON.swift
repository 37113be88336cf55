// An event as a JSON value (the control protocol's vocabulary): the reference the byte-level
// rendering of the event stream is tested against.

import TCPOpsProtocol

extension TCPEvent {
    /// The event as a JSON value, numbered `seq` at `unixMicros`: the reference `jsonLine()` (what
    /// subscribers get, written straight into bytes) is tested against.
    public func json(seq: UInt64, unixMicros: UInt64) -> JSON {
        var e = self
        e.seq = seq
        e.unixMicros = unixMicros
        return e.jsonValue
    }
}
