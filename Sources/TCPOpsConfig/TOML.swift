// A TOML 1.0 reader that keeps the line of every value, for `PATH:LINE:` errors. Written for this
// project (it replaced TOMLKit, which leaked the whole parsed document and every string it handed
// out: 10 MB per 1,000 reloads). Strict: the first syntax or structure error stops it, with its line.
// Dates and times are recognised and kept as text (no key of ours takes one).
import TCPOpsPosix

public enum TOMLValue {
    case string(String)
    case integer(Int64)
    case float(Double)
    case bool(Bool)
    case datetime(String)
    case array(TOMLArray)
    case table(TOMLTable)

    /// The TOML type, for messages ("expected a string, got integer").
    public var typeName: String {
        switch self {
        case .string: return "string"
        case .integer: return "integer"
        case .float: return "float"
        case .bool: return "boolean"
        case .datetime: return "date-time"
        case .array: return "array"
        case .table: return "table"
        }
    }

    /// "an integer", "a string": the type with its article.
    public var aTypeName: String {
        let n = typeName
        return (n.first.map { "aeiou".contains($0) } ?? false ? "an " : "a ") + n
    }

    /// The value as it would be written (short), for messages.
    public var text: String {
        switch self {
        case .string(let s): return "\"\(s)\""
        case .integer(let i): return String(i)
        case .float(let d): return d.isNaN ? "nan" : d.isInfinite ? (d < 0 ? "-inf" : "inf") : String(d)
        case .bool(let b): return b ? "true" : "false"
        case .datetime(let s): return s
        case .array(let a): return "[" + a.items.map(\.value.text).joined(separator: ", ") + "]"
        case .table: return "{...}"
        }
    }
}

/// A value and the line it starts on.
public struct TOMLNode {
    public let value: TOMLValue
    public let line: Int
}

public final class TOMLArray {
    public fileprivate(set) var items: [TOMLNode] = []
    /// Made by `[[name]]` headers (only those may be appended to by another header).
    package let ofTables: Bool
    package init(ofTables: Bool) { self.ofTables = ofTables }
}

public final class TOMLTable {
    /// How a table came to be: that decides what may still add to it.
    package enum Origin { case root, implicit, header, dotted, inline, arrayElement }
    package var origin: Origin
    public let line: Int
    public private(set) var keys: [String] = []
    private var values: [String: TOMLNode] = [:]

    package init(origin: Origin, line: Int) {
        self.origin = origin
        self.line = line
    }

    public subscript(key: String) -> TOMLNode? { values[key] }

    fileprivate func set(_ key: String, _ node: TOMLNode) {
        if values.updateValue(node, forKey: key) == nil { keys.append(key) }
    }
}

public struct TOMLError: Error, CustomStringConvertible {
    public let line: Int
    public let message: String
    public var description: String { message }
}

public enum TOML {
    /// Parses a document; the root table, or the first error.
    public static func parse(_ text: String) throws(TOMLError) -> TOMLTable {
        var p = TOMLParser(Array(text.utf8))
        return try p.document()
    }
}

private struct TOMLParser {
    package let s: [UInt8]
    package var i = 0
    package var line = 1
    package let root: TOMLTable
    /// The table that key/value lines go into: the root, or the last header's.
    package var current: TOMLTable
    package var depth = 0
    package static let maxDepth = 64

    package init(_ bytes: [UInt8]) {
        s = bytes
        root = TOMLTable(origin: .root, line: 1)
        current = root
    }

    package var atEnd: Bool { i >= s.count }
    package var peek: UInt8 { i < s.count ? s[i] : 0 }
    package func peek(_ k: Int) -> UInt8 { i + k < s.count ? s[i + k] : 0 }

    package func fail(_ message: String, line: Int? = nil) -> TOMLError { TOMLError(line: line ?? self.line, message: message) }

    package mutating func document() throws(TOMLError) -> TOMLTable {
        while true {
            skipBlank()
            if atEnd { return root }
            switch peek {
            case 0x0A, 0x0D:
                try newline()
            case UInt8(ascii: "#"):
                try comment()
            case UInt8(ascii: "["):
                try header()
                try endOfLine("a table header")
            default:
                try keyValue(into: current)
                try endOfLine("a value")
            }
        }
    }

