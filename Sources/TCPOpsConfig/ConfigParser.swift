// TOML text -> Configuration. Walks the parsed document with our own type checks so that every
// problem (unknown key, wrong type, bad value) is reported with its line, all of them in one pass.
import Glibc
import TCPOpsPosix
import TCPOpsProtocol

public enum ConfigLoader {
    /// Reads and validates the file at `path`.
    public static func load(path: String) throws(ConfigError) -> Configuration {
        let bytes: [UInt8]
        switch readFile(path) {
        case .success(let b): bytes = b
        case .failure(let e):
            throw ConfigError(path: path, problems: [.init(line: 0, message: "cannot read the file: \(errnoName(e.errno)) (\(String(cString: strerror(e.errno))))")])
        }
        return try parse(bytes: bytes, path: path)
    }

    /// Checks the raw bytes first: a NUL would end the text for the TOML parser (hiding everything
    /// after it) and invalid UTF-8 is not TOML. Each bad line is a problem; the rest of the file is
    /// still parsed (with U+FFFD in their place) so that every problem is reported at once.
    public static func parse(bytes: [UInt8], path: String) throws(ConfigError) -> Configuration {
        var problems: [ConfigError.Problem] = []
        var text = ""
        text.reserveCapacity(bytes.count)
        var lineNo = 0
        for line in bytes.split(separator: 10, omittingEmptySubsequences: false) {
            lineNo += 1
            if line.contains(0) {
                problems.append(.init(line: lineNo, message: "a NUL byte: the file must be UTF-8 text without NUL"))
            } else if String(validating: line, as: UTF8.self) == nil {
                problems.append(.init(line: lineNo, message: "not valid UTF-8: the file must be UTF-8 text"))
            }
            if lineNo > 1 { text += "\n" }
            text += String(decoding: line.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        }
        do {
            let config = try parse(text, path: path)
            if problems.isEmpty { return config }
        } catch {
            problems += error.problems
        }
        throw ConfigError(path: path, problems: problems.sorted { $0.line < $1.line })
    }

    public static func parse(_ text: String, path: String) throws(ConfigError) -> Configuration {
        let root: TOMLTable
        do {
            root = try TOML.parse(text)
        } catch {
            throw ConfigError(path: path, problems: [.init(line: error.line, message: "TOML syntax error: \(error.message)")])
        }
        var walker = Walker()
        let config = walker.configuration(root, path: path)
        if !walker.problems.isEmpty {
            throw ConfigError(path: path, problems: walker.problems.sorted { $0.line < $1.line })
        }
        return config
    }

    package static func readFile(_ path: String) -> Result<[UInt8], SystemError> {
        do throws(SystemError) {
            let fd = try sys("open") { open(path, O_RDONLY | O_CLOEXEC) }
            defer { closeFD(fd) }
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = try sys("read") { buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
                if n == 0 { return .success(bytes) }
                bytes.append(contentsOf: buf[0..<n])
                if bytes.count > 16 << 20 { return .failure(SystemError("read: larger than 16 MiB", EFBIG)) }
            }
        } catch {
            return .failure(error)
        }
    }
}

private struct Walker {
    package var problems: [ConfigError.Problem] = []

    package mutating func fail(_ line: Int, _ message: String) {
        problems.append(.init(line: line, message: message))
    }

    /// "[daemon] key 'x'" style label for messages.
    package func label(_ table: String, _ key: String) -> String {
        if table.hasPrefix("listener#") { return "[[listener]] #\(Int(table.dropFirst(9)).map { $0 + 1 } ?? 0) key '\(key)'" }
        return table.isEmpty ? "key '\(key)'" : "[\(table)] key '\(key)'"
    }

    /// Every key of `t` must be one of `allowed`; `table` names it in messages.
    package mutating func checkKeys(_ t: TOMLTable, _ table: String, allowed: [String]) {
        for key in t.keys where !allowed.contains(key) {
            let where_: String
            if table.isEmpty {
                where_ = "at top level"
            } else if table.hasPrefix("listener#") {
                let parts = table.dropFirst(9).split(separator: ".", maxSplits: 1)
                let n = (Int(parts[0]) ?? 0) + 1
                where_ = parts.count > 1 ? "in '\(parts[1])' of [[listener]] #\(n)" : "in [[listener]] #\(n)"
            } else {
                where_ = "in [\(table)]"
            }
            fail(t[key]?.line ?? t.line, "unknown key '\(key)' \(where_) (known keys: \(allowed.joined(separator: ", ")))")
        }
    }

