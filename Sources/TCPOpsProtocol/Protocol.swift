// The control protocol: one JSON object per line each way. Requests are decoded here; answers
// are `{"id":..,"ok":true,...}` or `{"id":..,"ok":false,"error":".."}`. Shared by tcpopsd and
// tcpopsctl so both sides agree on every name.

public enum ControlProtocol {
    /// Longest request line accepted.
    public static let maxLine = 64 * 1024
    public static let commands = ["list", "alive", "state", "keepalive-enable", "keepalive-disable", "lifetime",
                                  "closed-event", "conid", "send", "close", "events", "stats"]
    public static let defaultSocket = "/run/tcpopsd/control.sock"
}

/// The one rule for a duration in seconds, in the file and in control requests alike: 0 (where it
/// means "none"), or from 1 ms (timers and TCP_USER_TIMEOUT work in milliseconds) to 365 days.
public enum Durations {
    public static let min = 0.001
    public static let max = 31_536_000.0

    /// Whether `s` is a duration that rule allows.
    public static func valid(_ s: Double, allowZero: Bool = true) -> Bool {
        s.isFinite && (s == 0 ? allowZero : s >= min && s <= max)
    }

    public static let rangeText = "0 (none) or from 0.001 (1 ms) to 31536000 (365 days)"
}

public struct ControlRequest: Sendable {
    public var id: Int64?
    public var cmd: String
    public var conid: UInt64?
    public var listener: String?
    public var idle: Int?
    public var count: Int?
    public var interval: Int?
    public var seconds: Double?
    /// conid: the address(es) whose connections are wanted, "ip" or "ip:port" (a host name's
    /// addresses, resolved by the client: the daemon never waits on DNS).
    public var hosts: [String]?
    /// Every command that names one connection: instead of `conid`, the client's address(es),
    /// "ip:port" (the remote the service sees; several: the addresses of one host name).
    public var remotes: [String]?
    public var port: Int?
    public var all: Bool?
    /// send: the bytes, base64.
    public var data: String?
    public var reset: Bool?
    public var follow: Bool?
    /// stats: "openmetrics" asks for the Prometheus exposition text instead of the counters.
    public var format: String?

    public init(cmd: String) { self.cmd = cmd }

    public enum DecodeFailure: Error { case message(String, id: Int64?) }

    /// Decodes one request line; the failure says what is wrong (and the id, if it could be read).
    /// Members it does not know are ignored (a newer tcpopsctl may send more).
    public static func decode(_ line: [UInt8]) -> Result<ControlRequest, DecodeFailure> {
        let json: JSON
        do {
            json = try JSON.parse(line)
        } catch {
            return .failure(.message("malformed JSON: \(error)", id: nil))
        }
        guard case .object(let members) = json else { return .failure(.message("a request is a JSON object, not \(json.typeName)", id: nil)) }
        var fields = Fields(members: members)
        let id = fields.int64("id")
        if let problem = fields.problem { return .failure(.message(problem, id: nil)) }
        guard let cmdValue = fields.value("cmd") else { return .failure(.message("missing 'cmd'", id: id)) }
        guard case .string(let cmd) = cmdValue else {
            return .failure(.message("wrong type for 'cmd': expected a string, got \(cmdValue.typeName)", id: id))
        }
        var r = ControlRequest(cmd: cmd)
        r.id = id
        r.conid = fields.uint64("conid")
        r.listener = fields.string("listener")
        r.idle = fields.int("idle")
        r.count = fields.int("count")
        r.interval = fields.int("interval")
        r.seconds = fields.double("seconds")
        r.hosts = fields.strings("host")
        r.remotes = fields.strings("remote")
        r.port = fields.int("port")
        r.all = fields.bool("all")
        r.data = fields.string("data")
        r.reset = fields.bool("reset")
        r.follow = fields.bool("follow")
        r.format = fields.string("format")
        if let problem = fields.problem { return .failure(.message(problem, id: id)) }
        return .success(r)
    }

    /// Typed access to a request's members; the first problem is kept (null means absent).
    private struct Fields {
        package let members: [(String, JSON)]
        package var problem: String?

        package init(members: [(String, JSON)]) { self.members = members }

        package func value(_ key: String) -> JSON? {
            guard let v = members.first(where: { $0.0 == key })?.1 else { return nil }
            if case .null = v { return nil }
            return v
        }

        package mutating func wrong(_ key: String, _ expected: String, _ v: JSON) {
            if problem == nil { problem = "wrong type for '\(key)': expected \(expected), got \(v.typeName)" }
        }

        package mutating func int64(_ key: String) -> Int64? {
            guard let v = value(key) else { return nil }
            if case .uint = v, v.int64 == nil {
                if problem == nil { problem = "'\(key)' is out of range (an integer from \(Int64.min) to \(Int64.max))" }
                return nil
            }
            guard let i = v.int64 else { wrong(key, "an integer", v); return nil }
            return i
        }

        package mutating func int(_ key: String) -> Int? { int64(key).flatMap { Int(exactly: $0) } }

