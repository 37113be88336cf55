// Answers from tcpopsd, decoded for printing.
import FoundationEssentials

indirect enum Value: Decodable {
    case int(Int64), double(Double), string(String), bool(Bool), null
    case array([Value]), object([String: Value])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([Value].self) { self = .array(a) }
        else { self = .object(try c.decode([String: Value].self)) }
    }

    var text: String {
        switch self {
        case .int(let i): return String(i)
        case .double(let d): return d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
        case .string(let s): return s
        case .bool(let b): return b ? "yes" : "no"
        case .null: return "-"
        case .array(let a): return a.map(\.text).joined(separator: ",")
        case .object(let o): return o.keys.sorted().map { "\($0)=\(o[$0]!.text)" }.joined(separator: ",")
        }
    }

    var int: Int64? {
        if case .int(let i) = self { return i }
        return nil
    }

    subscript(key: String) -> Value {
        if case .object(let o) = self { return o[key] ?? .null }
        return .null
    }
}

struct Answer: Decodable {
    var ok: Bool
    var error: String?
    var result: Value?
    var state: String?
    var count: Int?

    static func parse(_ line: String) -> Answer? {
        try? JSONDecoder().decode(Answer.self, from: Data(line.utf8))
    }
}