    package mutating func string(_ t: TOMLTable, _ table: String, _ key: String) -> String? {
        guard let v = t[key] else { return nil }
        guard case .string(let s) = v.value else {
            fail(v.line, "\(label(table, key)): expected a string, got \(v.value.typeName)")
            return nil
        }
        return s
    }

    package mutating func int(_ t: TOMLTable, _ table: String, _ key: String, range: ClosedRange<Int>) -> Int? {
        guard let v = t[key] else { return nil }
        guard case .integer(let i64) = v.value else {
            fail(v.line, "\(label(table, key)): expected an integer, got \(v.value.typeName)")
            return nil
        }
        guard let i = Int(exactly: i64), range.contains(i) else {
            fail(v.line, "\(label(table, key)): \(i64) is out of range (expected \(range.lowerBound)...\(range.upperBound))")
            return nil
        }
        return i
    }

    package mutating func bool(_ t: TOMLTable, _ table: String, _ key: String) -> Bool? {
        guard let v = t[key] else { return nil }
        guard case .bool(let b) = v.value else {
            fail(v.line, "\(label(table, key)): expected true or false, got \(v.value.typeName)")
            return nil
        }
        return b
    }

    /// The longest duration any key takes (365 days), and the shortest besides 0 (1 ms: timers
    /// and TCP_USER_TIMEOUT work in milliseconds).
    package static let maxDuration = Durations.max
    package static let minDuration = Durations.min

    /// Seconds, as an integer or a decimal; 0 (where allowed) or from 1 ms to 365 days.
    package mutating func duration(_ t: TOMLTable, _ table: String, _ key: String, allowZero: Bool = true) -> Double? {
        guard let v = t[key] else { return nil }
        let seconds: Double
        switch v.value {
        case .integer(let i): seconds = Double(i)
        case .float(let d): seconds = d
        default:
            fail(v.line, "\(label(table, key)): expected a duration in seconds (a number), got \(v.value.typeName)")
            return nil
        }
        let range = allowZero ? "0 (none) or from 0.001 (1 ms) to 31536000 (365 days)" : "from 0.001 (1 ms) to 31536000 (365 days)"
        guard seconds.isFinite, seconds >= 0, seconds <= Walker.maxDuration else {
            fail(v.line, "\(label(table, key)): \(v.value.text) is not a duration (expected seconds: \(range))")
            return nil
        }
        if seconds == 0 && !allowZero {
            fail(v.line, "\(label(table, key)): must be greater than 0 (expected seconds: \(range))")
            return nil
        }
        if seconds > 0 && seconds < Walker.minDuration {
            fail(v.line, "\(label(table, key)): \(v.value.text) is below 1 ms (expected seconds: \(range))")
            return nil
        }
        return seconds
    }

    package mutating func argv(_ t: TOMLTable, _ table: String, _ key: String) -> [String]? {
        guard let v = t[key] else { return nil }
        guard case .array(let a) = v.value else {
            fail(v.line, "\(label(table, key)): expected an array of strings (program and arguments), got \(v.value.typeName)")
            return nil
        }
        var out: [String] = []
        for item in a.items {
            guard case .string(let s) = item.value else {
                fail(item.line, "\(label(table, key)): expected an array of strings, found \(item.value.aTypeName)")
                return nil
            }
            out.append(s)
        }
        guard let program = out.first, !program.isEmpty else {
            fail(v.line, "\(label(table, key)): the command is empty")
            return nil
        }
        guard program.hasPrefix("/") else {
            fail(v.line, "\(label(table, key)): \"\(program)\" must be an absolute path (hooks run without a shell or PATH search)")
            return nil
        }
        guard access(program, X_OK) == 0 else {
            fail(v.line, "\(label(table, key)): \"\(program)\" is not an executable file")
            return nil
        }
        return out
    }

    package mutating func address(_ t: TOMLTable, _ table: String, _ key: String) -> SocketAddress? {
        guard let s = string(t, table, key), let line = t[key]?.line else { return nil }
        do {
            return try SocketAddress.parse(s)
        } catch {
            fail(line, "\(label(table, key)): \"\(s)\": \(error)")
            return nil
        }
    }

