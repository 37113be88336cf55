// One type per tcpopsctl subcommand.
import ArgumentParser
import Glibc
import TCPOpsPosix
import TCPOpsProtocol

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List tracked connections (RPC core.tcp_list).")
    @OptionGroup var common: Common
    @Option(help: "Only this listener's connections.") var listener: String?

    func run() throws {
        var r = ControlRequest(cmd: "list")
        r.listener = listener
        let a = try ask(common, r)
        let rows = a["result"]?.items ?? []
        if common.json {
            printLine(JSON.array(rows).text)
            return
        }
        let head = ["CONID", "PEER", "SIDE", "LISTENER", "STATE", "LOCAL", "REMOTE", "AGE_MS", "IDLE_MS", "IN", "OUT", "LIFETIME",
                    "KEEPALIVE", "EVENTS"]
        let table = rows.map { row -> [String] in
            var ka: String
            if let k = row["keepalive"], k != .null { ka = "\(cell(k["idle"]))/\(cell(k["count"]))/\(cell(k["interval"]))" } else { ka = "off" }
            // TCP_USER_TIMEOUT set (with keepalive or without): it ends a peer that stops acknowledging,
            // and with keepalive it, not the probe count, ends a silent one.
            if let ut = row["user_timeout_ms"]?.int64, ut > 0 { ka += ",ut=\(ut)ms" }
            return [cell(row["conid"]), cell(row["peer_conid"]), cell(row["side"]), cell(row["listener"]),
                    "\(cell(row["state"])) \(cell(row["state_name"]))", cell(row["local"]), cell(row["remote"]),
                    cell(row["age_ms"]), cell(row["idle_ms"]), cell(row["bytes_in"]), cell(row["bytes_out"]),
                    cell(row["lifetime"]), ka, cell(row["events"])]
        }
        let widths = head.indices.map { i in ([head[i].count] + table.map { $0[i].count }).max() ?? 0 }
        for row in [head] + table {
            printLine(row.indices.map { i in row[i] + String(repeating: " ", count: max(0, widths[i] - row[i].count)) }
                .joined(separator: "  ").trimmingTrailingSpaces)
        }
    }
}

/// A value as a table cell: numbers and strings as they are, true/false as yes/no, null as "-".
func cell(_ v: JSON?) -> String {
    switch v ?? .null {
    case .null: return "-"
    case .bool(let b): return b ? "yes" : "no"
    case .string(let s): return s
    case .double(let d): return d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
    case let other: return other.text
    }
}

extension String {
    var trimmingTrailingSpaces: String {
        var s = Substring(self)
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}

struct Alive: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "1 if the connection is alive, else -1 (tcp_conid_alive).")
    @OptionGroup var common: Common
    @Argument(help: "The conid (default $TCPOPS_CONID).") var conid: String?

    func run() throws {
        try flagCommand(common, try conidRequest("alive", conid))
    }
}

struct State: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The connection's state code and name (tcp_conid_state).",
        discussion: "With --json: {\"state\": CODE, \"name\": NAME, \"keepalive\": {idle, count, interval} or null, "
            + "\"user_timeout_ms\": N}, keepalive and user timeout as read back from the socket.")
    @OptionGroup var common: Common
    @Argument(help: "The conid (default $TCPOPS_CONID).") var conid: String?

    func run() throws {
        let a = try ask(common, try conidRequest("state", conid))
        let code = a["result"]?.int64 ?? -1
        let name = a["state"]?.string ?? "gone"
        if common.json {
            printLine(JSON.object([("state", .int(code)), ("name", .string(name)),
                                   ("keepalive", a["keepalive"] ?? .null), ("user_timeout_ms", a["user_timeout_ms"] ?? .null)]).text)
        } else {
            printLine("\(code) \(name)")
        }
        if code <= 0 { throw ExitCode(CtlExit.negative) }
    }
}

/// The values of a command that takes `CONID VALUE...`: the CONID is never inferred from how many
/// values were given (a missing value would shift the others: "keepalive-enable 1 30 3" must not
/// mean conid $TCPOPS_CONID, idle 1).
func conidAndValues(_ args: [String], names: [String], usage: String) throws -> (Target, [String]) {
    guard args.count == names.count + 1 else {
        let missing = args.count < names.count + 1 ? "missing \((["CONID"] + names)[args.count...].joined(separator: " "))" : "too many values"
        throw ValidationError("\(missing); usage: tcpopsctl \(usage) (in a hook, give \"$TCPOPS_CONID\" as the CONID)")
    }
    return (try parseTarget(args[0]), Array(args.dropFirst()))
}