    // MARK: whitespace, comments, newlines

    package mutating func skipBlank() {
        while i < s.count, s[i] == 0x20 || s[i] == 0x09 { i += 1 }
    }

    package mutating func newline() throws(TOMLError) {
        if peek == 0x0D {
            guard peek(1) == 0x0A else { throw fail("a carriage return not followed by a line feed") }
            i += 1
        }
        i += 1
        line += 1
    }

    package mutating func comment() throws(TOMLError) {
        i += 1
        while i < s.count, s[i] != 0x0A {
            if s[i] == 0x0D && peek(1) == 0x0A { break }
            if isControl(s[i]) { throw fail("a control character (0x\(hex(s[i]))) in a comment") }
            i += 1
        }
    }

    /// After a value or header: only blanks and a comment up to the end of the line.
    package mutating func endOfLine(_ after: String) throws(TOMLError) {
        skipBlank()
        if peek == UInt8(ascii: "#") { try comment() }
        if atEnd { return }
        guard peek == 0x0A || peek == 0x0D else { throw fail("expected the end of the line after \(after), found \(shown(peek))") }
        try newline()
    }

    /// Blanks, newlines and comments (inside arrays).
    package mutating func skipSpaceAndComments() throws(TOMLError) {
        while true {
            skipBlank()
            if peek == UInt8(ascii: "#") { try comment(); continue }
            if !atEnd && (peek == 0x0A || peek == 0x0D) { try newline(); continue }
            return
        }
    }

    // MARK: keys and tables

    package mutating func key() throws(TOMLError) -> [String] {
        var parts: [String] = []
        while true {
            skipBlank()
            parts.append(try simpleKey())
            skipBlank()
            guard peek == UInt8(ascii: ".") else { return parts }
            i += 1
        }
    }

    package mutating func simpleKey() throws(TOMLError) -> String {
        switch peek {
        case UInt8(ascii: "\""):
            if peek(1) == UInt8(ascii: "\"") && peek(2) == UInt8(ascii: "\"") { throw fail("a multi-line string cannot be a key") }
            return try basicString()
        case UInt8(ascii: "'"):
            if peek(1) == UInt8(ascii: "'") && peek(2) == UInt8(ascii: "'") { throw fail("a multi-line string cannot be a key") }
            return try literalString()
        default:
            let start = i
            while i < s.count, isBareKey(s[i]) { i += 1 }
            guard i > start else { throw fail(atEnd ? "expected a key, found the end of the file" : "expected a key, found \(shown(peek))") }
            return String(decoding: s[start..<i], as: UTF8.self)
        }
    }

    package mutating func header() throws(TOMLError) {
        let headerLine = line
        i += 1
        let array = peek == UInt8(ascii: "[")
        if array { i += 1 }
        let path = try key()
        guard peek == UInt8(ascii: "]") else { throw fail("expected ']' to end the table header, found \(shown(peek))") }
        i += 1
        if array {
            guard peek == UInt8(ascii: "]") else { throw fail("expected ']]' to end the array-of-tables header") }
            i += 1
        }
        let name = path.joined(separator: ".")
        var t = root
        for part in path.dropLast() {
            t = try descend(t, part, name: name, line: headerLine)
        }
        let last = path[path.count - 1]
        if array {
            let element = TOMLTable(origin: .arrayElement, line: headerLine)
            if let existing = t[last] {
                guard case .array(let a) = existing.value, a.ofTables else {
                    throw fail("[[\(name)]]: '\(last)' is already \(existing.value.aTypeName) (line \(existing.line))", line: headerLine)
                }
                a.items.append(TOMLNode(value: .table(element), line: headerLine))
            } else {
                let a = TOMLArray(ofTables: true)
                a.items.append(TOMLNode(value: .table(element), line: headerLine))
                t.set(last, TOMLNode(value: .array(a), line: headerLine))
            }
            current = element
            return
        }
        if let existing = t[last] {
            guard case .table(let table) = existing.value, table.origin == .implicit else {
                throw fail("[\(name)] is defined twice (first on line \(existing.line))", line: headerLine)
            }
            table.origin = .header
            current = table
        } else {
            let table = TOMLTable(origin: .header, line: headerLine)
            t.set(last, TOMLNode(value: .table(table), line: headerLine))
            current = table
        }
    }