    /// `upstream`: "host:port" (an IPv4 address, "[IPv6]", or a DNS name), or a list of them.
    package mutating func upstreams(_ t: TOMLTable, _ table: String, _ key: String) -> [Upstream]? {
        guard let v = t[key] else { return nil }
        let items: [TOMLNode]
        switch v.value {
        case .string: items = [v]
        case .array(let a):
            items = a.items
            if items.isEmpty {
                fail(v.line, "\(label(table, key)): the list is empty (give at least one \"host:port\")")
                return nil
            }
        default:
            fail(v.line, "\(label(table, key)): expected \"host:port\" or a list of them, got \(v.value.typeName)")
            return nil
        }
        var out: [Upstream] = []
        for item in items {
            guard case .string(let text) = item.value else {
                fail(item.line, "\(label(table, key)): expected \"host:port\" strings, found \(item.value.aTypeName)")
                return nil
            }
            guard let u = upstream(text, line: item.line, what: label(table, key)) else { return nil }
            out.append(u)
        }
        return out
    }

    package mutating func upstream(_ text: String, line: Int, what: String) -> Upstream? {
        do {
            return Upstream(address: try SocketAddress.parse(text), line: line)
        } catch {
            // Not an address: a host name and a port?
            if case .badHost = error, let colon = text.lastIndex(of: ":"), !text.hasPrefix("[") {
                let name = String(text[..<colon])
                let portText = text[text.index(after: colon)...]
                if Walker.isHostName(name) {
                    guard let p = Int(portText), (1...65535).contains(p) else {
                        fail(line, "\(what): \"\(text)\": port \"\(portText)\" is not a number from 1 to 65535")
                        return nil
                    }
                    return Upstream(name: name, port: UInt16(p), line: line)
                }
            }
            fail(line, "\(what): \"\(text)\": \(error)")
            return nil
        }
    }

    /// Why a Unix socket could never be made at `path` by this user, or nil: its folder is made
    /// when missing, so the nearest part of the path that exists must be a folder this user may
    /// write in (`--check-config` runs as the daemon's user under the unit: ExecStartPre=).
    package static func socketPlaceProblem(_ path: String) -> String? {
        var dir = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        var missing = false
        while !dir.isEmpty {
            var st = stat()
            let found: Bool
            do throws(SystemError) {
                try sys("stat") { stat(dir, &st) }
                found = true
            } catch {
                if error.errno == ENOTDIR { return "a part of \(dir) is not a folder" }
                found = false
            }
            if found {
                guard (st.st_mode & S_IFMT) == S_IFDIR else { return "\(dir) is not a folder" }
                guard access(dir, W_OK | X_OK) == 0 else {
                    return missing ? "its folder would have to be made in \(dir), where this user may not write"
                                   : "this user may not make a socket in \(dir)"
                }
                return nil
            }
            missing = true
            dir = String(dir[..<(dir.lastIndex(of: "/") ?? dir.startIndex)])
        }
        return nil
    }

    /// Two listening addresses that cannot both be bound: the same port in the same family, the
    /// same address or a wildcard (0.0.0.0 or ::, which takes the port on every address).
    package static func overlap(_ a: SocketAddress, _ b: SocketAddress) -> Bool {
        a.family == b.family && a.port == b.port && (a == b || a.isWildcard || b.isWildcard)
    }

    /// A DNS name: labels of letters, digits and '-', separated by dots, not all digits.
    package static func isHostName(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 253, !s.allSatisfy({ $0.isNumber || $0 == "." }) else { return false }
        return s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
        }
    }

    package mutating func keepaliveSetting(_ t: TOMLTable, _ table: String, _ key: String) -> KeepaliveSettings? {
        guard let v = t[key] else { return nil }
        guard case .table(let k) = v.value else {
            fail(v.line, "\(label(table, key)): expected a table { idle = S, count = N, interval = S }, got \(v.value.typeName)")
            return nil
        }
        let sub = "\(table).\(key)"
        checkKeys(k, sub, allowed: ["idle", "count", "interval"])
        let what = label(table, key)
        var missing: [String] = []
        func need(_ name: String, _ value: Int?) -> Int32 {
            if value == nil && k[name] == nil { missing.append(name) }
            return Int32(value ?? 0)
        }
        let idle = need("idle", intIn(k, what, "idle", range: 1...32767))
        let count = need("count", intIn(k, what, "count", range: 1...127))
        let interval = need("interval", intIn(k, what, "interval", range: 1...32767))
        if !missing.isEmpty {
            fail(v.line, "\(what): missing \(missing.joined(separator: ", "))")
            return nil
        }
        guard idle > 0, count > 0, interval > 0 else { return nil }
        return KeepaliveSettings(idle: idle, count: count, interval: interval)
    }

