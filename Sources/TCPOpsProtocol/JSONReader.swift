// Reading JSON (RFC 8259) into the ordered `JSON` value: strict (no trailing commas, no comments,
// no duplicate keys, no invalid UTF-8 or bare control characters), bounded in depth, and with an
// error that says what is wrong and where. Used for control requests in the daemon and for answers
// in tcpopsctl, which prints them in the order the daemon wrote them.
import TCPOpsPosix

public struct JSONReadError: Error, CustomStringConvertible {
    public let offset: Int
    public let message: String
    public var description: String { "\(message) at byte \(offset + 1)" }
}

extension JSON {
    /// Deeper nesting than this is refused (a request is flat; an answer two or three levels deep).
    public static let maxDepth = 64

    /// Parses one JSON text (surrounding whitespace allowed).
    public static func parse(_ bytes: some Collection<UInt8>) throws(JSONReadError) -> JSON {
        var r = JSONReader(Array(bytes))
        r.skipSpace()
        let v = try r.value(depth: 0)
        r.skipSpace()
        guard r.i == r.b.count else { throw r.fail("unexpected \(r.what) after the JSON value") }
        return v
    }

    public static func parse(_ text: String) throws(JSONReadError) -> JSON { try parse(Array(text.utf8)) }
}

private struct JSONReader {
    package let b: [UInt8]
    package var i = 0

    package init(_ bytes: [UInt8]) { b = bytes }

    package func fail(_ message: String) -> JSONReadError { JSONReadError(offset: i, message: message) }

    package var what: String {
        guard i < b.count else { return "end of input" }
        let c = b[i]
        return c >= 0x20 && c < 0x7F ? "'\(Character(Unicode.Scalar(c)))'" : "byte 0x\(String(c, radix: 16))"
    }

    package mutating func skipSpace() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0A || b[i] == 0x0D { i += 1 }
    }

    package mutating func value(depth: Int) throws(JSONReadError) -> JSON {
        guard i < b.count else { throw fail("expected a value, found the end of input") }
        switch b[i] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw fail("expected a value, found \(what)")
        }
    }

    package mutating func literal(_ word: String) throws(JSONReadError) {
        for c in word.utf8 {
            guard i < b.count, b[i] == c else { throw fail("expected '\(word)'") }
            i += 1
        }
    }

    package mutating func object(depth: Int) throws(JSONReadError) -> JSON {
        guard depth <= JSON.maxDepth else { throw fail("nested deeper than \(JSON.maxDepth)") }
        i += 1
        var members: [(String, JSON)] = []
        var seen = Set<String>()
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "}") {
            i += 1
            return .object(members)
        }
        while true {
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a member name (a string), found \(what)") }
            let start = i
            let key = try string()
            guard seen.insert(key).inserted else { throw JSONReadError(offset: start, message: "duplicate member '\(key)'") }
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':' after a member name, found \(what)") }
            i += 1
            skipSpace()
            members.append((key, try value(depth: depth)))
            skipSpace()
            guard i < b.count else { throw fail("an object is not closed with '}'") }
            if b[i] == UInt8(ascii: ",") {
                i += 1
                continue
            }
            guard b[i] == UInt8(ascii: "}") else { throw fail("expected ',' or '}' in an object, found \(what)") }
            i += 1
            return .object(members)
        }
    }

    package mutating func array(depth: Int) throws(JSONReadError) -> JSON {
        guard depth <= JSON.maxDepth else { throw fail("nested deeper than \(JSON.maxDepth)") }
        i += 1
        var items: [JSON] = []
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "]") {
            i += 1
            return .array(items)
        }
        while true {
            skipSpace()
            items.append(try value(depth: depth))
            skipSpace()
            guard i < b.count else { throw fail("an array is not closed with ']'") }
            if b[i] == UInt8(ascii: ",") {
                i += 1
                continue
            }
            guard b[i] == UInt8(ascii: "]") else { throw fail("expected ',' or ']' in an array, found \(what)") }
            i += 1
            return .array(items)
        }
    }

    package mutating func string() throws(JSONReadError) -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < b.count else { throw fail("a string is not closed with '\"'") }
            let c = b[i]
            switch c {
            case UInt8(ascii: "\""):
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else { throw fail("a string that is not valid UTF-8") }
                return s
            case UInt8(ascii: "\\"):
                i += 1
                guard i < b.count else { throw fail("a string is not closed with '\"'") }
                let e = b[i]
                i += 1
                if let byte = simpleEscape(e) {
                    out.append(byte)
                    continue
                }
                switch e {
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "u"):
                    var v = try hex4()
                    if (0xD800...0xDBFF).contains(v) {
                        // A high surrogate must be followed by \u and a low one.
                        guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                            throw fail("a lone UTF-16 surrogate in \\u escapes")
                        }
                        i += 2
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw fail("a lone UTF-16 surrogate in \\u escapes") }
                        v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(v) {
                        throw fail("a lone UTF-16 surrogate in \\u escapes")
                    }
                    guard let scalar = Unicode.Scalar(v) else { throw fail("an invalid \\u escape") }
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default:
                    i -= 1
                    throw fail("an unknown escape \\\(what) in a string")
                }
            default:
                guard c >= 0x20 else { throw fail("a control character (byte 0x\(String(c, radix: 16))) in a string") }
                out.append(c)
                i += 1
            }
        }
    }

    package mutating func hex4() throws(JSONReadError) -> UInt32 {
        guard i + 4 <= b.count else { throw fail("\\u needs four hex digits") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard let d = hexValue(b[i]) else { throw fail("\\u needs four hex digits") }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    /// -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; an integer when it has neither part and fits.
    package mutating func number() throws(JSONReadError) -> JSON {
        let start = i
        if b[i] == UInt8(ascii: "-") { i += 1 }
        guard i < b.count, isDigit(b[i]) else { throw fail("expected a digit") }
        if b[i] == UInt8(ascii: "0") {
            i += 1
            if i < b.count, isDigit(b[i]) { throw fail("a number with a leading zero") }
        } else {
            while i < b.count, isDigit(b[i]) { i += 1 }
        }
        var integral = true
        if i < b.count, b[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard i < b.count, isDigit(b[i]) else { throw fail("expected a digit after '.'") }
            while i < b.count, isDigit(b[i]) { i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            integral = false
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard i < b.count, isDigit(b[i]) else { throw fail("expected a digit in the exponent") }
            while i < b.count, isDigit(b[i]) { i += 1 }
        }
        let text = String(decoding: b[start..<i], as: UTF8.self)
        if integral {
            if let v = Int64(text) { return .int(v) }
            if let v = UInt64(text) { return .uint(v) }
        }
        guard let d = Double(text), d.isFinite else { throw JSONReadError(offset: start, message: "a number out of range") }
        return .double(d)
    }
}


extension JSON {
    /// The array's items, or nil.
    public var items: [JSON]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// An integer value (from .int or .uint) that fits Int64.
    public var int64: Int64? {
        switch self {
        case .int(let i): return i
        case .uint(let u): return Int64(exactly: u)
        default: return nil
        }
    }

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The JSON type, for messages.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "true or false"
        case .int, .uint: return "an integer"
        case .double: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}