    /// The table `part` under `t` on the way to a header's table: made (implicitly) if missing;
    /// the last element of an array of tables.
    package mutating func descend(_ t: TOMLTable, _ part: String, name: String, line: Int) throws(TOMLError) -> TOMLTable {
        guard let node = t[part] else {
            let made = TOMLTable(origin: .implicit, line: line)
            t.set(part, TOMLNode(value: .table(made), line: line))
            return made
        }
        switch node.value {
        case .table(let sub) where sub.origin != .inline:
            return sub
        case .array(let a) where a.ofTables:
            if case .table(let last)? = a.items.last?.value { return last }
            throw fail("'\(part)' in [\(name)] is not a table", line: line)
        default:
            throw fail("'\(part)' in [\(name)] is already \(node.value.aTypeName) (line \(node.line)) and cannot hold a table", line: line)
        }
    }

    package mutating func keyValue(into table: TOMLTable) throws(TOMLError) {
        let kvLine = line
        let path = try key()
        guard peek == UInt8(ascii: "=") else {
            throw fail(atEnd || peek == 0x0A || peek == 0x0D ? "expected '=' after the key '\(path.joined(separator: "."))'"
                                                                 : "expected '=' after the key '\(path.joined(separator: "."))', found \(shown(peek))")
        }
        i += 1
        skipBlank()
        let value = try self.value()
        var t = table
        for part in path.dropLast() {
            if let node = t[part] {
                guard case .table(let sub) = node.value, sub.origin == .dotted || sub.origin == .implicit else {
                    throw fail("'\(path.joined(separator: "."))': '\(part)' is already defined (line \(node.line)) and cannot be extended here", line: kvLine)
                }
                t = sub
            } else {
                let made = TOMLTable(origin: .dotted, line: kvLine)
                t.set(part, TOMLNode(value: .table(made), line: kvLine))
                t = made
            }
        }
        let last = path[path.count - 1]
        if let existing = t[last] {
            throw fail("'\(path.joined(separator: "."))' is defined twice (first on line \(existing.line))", line: kvLine)
        }
        t.set(last, TOMLNode(value: value, line: kvLine))
    }

    // MARK: values