    private mutating func intIn(_ t: TOMLTable, _ what: String, _ key: String, range: ClosedRange<Int>) -> Int? {
        guard let v = t[key] else { return nil }
        guard case .integer(let i64) = v.value else {
            fail(v.line, "\(what).\(key): expected an integer, got \(v.value.typeName)")
            return nil
        }
        guard let i = Int(exactly: i64), range.contains(i) else {
            fail(v.line, "\(what).\(key): \(i64) is out of range (expected \(range.lowerBound)...\(range.upperBound))")
            return nil
        }
        return i
    }

    package mutating func configuration(_ root: TOMLTable, path: String) -> Configuration {
        var config = Configuration(path: path)
        checkKeys(root, "", allowed: ["daemon", "events", "listener", "metrics"])

        if let v = root["daemon"] {
            if case .table(let t) = v.value {
                config.daemon = daemon(t)
            } else {
                fail(v.line, "'daemon' must be a table ([daemon])")
            }
        }
        if let v = root["events"] {
            if case .table(let t) = v.value {
                config.events = events(t)
            } else {
                fail(v.line, "'events' must be a table ([events])")
            }
        }
        if let v = root["metrics"] {
            if case .table(let t) = v.value {
                checkKeys(t, "metrics", allowed: ["listen"])
                config.metrics.listen = address(t, "metrics", "listen")
            } else {
                fail(v.line, "'metrics' must be a table ([metrics])")
            }
        }
        guard let lv = root["listener"] else {
            fail(1, "no [[listener]] is configured (at least one is needed)")
            return config
        }
        guard case .array(let list) = lv.value else {
            fail(lv.line, "'listener' must be an array of tables ([[listener]])")
            return config
        }
        var names: [String: Int] = [:]
        var addresses: [SocketAddress: String] = [:]
        for (i, item) in list.items.enumerated() {
            let id = "listener#\(i)"
            guard case .table(let t) = item.value else {
                fail(item.line, "[[listener]] #\(i + 1) must be a table")
                continue
            }
            guard let l = listener(t, id) else { continue }
            if let first = names[l.name] {
                fail(t["name"]?.line ?? t.line, "\(label(id, "name")): duplicate listener name \"\(l.name)\" (first used by [[listener]] #\(first + 1))")
                continue
            }
            if let (at, other) = addresses.first(where: { Walker.overlap($0.key, l.listen) }) {
                let how = at == l.listen ? "is already used by" : "overlaps \(at) of"
                fail(t["listen"]?.line ?? t.line, "\(label(id, "listen")): \(l.listen) \(how) listener \"\(other)\"\(at == l.listen ? "" : " (a wildcard address takes the port on every address of its family)")")
                continue
            }
            names[l.name] = i
            addresses[l.listen] = l.name
            config.listeners.append(l)
        }
        if let m = config.metrics.listen, let (at, other) = addresses.first(where: { Walker.overlap($0.key, m) }),
           case .table(let t)? = root["metrics"]?.value {
            fail(t["listen"]?.line ?? t.line, "[metrics] key 'listen': \(m) \(at == m ? "is already used by" : "overlaps \(at) of") listener \"\(other)\"")
        }
        if list.items.isEmpty { fail(lv.line, "no [[listener]] is configured (at least one is needed)") }
        return config
    }

