// TOMLKit's parsed values carry no source positions, so errors find their line here: a scan of the
// text for table headers and `key =` lines, enough to point at the line a problem is on.
struct SourceLocator {
    /// Keyed by table id ("daemon", "events.route", "listener#0") then key; "" is the header.
    private var lines: [String: [String: Int]] = [:]

    init(text: String) {
        var table = ""
        var listenerCount = 0
        var lineNo = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNo += 1
            let line = raw.drop { $0 == " " || $0 == "\t" }
            if line.hasPrefix("[[") {
                let name = line.dropFirst(2).prefix { $0 != "]" }.trimmingSpaces
                if name == "listener" {
                    table = "listener#\(listenerCount)"
                    listenerCount += 1
                } else {
                    table = String(name)
                }
                record(table, "", lineNo)
            } else if line.hasPrefix("[") {
                table = String(line.dropFirst().prefix { $0 != "]" }.trimmingSpaces)
                record(table, "", lineNo)
            } else if let key = SourceLocator.key(of: line) {
                record(table, key, lineNo)
            }
        }
    }

    private mutating func record(_ table: String, _ key: String, _ line: Int) {
        if lines[table]?[key] == nil { lines[table, default: [:]][key] = line }
    }

    /// The line of `key` in `table`, else of the table's header, else 1.
    func line(_ table: String, _ key: String? = nil) -> Int {
        if let key, let l = lines[table]?[key] { return l }
        if let l = lines[table]?[""] { return l }
        return 1
    }

    private static func key(of line: Substring) -> String? {
        guard let first = line.first, first != "#" else { return nil }
        if first == "\"" || first == "'" {
            let body = line.dropFirst()
            guard let end = body.firstIndex(of: first) else { return nil }
            let rest = body[body.index(after: end)...].drop { $0 == " " || $0 == "\t" }
            return rest.hasPrefix("=") ? String(body[..<end]) : nil
        }
        let name = line.prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == "." }
        guard !name.isEmpty else { return nil }
        let rest = line.dropFirst(name.count).drop { $0 == " " || $0 == "\t" }
        return rest.hasPrefix("=") ? String(name) : nil
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}