    package mutating func value() throws(TOMLError) -> TOMLValue {
        switch peek {
        case UInt8(ascii: "\""):
            if peek(1) == UInt8(ascii: "\"") && peek(2) == UInt8(ascii: "\"") { return .string(try multilineBasicString()) }
            return .string(try basicString())
        case UInt8(ascii: "'"):
            if peek(1) == UInt8(ascii: "'") && peek(2) == UInt8(ascii: "'") { return .string(try multilineLiteralString()) }
            return .string(try literalString())
        case UInt8(ascii: "["):
            return .array(try array())
        case UInt8(ascii: "{"):
            return .table(try inlineTable())
        case UInt8(ascii: "t"):
            try word("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try word("false")
            return .bool(false)
        default:
            return try numberOrDate()
        }
    }

    package mutating func word(_ w: String) throws(TOMLError) {
        let bytes = Array(w.utf8)
        guard i + bytes.count <= s.count, Array(s[i..<i + bytes.count]) == bytes, !isBareKey(peek(bytes.count)) else {
            throw fail("expected a value (a string, number, boolean, array or table), found \(token())")
        }
        i += bytes.count
    }

    package mutating func enter() throws(TOMLError) {
        depth += 1
        if depth > TOMLParser.maxDepth { throw fail("arrays and tables nested more than \(TOMLParser.maxDepth) deep") }
    }

    package mutating func array() throws(TOMLError) -> TOMLArray {
        try enter()
        defer { depth -= 1 }
        i += 1
        let a = TOMLArray(ofTables: false)
        while true {
            try skipSpaceAndComments()
            if peek == UInt8(ascii: "]") {
                i += 1
                return a
            }
            guard !atEnd else { throw fail("an array is not closed with ']'") }
            let itemLine = line
            a.items.append(TOMLNode(value: try value(), line: itemLine))
            try skipSpaceAndComments()
            if peek == UInt8(ascii: ",") {
                i += 1
            } else if peek != UInt8(ascii: "]") {
                throw fail(atEnd ? "an array is not closed with ']'" : "expected ',' or ']' in an array, found \(shown(peek))")
            }
        }
    }

    package mutating func inlineTable() throws(TOMLError) -> TOMLTable {
        try enter()
        defer { depth -= 1 }
        let t = TOMLTable(origin: .inline, line: line)
        i += 1
        skipBlank()
        if peek == UInt8(ascii: "}") {
            i += 1
            return t
        }
        while true {
            try keyValue(into: t)
            skipBlank()
            if peek == UInt8(ascii: ",") {
                i += 1
                skipBlank()
                if peek == UInt8(ascii: "}") { throw fail("a trailing ',' in an inline table") }
                continue
            }
            guard peek == UInt8(ascii: "}") else {
                throw fail(atEnd || peek == 0x0A || peek == 0x0D ? "an inline table must end with '}' on the same line"
                                                                  : "expected ',' or '}' in an inline table, found \(shown(peek))")
            }
            i += 1
            return t
        }
    }

    // MARK: strings

    package mutating func basicString() throws(TOMLError) -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard !atEnd, peek != 0x0A, peek != 0x0D else { throw fail("a string is not closed with '\"' on its line") }
            let c = s[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                return String(decoding: out, as: UTF8.self)
            }
            if c == UInt8(ascii: "\\") {
                try escape(into: &out)
                continue
            }
            if isControl(c) && c != 0x09 { throw fail("a control character (0x\(hex(c))) in a string: write it as an escape") }
            out.append(c)
            i += 1
        }
    }

    package mutating func multilineBasicString() throws(TOMLError) -> String {
        i += 3
        if peek == 0x0A { i += 1; line += 1 } else if peek == 0x0D && peek(1) == 0x0A { i += 2; line += 1 }
        var out: [UInt8] = []
        while true {
            guard !atEnd else { throw fail("a multi-line string is not closed with '\"\"\"'") }
            let c = s[i]
            if c == UInt8(ascii: "\"") && peek(1) == UInt8(ascii: "\"") && peek(2) == UInt8(ascii: "\"") {
                // Up to two quotes may end the content right before the closing three.
                var n = 3
                while n < 5 && peek(n) == UInt8(ascii: "\"") { n += 1 }
                out.append(contentsOf: repeatElement(UInt8(ascii: "\""), count: n - 3))
                i += n
                return String(decoding: out, as: UTF8.self)
            }
            if c == UInt8(ascii: "\\") {
                // A backslash at the end of a line trims the newline and the blanks that follow.
                var j = i + 1
                while j < s.count, s[j] == 0x20 || s[j] == 0x09 { j += 1 }
                if j < s.count, s[j] == 0x0A || (s[j] == 0x0D && j + 1 < s.count && s[j + 1] == 0x0A) {
                    i = j
                    while !atEnd, peek == 0x20 || peek == 0x09 || peek == 0x0A || peek == 0x0D {
                        if peek == 0x0D && peek(1) != 0x0A { throw fail("a carriage return not followed by a line feed") }
                        if peek == 0x0A { line += 1 }
                        i += 1
                    }
                    continue
                }
                try escape(into: &out)
                continue
            }
            if c == 0x0A {
                line += 1
            } else if c == 0x0D {
                guard peek(1) == 0x0A else { throw fail("a carriage return not followed by a line feed") }
            } else if isControl(c) && c != 0x09 {
                throw fail("a control character (0x\(hex(c))) in a string: write it as an escape")
            }
            out.append(c)
            i += 1
        }
    }

    package mutating func escape(into out: inout [UInt8]) throws(TOMLError) {
        i += 1
        let c = peek
        i += 1
        if let e = simpleEscape(c) {
            out.append(e)
            return
        }
        switch c {
        case UInt8(ascii: "u"), UInt8(ascii: "U"):
            let n = c == UInt8(ascii: "u") ? 4 : 8
            guard i + n <= s.count, let v = UInt32(String(decoding: s[i..<i + n], as: UTF8.self), radix: 16),
                  let scalar = Unicode.Scalar(v) else {
                throw fail("\\\(Character(Unicode.Scalar(c))) needs \(n) hex digits naming a Unicode scalar")
            }
            i += n
            out.append(contentsOf: Array(String(Character(scalar)).utf8))
        default:
            throw fail("an unknown escape \\\(atEnd ? "" : shown(c)) in a string")
        }
    }

    package mutating func literalString() throws(TOMLError) -> String {
        i += 1
        let start = i
        while true {
            guard !atEnd, peek != 0x0A, peek != 0x0D else { throw fail("a string is not closed with \"'\" on its line") }
            if peek == UInt8(ascii: "'") { break }
            if isControl(peek) && peek != 0x09 { throw fail("a control character (0x\(hex(peek))) in a string") }
            i += 1
        }
        let text = String(decoding: s[start..<i], as: UTF8.self)
        i += 1
        return text
    }

    package mutating func multilineLiteralString() throws(TOMLError) -> String {
        i += 3
        if peek == 0x0A { i += 1; line += 1 } else if peek == 0x0D && peek(1) == 0x0A { i += 2; line += 1 }
        let start = i
        while true {
            guard !atEnd else { throw fail("a multi-line string is not closed with \"'''\"") }
            let c = s[i]
            if c == UInt8(ascii: "'") && peek(1) == UInt8(ascii: "'") && peek(2) == UInt8(ascii: "'") {
                var n = 3
                while n < 5 && peek(n) == UInt8(ascii: "'") { n += 1 }
                let text = String(decoding: s[start..<i + n - 3], as: UTF8.self)
                i += n
                return text
            }
            if c == 0x0A {
                line += 1
            } else if c == 0x0D {
                guard peek(1) == 0x0A else { throw fail("a carriage return not followed by a line feed") }
            } else if isControl(c) && c != 0x09 {
                throw fail("a control character (0x\(hex(c))) in a string")
            }
            i += 1
        }
    }

    // MARK: numbers and dates

    /// The characters a number, date or time may hold, up to the next delimiter.
    package mutating func numberOrDate() throws(TOMLError) -> TOMLValue {
        let start = i
        while i < s.count {
            let c = s[i]
            if isBareKey(c) || c == UInt8(ascii: "+") || c == UInt8(ascii: ".") || c == UInt8(ascii: ":") {
                i += 1
            } else if c == 0x20 && isDate(s[start..<i]) && i + 1 < s.count && isDigit(s[i + 1]) {
                i += 1  // "1979-05-27 07:32:00": a space may separate date and time
            } else {
                break
            }
        }
        guard i > start else { throw fail(atEnd ? "expected a value, found the end of the file" : "expected a value, found \(shown(peek))") }
        let text = String(decoding: s[start..<i], as: UTF8.self)
        if let v = TOMLParser.integer(text) { return .integer(v) }
        if let d = TOMLParser.float(text) { return .float(d) }
        if isDate(s[start..<i]) || TOMLParser.isTime(text) { return .datetime(text) }
        throw fail("\(text.count > 40 ? String(text.prefix(40)) + "..." : text) is not a value TOML knows (strings are quoted)")
    }

    package func isDate(_ b: ArraySlice<UInt8>) -> Bool {
        b.count >= 10 && b.prefix(4).allSatisfy(isDigit) && b[b.startIndex + 4] == UInt8(ascii: "-")
            && isDigit(b[b.startIndex + 5]) && isDigit(b[b.startIndex + 6]) && b[b.startIndex + 7] == UInt8(ascii: "-")
            && isDigit(b[b.startIndex + 8]) && isDigit(b[b.startIndex + 9])
    }

    package static func isTime(_ t: String) -> Bool {
        let b = Array(t.utf8)
        return b.count >= 8 && isDigit(b[0]) && isDigit(b[1]) && b[2] == UInt8(ascii: ":") && isDigit(b[3]) && isDigit(b[4])
            && b[5] == UInt8(ascii: ":") && isDigit(b[6]) && isDigit(b[7])
    }

    /// Decimal (with `_` between digits, no leading zeros), or 0x / 0o / 0b without a sign.
    package static func integer(_ t: String) -> Int64? {
        var b = Array(t.utf8)
        for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where t.hasPrefix(prefix) {
            let body = Array(b.dropFirst(2))
            guard digitsWithUnderscores(body, radix: radix) else { return nil }
            return Int64(String(decoding: body.filter { $0 != UInt8(ascii: "_") }, as: UTF8.self), radix: radix)
        }
        var negative = false
        if b.first == UInt8(ascii: "+") || b.first == UInt8(ascii: "-") {
            negative = b.first == UInt8(ascii: "-")
            b.removeFirst()
        }
        guard digitsWithUnderscores(b, radix: 10), b.first != UInt8(ascii: "0") || b.count == 1 else { return nil }
        return Int64((negative ? "-" : "") + String(decoding: b.filter { $0 != UInt8(ascii: "_") }, as: UTF8.self))
    }

    package static func float(_ t: String) -> Double? {
        var b = Array(t.utf8)
        var sign = 1.0
        if b.first == UInt8(ascii: "+") || b.first == UInt8(ascii: "-") {
            if b.first == UInt8(ascii: "-") { sign = -1 }
            b.removeFirst()
        }
        let body = String(decoding: b, as: UTF8.self)
        if body == "inf" { return sign * .infinity }
        if body == "nan" { return .nan }
        // int part, then .digits and/or e[+-]digits
        var parts = body.split(separator: "e", maxSplits: 1, omittingEmptySubsequences: false)
        if parts.count == 1 { parts = body.split(separator: "E", maxSplits: 1, omittingEmptySubsequences: false) }
        let mantissa = parts[0].split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let whole = Array(mantissa[0].utf8)
        guard digitsWithUnderscores(whole, radix: 10), whole.first != UInt8(ascii: "0") || whole.count == 1 else { return nil }
        guard mantissa.count == 2 || parts.count == 2 else { return nil }
        if mantissa.count == 2 && !digitsWithUnderscores(Array(mantissa[1].utf8), radix: 10) { return nil }
        if parts.count == 2 {
            var e = Array(parts[1].utf8)
            if e.first == UInt8(ascii: "+") || e.first == UInt8(ascii: "-") { e.removeFirst() }
            guard digitsWithUnderscores(e, radix: 10) else { return nil }
        }
        guard let d = Double(String(decoding: b.filter { $0 != UInt8(ascii: "_") }, as: UTF8.self)) else { return nil }
        return sign * d
    }

    /// One or more digits of `radix`, `_` only between two digits.
    package static func digitsWithUnderscores(_ b: [UInt8], radix: Int) -> Bool {
        guard let first = b.first, let last = b.last, first != UInt8(ascii: "_"), last != UInt8(ascii: "_") else { return false }
        var previousUnderscore = false
        for c in b {
            if c == UInt8(ascii: "_") {
                if previousUnderscore { return false }
                previousUnderscore = true
                continue
            }
            previousUnderscore = false
            guard let v = hexValue(c), v < radix else { return false }
        }
        return true
    }

    // MARK: characters

    package mutating func token() -> String {
        let start = i
        var j = i
        while j < s.count, j - start < 20, s[j] != 0x0A, s[j] != 0x0D, s[j] != 0x20, s[j] != UInt8(ascii: ",") { j += 1 }
        return j > start ? "'\(String(decoding: s[start..<j], as: UTF8.self))'" : shown(peek)
    }

    package func shown(_ c: UInt8) -> String {
        if atEnd { return "the end of the file" }
        if c == 0x0A || c == 0x0D { return "the end of the line" }
        if c < 0x20 || c == 0x7F { return "a control character (0x\(hex(c)))" }
        if c >= 0x80 { return "a non-ASCII character" }
        return "'\(Character(Unicode.Scalar(c)))'"
    }
}

private func isBareKey(_ c: UInt8) -> Bool {
    (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
}
/// TOML forbids U+0000-U+001F (other than tab, and the newlines where they belong) and U+007F.
private func isControl(_ c: UInt8) -> Bool { (c < 0x20 && c != 0x09) || c == 0x7F }
private func hex(_ c: UInt8) -> String { String(c, radix: 16, uppercase: true) }
