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
    package func putMessage(_ t: inout ByteText) {
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

    /// The event line of `tcpopsctl events` (the JSON value's keys, in its order).
    public func jsonLine() -> String {
        var t = ByteText(capacity: 640)
        t.put("{")
        putJSONMembers(&t)
        t.put("}")
        return t.string
    }
}
