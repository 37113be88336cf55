// Events rendered straight into bytes: the journal entry, the stderr line and the JSON line of an
// event are written into one growing byte buffer, without a String per field. Every event is
// rendered this way once per sink that exists, off the relay's loop (on the log writer's and the
// control server's threads), so that raising an event costs the relay little more than a copy.
import Glibc
import TCPOpsPosix

/// A byte buffer written front to back.
public struct ByteText {
    public var bytes: [UInt8] = []

    public init(capacity: Int = 512) { bytes.reserveCapacity(capacity) }

    @inline(__always)
    public mutating func put(_ s: StaticString) {
        s.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    @inline(__always)
    public mutating func put(_ s: String) {
        var s = s
        s.withUTF8 { bytes.append(contentsOf: $0) }
    }

    @inline(__always)
    public mutating func put(byte: UInt8) { bytes.append(byte) }

    public mutating func put(_ n: UInt64) {
        if n < 10 {
            bytes.append(UInt8(ascii: "0") + UInt8(n))
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { d in
            var i = 20
            var v = n
            while v > 0 {
                i -= 1
                d[i] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: d[i..<20]))
        }
    }

    public mutating func put(_ n: UInt32) { put(UInt64(n)) }

    /// "ip:port" ("[v6]:port"), as SocketAddress.description.
    public mutating func put(_ a: SocketAddress) {
        if a.family == .v4 {
            a.withAddressBytes { raw in
                for (i, b) in raw.enumerated() {
                    if i > 0 { bytes.append(UInt8(ascii: ".")) }
                    put(UInt64(b))
                }
            }
        } else {
            put("[")
            put(a.ip)
            put("]")
        }
        bytes.append(UInt8(ascii: ":"))
        put(UInt64(a.port))
    }

    /// `s` as a JSON string, quotes included.
    public mutating func putJSON(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for u in s.utf8 {
            switch u {
            case UInt8(ascii: "\""): put("\\\"")
            case UInt8(ascii: "\\"): put("\\\\")
            case UInt8(ascii: "\n"): put("\\n")
            case UInt8(ascii: "\r"): put("\\r")
            case UInt8(ascii: "\t"): put("\\t")
            case 0..<0x20:
                put("\\u00")
                bytes.append(UInt8(ascii: "0") + (u >> 4))
                let low = u & 15
                bytes.append(low < 10 ? UInt8(ascii: "0") + low : UInt8(ascii: "a") + low - 10)
            default: bytes.append(u)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    public var string: String { String(decoding: bytes, as: UTF8.self) }
}

extension TCPEvent {
    /// The journal and log message: "tcp:closed on conid 7 (client 127.0.0.1:5060, reason fin)".
    func putMessage(_ t: inout ByteText) {
        t.put(kind.rawValue)
        t.put(" on conid ")
        t.put(conid)
        t.put(" (")
        t.put(side.rawValue)
        t.put(" ")
        if let remote { t.put(remote) } else { t.put("?") }
        t.put(", reason ")
        t.put(reason.rawValue)
        t.put(")")
    }

    /// Each journal field (SPEC names, in `journalFields`' order) as KEY, value: `field` is called
    /// with the key and writes the value itself. The TCP_INFO fields are empty where unknown.
    func forEachField(_ t: inout ByteText, _ field: (inout ByteText, StaticString) -> Void, _ end: (inout ByteText) -> Void) {
        field(&t, "TCPOPS_EVENT"); t.put(kind.rawValue); end(&t)
        field(&t, "TCPOPS_REASON"); t.put(reason.rawValue); end(&t)
        field(&t, "TCPOPS_CONID"); t.put(conid); end(&t)
        if let peerConid { field(&t, "TCPOPS_PEER_CONID"); t.put(peerConid); end(&t) }
        field(&t, "TCPOPS_SIDE"); t.put(side.rawValue); end(&t)
        putConnectionFields(&t, listener: listener, local: local, remote: remote, durationMs: durationMs, bytesIn: bytesIn,
                            bytesOut: bytesOut, field, end)
        field(&t, "TCPOPS_ORIGIN"); t.put(reason.origin.rawValue); end(&t)
        field(&t, "TCPOPS_ERRNO"); if errno != 0 { t.put(errnoName(errno)) }; end(&t)
        forEachTCPField { key, _, value in
            field(&t, key)
            if let value { t.put(value) }
            end(&t)
        }
    }

    /// The TCP_INFO snapshot's fields in order: journal key, the JSON line's `,"key":`, value
    /// (nil where unknown).
    func forEachTCPField(_ body: (_ journalKey: StaticString, _ jsonKey: StaticString, _ value: UInt32?) -> Void) {
        body("TCPOPS_TCP_RTT_US", ",\"tcp_rtt_us\":", tcp?.rttMicros)
        body("TCPOPS_TCP_RTTVAR_US", ",\"tcp_rttvar_us\":", tcp?.rttvarMicros)
        body("TCPOPS_TCP_RETRANSMITS", ",\"tcp_retransmits\":", tcp?.retransmits)
        body("TCPOPS_TCP_UNACKED", ",\"tcp_unacked\":", tcp?.unacked)
        body("TCPOPS_TCP_LOST", ",\"tcp_lost\":", tcp?.lost)
        body("TCPOPS_TCP_LAST_DATA_RECV_MS", ",\"tcp_last_data_recv_ms\":", tcp?.lastDataReceivedMs)
        body("TCPOPS_TCP_LAST_ACK_RECV_MS", ",\"tcp_last_ack_recv_ms\":", tcp?.lastAckReceivedMs)
        body("TCPOPS_TCP_PMTU", ",\"tcp_pmtu\":", tcp?.pmtu)
        body("TCPOPS_TCP_SND_CWND", ",\"tcp_snd_cwnd\":", tcp?.sendCwnd)
    }

    /// The event line of `tcpopsctl events` (same keys and order as `json(seq:unixMicros:)`).
    public func jsonLine() -> String {
        var t = ByteText(capacity: 640)
        t.put("{\"seq\":"); t.put(seq)
        t.put(",\"time_us\":"); t.put(unixMicros)
        t.put(",\"event\":\""); t.put(kind.rawValue)
        t.put("\",\"reason\":\""); t.put(reason.rawValue)
        t.put("\",\"conid\":"); t.put(conid)
        t.put(",\"peer_conid\":"); if let peerConid { t.put(peerConid) } else { t.put("null") }
        t.put(",\"side\":\""); t.put(side.rawValue)
        t.put("\",\"listener\":"); t.putJSON(listener)
        t.put(",\"local\":"); if let local { t.put(byte: 34); t.put(local); t.put(byte: 34) } else { t.put("null") }
        t.put(",\"remote\":"); if let remote { t.put(byte: 34); t.put(remote); t.put(byte: 34) } else { t.put("null") }
        t.put(",\"duration_ms\":"); t.put(durationMs)
        t.put(",\"bytes_in\":"); t.put(bytesIn)
        t.put(",\"bytes_out\":"); t.put(bytesOut)
        t.put(",\"origin\":\""); t.put(reason.origin.rawValue)
        t.put("\",\"errno\":\""); if errno != 0 { t.put(errnoName(errno)) }
        t.put("\"")
        forEachTCPField { _, key, value in
            t.put(key)
            if let value { t.put(value) } else { t.put("null") }
        }
        t.put("}")
        return t.string
    }
}

/// The fields every per-connection entry carries, TCPOPS_LISTENER to TCPOPS_BYTES_OUT, in that
/// order (an event's and a relay's end; see TCPEvent.forEachField for `field` and `end`).
func putConnectionFields(_ t: inout ByteText, listener: String, local: SocketAddress?, remote: SocketAddress?, durationMs: UInt64,
                         bytesIn: UInt64, bytesOut: UInt64, _ field: (inout ByteText, StaticString) -> Void,
                         _ end: (inout ByteText) -> Void) {
        field(&t, "TCPOPS_LISTENER"); t.put(listener); end(&t)
        if let local { field(&t, "TCPOPS_LOCAL"); t.put(local); end(&t) }
        if let remote { field(&t, "TCPOPS_REMOTE"); t.put(remote); end(&t) }
        field(&t, "TCPOPS_DURATION_MS"); t.put(durationMs); end(&t)
        field(&t, "TCPOPS_BYTES_IN"); t.put(bytesIn); end(&t)
        field(&t, "TCPOPS_BYTES_OUT"); t.put(bytesOut); end(&t)
}