    package mutating func daemon(_ t: TOMLTable) -> DaemonSettings {
        let tb = "daemon"
        var d = DaemonSettings()
        checkKeys(t, tb, allowed: ["control_socket", "control_mode", "control_group", "max_connections", "log_level", "shutdown_timeout", "workers",
                                 "crash_safe"])
        if let v = t["workers"] {
            switch v.value {
            case .string("auto"): d.workers = nil
            case .integer(let n) where (1...Int64(DaemonSettings.maxWorkers)).contains(n): d.workers = Int(n)
            case .integer(let n): fail(v.line, "\(label(tb, "workers")): \(n) is out of range (expected \"auto\" or 1...\(DaemonSettings.maxWorkers))")
            default: fail(v.line, "\(label(tb, "workers")): expected \"auto\" or a number of event loops (1...\(DaemonSettings.maxWorkers)), got \(v.value)")
            }
        }
        if let s = string(t, tb, "control_socket"), let line = t["control_socket"]?.line {
            if s.hasPrefix("/") && s.utf8.count < 108 {
                if let why = Walker.socketPlaceProblem(s) {
                    fail(line, "\(label(tb, "control_socket")): \"\(s)\": \(why)")
                } else {
                    d.controlSocket = s
                }
            } else {
                fail(line, "\(label(tb, "control_socket")): \"\(s)\" must be an absolute path shorter than 108 bytes")
            }
        }
        if let s = string(t, tb, "control_mode"), let line = t["control_mode"]?.line {
            if let m = UInt32(s, radix: 8), m <= 0o777 { d.controlMode = m } else {
                fail(line, "\(label(tb, "control_mode")): \"\(s)\" is not an octal file mode such as \"0660\"")
            }
        }
        if let s = string(t, tb, "control_group"), let line = t["control_group"]?.line {
            if getgrnam(s) != nil { d.controlGroup = s } else {
                fail(line, "\(label(tb, "control_group")): no such group \"\(s)\"")
            }
        }
        if let n = int(t, tb, "max_connections", range: 2...10_000_000) { d.maxConnections = n }
        if let s = string(t, tb, "log_level"), let line = t["log_level"]?.line {
            if let l = LogLevel(name: s) { d.logLevel = l } else {
                fail(line, "\(label(tb, "log_level")): \"\(s)\" is not one of debug, info, notice, warning, error")
            }
        }
        if let s = duration(t, tb, "shutdown_timeout") { d.shutdownTimeout = s }
        if let b = bool(t, tb, "crash_safe") { d.crashSafe = b }
        return d
    }