/// An integer value in a range, or a usage error naming it.
func integer(_ text: String, _ name: String, _ range: ClosedRange<Int>) throws -> Int {
    guard let v = Int(text) else { throw ValidationError("\(name) must be an integer, not \"\(text)\"") }
    guard range.contains(v) else { throw ValidationError("\(name) \(v) is out of range (\(range.lowerBound) to \(range.upperBound))") }
    return v
}

struct KeepaliveEnable: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keepalive-enable",
                                                    abstract: "Turn keepalive on: CONID IDLE COUNT INTERVAL (tcp_keepalive_enable).")
    @OptionGroup var common: Common
    @Argument(parsing: .allUnrecognized, help: "CONID IDLE COUNT INTERVAL (seconds, probes, seconds)") var values: [String] = []

    func run() throws {
        let (c, v) = try conidAndValues(values, names: ["IDLE", "COUNT", "INTERVAL"], usage: "keepalive-enable CONID IDLE COUNT INTERVAL")
        var r = ControlRequest(cmd: "keepalive-enable")
        try name(c, in: &r)
        r.idle = try integer(v[0], "IDLE", 1...32767)
        r.count = try integer(v[1], "COUNT", 1...127)
        r.interval = try integer(v[2], "INTERVAL", 1...32767)
        try flagCommand(common, r)
    }
}

struct KeepaliveDisable: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keepalive-disable", abstract: "Turn keepalive off (tcp_keepalive_disable).")
    @OptionGroup var common: Common
    @Argument(help: "The conid (default $TCPOPS_CONID).") var conid: String?

    func run() throws {
        try flagCommand(common, try conidRequest("keepalive-disable", conid))
    }
}

struct Lifetime: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set the idle lifetime: CONID SECONDS, 0 for none (tcp_set_connection_lifetime).")
    @OptionGroup var common: Common
    @Argument(parsing: .allUnrecognized, help: "CONID SECONDS (decimals allowed; 0 removes the lifetime)") var values: [String] = []

    func run() throws {
        let (c, v) = try conidAndValues(values, names: ["SECONDS"], usage: "lifetime CONID SECONDS")
        guard let s = Double(v[0]), s.isFinite else { throw ValidationError("SECONDS must be a number, not \"\(v[0])\"") }
        guard Durations.valid(s) else { throw ValidationError("SECONDS \(v[0]) is out of range: \(Durations.rangeText)") }
        var r = ControlRequest(cmd: "lifetime")
        try name(c, in: &r)
        r.seconds = s
        try flagCommand(common, r)
    }
}

struct ClosedEvent: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "closed-event",
                                                    abstract: "Raise events for this connection under closed_event = 2 (tcp_enable_closed_event).")
    @OptionGroup var common: Common
    @Argument(help: "The conid (default $TCPOPS_CONID).") var conid: String?

    func run() throws {
        try flagCommand(common, try conidRequest("closed-event", conid))
    }
}

struct Conid: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The newest conid whose remote address is HOST, on any port, or HOST:PORT (tcp_get_conid).")
    @OptionGroup var common: Common
    @Argument(help: "HOST or HOST:PORT (IPv6 as ADDR or [ADDR]:PORT)") var address: String
    @Flag(help: "Every match, newest first.") var all = false

    func run() throws {
        var r = ControlRequest(cmd: "conid")
        let (host, port) = try hostAndPort(address, portRequired: false)
        r.hosts = try addressesOf(host).map { ip in
            guard let port else { return ip }
            return SocketAddress.isIPv6Text(ip) ? "[\(ip)]:\(port)" : "\(ip):\(port)"
        }
        r.all = all
        let a = try ask(common, r)
        let result = a["result"] ?? .int(-1)
        if let ids = result.items {
            printLine(common.json ? result.text : ids.map(\.text).joined(separator: "\n"))
            if ids.isEmpty { throw ExitCode(CtlExit.negative) }
        } else {
            printLine(result.text)
            if (result.int64 ?? -1) <= 0 { throw ExitCode(CtlExit.negative) }
        }
    }
}

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write bytes to the connection's peer, after the relayed bytes already queued (tcp_set_otcpid).")
    @OptionGroup var common: Common
    @Argument(help: "The conid.") var conid: String
    @Argument(help: "The bytes to send, or - for standard input.") var data: String?
    @Option(help: "Send this file's bytes.") var file: String?

    func run() throws {
        let bytes: [UInt8]
        switch (data, file) {
        case (nil, let f?):
            guard let b = readAll(path: f) else { throw ValidationError("cannot read \(f)") }
            bytes = b
        case ("-", nil):
            bytes = readAll(fd: 0)
        case (let d?, nil):
            bytes = Array(d.utf8)
        default:
            throw ValidationError("give DATA, --file F or - (standard input), one of them")
        }
        guard !bytes.isEmpty else { throw ValidationError("nothing to send") }
        guard bytes.count <= 48 * 1024 else { throw ValidationError("at most 49152 bytes a send (the request line limit is 64 KiB)") }
        var r = ControlRequest(cmd: "send")
        try name(try parseTarget(conid), in: &r)
        r.data = Base64.encode(bytes)
        try flagCommand(common, r)
    }
}