        package mutating func uint64(_ key: String) -> UInt64? {
            guard let v = value(key) else { return nil }
            switch v {
            case .uint(let u): return u
            case .int(let i) where i >= 0: return UInt64(i)
            case .int:
                if problem == nil { problem = "'\(key)' must be a positive integer" }
                return nil
            default:
                wrong(key, "an integer", v)
                return nil
            }
        }

        package mutating func double(_ key: String) -> Double? {
            guard let v = value(key) else { return nil }
            switch v {
            case .double(let d): return d
            case .int(let i): return Double(i)
            case .uint(let u): return Double(u)
            default:
                wrong(key, "a number", v)
                return nil
            }
        }

        package mutating func string(_ key: String) -> String? {
            guard let v = value(key) else { return nil }
            guard case .string(let s) = v else { wrong(key, "a string", v); return nil }
            return s
        }

        /// A string, or an array of strings (never empty).
        package mutating func strings(_ key: String) -> [String]? {
            guard let v = value(key) else { return nil }
            switch v {
            case .string(let s): return [s]
            case .array(let items) where !items.isEmpty && items.count <= 64:
                var out: [String] = []
                for item in items {
                    guard case .string(let s) = item else { wrong(key, "a string or an array of strings", v); return nil }
                    out.append(s)
                }
                return out
            case .array(let items) where items.isEmpty:
                if problem == nil { problem = "'\(key)' is an empty array" }
                return nil
            default:
                wrong(key, "a string or an array of at most 64 strings", v)
                return nil
            }
        }

        package mutating func bool(_ key: String) -> Bool? {
            guard let v = value(key) else { return nil }
            guard case .bool(let b) = v else { wrong(key, "true or false", v); return nil }
            return b
        }
    }

    /// The request as a line (tcpopsctl).
    public func line() -> [UInt8] {
        var o: [(String, JSON)] = []
        if let id { o.append(("id", .int(id))) }
        o.append(("cmd", .string(cmd)))
        if let conid { o.append(("conid", .uint(conid))) }
        if let listener { o.append(("listener", .string(listener))) }
        if let idle { o.append(("idle", .int(Int64(idle)))) }
        if let count { o.append(("count", .int(Int64(count)))) }
        if let interval { o.append(("interval", .int(Int64(interval)))) }
        if let seconds { o.append(("seconds", .double(seconds))) }
        if let hosts { o.append(("host", hosts.count == 1 ? .string(hosts[0]) : .array(hosts.map { .string($0) }))) }
        if let remotes { o.append(("remote", remotes.count == 1 ? .string(remotes[0]) : .array(remotes.map { .string($0) }))) }
        if let port { o.append(("port", .int(Int64(port)))) }
        if let all { o.append(("all", .bool(all))) }
        if let data { o.append(("data", .string(data))) }
        if let reset { o.append(("reset", .bool(reset))) }
        if let follow { o.append(("follow", .bool(follow))) }
        if let format { o.append(("format", .string(format))) }
        var bytes = Array(JSON.object(o).text.utf8)
        bytes.append(10)
        return bytes
    }
}

public enum ControlAnswer {
    public static func ok(_ id: Int64?, _ fields: [(String, JSON)]) -> String {
        JSON.object([("id", id.map { .int($0) } ?? .null), ("ok", .bool(true))] + fields).text
    }

    public static func error(_ id: Int64?, _ message: String) -> String {
        JSON.object([("id", id.map { .int($0) } ?? .null), ("ok", .bool(false)), ("error", .string(message))]).text
    }
}

/// Base64 (RFC 4648, standard alphabet) for `send`'s bytes: padding optional when decoding.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            let b0 = UInt32(bytes[i]), b1 = n > 1 ? UInt32(bytes[i + 1]) : 0, b2 = n > 2 ? UInt32(bytes[i + 2]) : 0
            let v = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(v >> 18 & 63)])
            out.append(alphabet[Int(v >> 12 & 63)])
            out.append(n > 1 ? alphabet[Int(v >> 6 & 63)] : UInt8(ascii: "="))
            out.append(n > 2 ? alphabet[Int(v & 63)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// nil for anything but base64 text.
    public static func decode(_ text: String) -> [UInt8]? {
        var values: [UInt8] = []
        var chars = Array(text.utf8)
        while chars.last == UInt8(ascii: "=") { chars.removeLast() }
        guard text.utf8.count - chars.count <= 2 else { return nil }
        for c in chars {
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): values.append(c - 65)
            case UInt8(ascii: "a")...UInt8(ascii: "z"): values.append(c - 97 + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): values.append(c - 48 + 52)
            case UInt8(ascii: "+"): values.append(62)
            case UInt8(ascii: "/"): values.append(63)
            default: return nil
            }
        }
        guard values.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(values.count * 3 / 4)
        var i = 0
        while i < values.count {
            let n = min(4, values.count - i)
            var v: UInt32 = 0
            for k in 0..<4 { v = v << 6 | (k < n ? UInt32(values[i + k]) : 0) }
            out.append(UInt8(v >> 16 & 0xFF))
            if n > 2 { out.append(UInt8(v >> 8 & 0xFF)) }
            if n > 3 { out.append(UInt8(v & 0xFF)) }
            i += 4
        }
        return out
    }
}