    package mutating func events(_ t: TOMLTable) -> EventSettings {
        let tb = "events"
        var e = EventSettings()
        checkKeys(t, tb, allowed: ["closed_event", "callback", "hook_timeout", "max_running_hooks", "queue_limit", "route", "opened", "journal"])
        if let b = bool(t, tb, "opened") { e.opened = b }
        if let s = string(t, tb, "journal"), let line = t["journal"]?.line {
            if let j = JournalEvents(rawValue: s) { e.journal = j } else {
                fail(line, "\(label(tb, "journal")): \"\(s)\" is not one of \(JournalEvents.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
            }
        }
        if let n = int(t, tb, "closed_event", range: 0...2) { e.closedEvent = n }
        if let a = argv(t, tb, "callback") { e.callback = a }
        if let s = duration(t, tb, "hook_timeout", allowZero: false) { e.hookTimeout = s }
        if let n = int(t, tb, "max_running_hooks", range: 1...4096) { e.maxRunningHooks = n }
        if let n = int(t, tb, "queue_limit", range: 0...10_000_000) { e.queueLimit = n }
        if let v = t["route"] {
            if case .table(let r) = v.value {
                let rt = "events.route"
                checkKeys(r, rt, allowed: Configuration.eventNames)
                for name in Configuration.eventNames {
                    if let a = argv(r, rt, name) { e.routes[name] = a }
                }
            } else {
                fail(v.line, "\(label(tb, "route")): expected a table ([events.route]), got \(v.value.typeName)")
            }
        }
        return e
    }

    package mutating func listener(_ t: TOMLTable, _ id: String) -> ListenerSettings? {
        checkKeys(t, id, allowed: ["name", "listen", "upstream", "connect_timeout", "lifetime", "keepalive", "user_timeout",
                                   "closed_event", "event_sides", "upstream_keepalive", "upstream_user_timeout", "proxy_protocol",
                                   "accept_proxy", "accept_proxy_from", "proxy_header_timeout", "proxy_header_max_pending",
                                   "max_connections", "connect_attempts", "connect_deadline"])
        let before = problems.count
        let number = (Int(id.dropFirst(9)) ?? 0) + 1
        let name = string(t, id, "name")
        if t["name"] == nil { fail(t.line, "[[listener]] #\(number): missing key 'name'") }
        if let name, name.isEmpty || !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }) {
            fail(t["name"]?.line ?? t.line, "\(label(id, "name")): \"\(name)\" must be non-empty and use only letters, digits, '-', '_' and '.'")
        }
        let listen = address(t, id, "listen")
        if t["listen"] == nil { fail(t.line, "[[listener]] \(name.map { "\"\($0)\"" } ?? "#\(number)"): missing key 'listen'") }
        let upstream = upstreams(t, id, "upstream")
        if t["upstream"] == nil { fail(t.line, "[[listener]] \(name.map { "\"\($0)\"" } ?? "#\(number)"): missing key 'upstream'") }
        let connectTimeout = duration(t, id, "connect_timeout", allowZero: false)
        let lifetime = duration(t, id, "lifetime")
        let keepalive = keepaliveSetting(t, id, "keepalive")
        let userTimeout = duration(t, id, "user_timeout")
        let upstreamUserTimeout = duration(t, id, "upstream_user_timeout")
        let closedEvent = bool(t, id, "closed_event")
        var sides: Set<Side>? = nil
        if let v = t["event_sides"] {
            if case .array(let a) = v.value {
                var s: Set<Side> = []
                for item in a.items {
                    if case .string(let str) = item.value, let side = Side(rawValue: str) { s.insert(side) } else {
                        fail(item.line, "\(label(id, "event_sides")): \(item.value.text) is not \"client\" or \"upstream\"")
                    }
                }
                sides = s
            } else {
                fail(v.line, "\(label(id, "event_sides")): expected an array such as [\"client\", \"upstream\"], got \(v.value.typeName)")
            }
        }
        let upstreamKeepalive = keepaliveSetting(t, id, "upstream_keepalive")
        var proxyProtocol: ProxyProtocol.Version?
        if let s = string(t, id, "proxy_protocol"), let line = t["proxy_protocol"]?.line {
            proxyProtocol = ProxyProtocol.Version(rawValue: s)
            if proxyProtocol == nil { fail(line, "\(label(id, "proxy_protocol")): \"\(s)\" is not \"v1\" or \"v2\"") }
        }
        let acceptProxy = bool(t, id, "accept_proxy")
        let acceptProxyFrom = addressRanges(t, id, "accept_proxy_from")
        let proxyHeaderTimeout = duration(t, id, "proxy_header_timeout", allowZero: false)
        let proxyHeaderMaxPending = int(t, id, "proxy_header_max_pending", range: 1...1_000_000)
        if acceptProxy != true {
            for key in ["accept_proxy_from", "proxy_header_timeout", "proxy_header_max_pending"] {
                if let v = t[key] { fail(v.line, "\(label(id, key)): applies only with accept_proxy = true") }
            }
        }
        let maxConnections = int(t, id, "max_connections", range: 2...10_000_000)
        let connectAttempts = int(t, id, "connect_attempts", range: 1...1000)
        let connectDeadline = duration(t, id, "connect_deadline", allowZero: false)
        guard problems.count == before, let name, let listen, let upstream else { return nil }
        var l = ListenerSettings(name: name, listen: listen, upstreams: upstream)
        if let connectTimeout { l.connectTimeout = connectTimeout }
        if let lifetime { l.lifetime = lifetime }
        l.keepalive = keepalive
        if let userTimeout { l.userTimeout = userTimeout }
        if let upstreamUserTimeout { l.upstreamUserTimeout = upstreamUserTimeout }
        if let closedEvent { l.closedEvent = closedEvent }
        if let sides { l.eventSides = sides }
        l.upstreamKeepalive = upstreamKeepalive
        l.proxyProtocol = proxyProtocol
        if let acceptProxy { l.acceptProxy = acceptProxy }
        l.acceptProxyFrom = acceptProxyFrom
        if let proxyHeaderTimeout { l.proxyHeaderTimeout = proxyHeaderTimeout }
        if let proxyHeaderMaxPending { l.proxyHeaderMaxPending = proxyHeaderMaxPending }
        l.maxConnections = maxConnections
        if let connectAttempts { l.connectAttempts = connectAttempts }
        if let connectDeadline { l.connectDeadline = connectDeadline }
        return l
    }

    /// A list of "address/prefix" blocks (accept_proxy_from).
    package mutating func addressRanges(_ t: TOMLTable, _ table: String, _ key: String) -> [AddressRange]? {
        guard let v = t[key] else { return nil }
        guard case .array(let a) = v.value else {
            fail(v.line, "\(label(table, key)): expected a list of addresses or blocks such as [\"10.0.0.0/8\", \"2001:db8::/32\"], got \(v.value.typeName)")
            return nil
        }
        var out: [AddressRange] = []
        for item in a.items {
            guard case .string(let text) = item.value else {
                fail(item.line, "\(label(table, key)): expected \"address/prefix\" strings, found \(item.value.aTypeName)")
                return nil
            }
            do {
                out.append(try AddressRange.parse(text))
            } catch {
                fail(item.line, "\(label(table, key)): \"\(text)\": \(error)")
                return nil
            }
        }
        if out.isEmpty { fail(v.line, "\(label(table, key)): the list is empty (no source could send a header; remove the key to allow any)") }
        return out
    }
}