func readAll(fd: Int32) -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        guard let n = try? sys("read", { chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }), n > 0 else { return out }
        out.append(contentsOf: chunk[0..<n])
    }
}

func readAll(path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    return readAll(fd: fd)
}

struct Close: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Close the connection (and its relay): FIN, or RST with --reset (tcp_close_connection).")
    @OptionGroup var common: Common
    @Argument(help: "The conid (default $TCPOPS_CONID).") var conid: String?
    @Flag(help: "Reset (RST) instead of a FIN.") var reset = false

    func run() throws {
        var r = try conidRequest("close", conid)
        r.reset = reset
        try flagCommand(common, r)
    }
}

struct EventsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "events",
                                                    abstract: "Recent events, one JSON object a line; with --follow, every new one as it happens.")
    @OptionGroup var common: Common
    @Flag(help: "Keep streaming new events.") var follow = false

    func run() throws {
        var client = try connectOrExit(common)
        var r = ControlRequest(cmd: "events")
        r.follow = follow
        _ = client.send(r)
        let first = try answer(&client, common)
        guard first["ok"] == .bool(true) else {
            writeStderr("tcpopsctl: tcpopsd refused the events request: \(first["error"]?.string ?? "error")\n")
            throw ExitCode(CtlExit.daemonError)
        }
        if follow { client.waitForever() }
        var left = first["count"]?.int64 ?? Int64.max
        while follow || left > 0 {
            guard case .line(let line) = client.readLine() else { break }
            // An error line (a subscriber cut off for being too slow) is not an event.
            if line.hasPrefix("{\"id\""), let e = try? JSON.parse(line), e["ok"] == .bool(false) {
                writeStderr("tcpopsctl: \(e["error"]?.string ?? "error")\n")
                throw ExitCode(CtlExit.daemonError)
            }
            printLine(line)
            left -= 1
        }
        if follow {  // the stream ended: tcpopsd went away
            writeStderr("tcpopsctl: the event stream ended: tcpopsd at \(common.path) stopped or closed the connection\n")
            throw ExitCode(CtlExit.unavailable)
        }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Counters: connections, bytes, events, hooks, subscribers.",
        discussion: "With --openmetrics: every metric in the Prometheus text format, as GET /metrics serves it "
            + "(for node_exporter's textfile collector, say).")
    @OptionGroup var common: Common
    @Flag(help: "Print the Prometheus exposition text instead.") var openmetrics = false

    func run() throws {
        if openmetrics {
            var r = ControlRequest(cmd: "stats")
            r.format = "openmetrics"
            let a = try ask(common, r)
            var text = a["result"]?.string ?? ""
            if text.hasSuffix("\n") { text.removeLast() }
            printLine(text)
            return
        }
        let a = try ask(common, ControlRequest(cmd: "stats"))
        let s = a["result"] ?? .null
        if common.json {
            printLine(s.text)
            return
        }
        for key in ["connections_open", "relays_open", "accepted", "rejected", "relayed_bytes"] { printLine("\(key) \(cell(s[key]))") }
        for kind in ["tcp:closed", "tcp:reset", "tcp:timeout", "tcp:opened"] { printLine("events.\(kind) \(cell(s["events"]?[kind]))") }
        for key in ["run", "failed", "killed", "dropped", "queued"] { printLine("hooks.\(key) \(cell(s["hooks"]?[key]))") }
        printLine("subscribers \(cell(s["subscribers"]))")
        printLine("workers \(cell(s["workers"]))")
    }
}
