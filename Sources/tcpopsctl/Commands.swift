// One type per tcpopsctl subcommand.
import ArgumentParser
import FoundationEssentials
import Glibc
import TCPOps

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List tracked connections (RPC core.tcp_list).")
    @OptionGroup var common: Common
    @Option(help: "Only this listener's connections.") var listener: String?

    func run() throws {
        var r = ControlRequest(cmd: "list")
        r.listener = listener
        let (line, a) = try ask(common, r)
        if common.json {
            print(line)
            return
        }
        guard case .array(let rows) = a.result ?? .null else { return }
        let head = ["CONID", "PEER", "SIDE", "LISTENER", "STATE", "LOCAL", "REMOTE", "AGE_MS", "IDLE_MS", "IN", "OUT", "LIFETIME", "KEEPALIVE", "EVENTS"]
        let table = rows.map { row -> [String] in
            let k = row["keepalive"]
            let ka: String
            if case .null = k { ka = "off" } else { ka = "\(k["idle"].text)/\(k["count"].text)/\(k["interval"].text)" }
            return [row["conid"].text, row["peer_conid"].text, row["side"].text, row["listener"].text,
                    "\(row["state"].text) \(row["state_name"].text)", row["local"].text, row["remote"].text,
                    row["age_ms"].text, row["idle_ms"].text, row["bytes_in"].text, row["bytes_out"].text,
                    row["lifetime"].text, ka, row["closed_event"].text]
        }
        let widths = head.indices.map { i in ([head[i].count] + table.map { $0[i].count }).max() ?? 0 }
        for row in [head] + table {
            print(row.indices.map { i in row[i] + String(repeating: " ", count: max(0, widths[i] - row[i].count)) }.joined(separator: "  ")
                .trimmingTrailingSpaces)
        }
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
    static let configuration = CommandConfiguration(abstract: "The connection's state code and name (tcp_conid_state).")
    @OptionGroup var common: Common
    @Argument(help: "The conid (default $TCPOPS_CONID).") var conid: String?

    func run() throws {
        let (line, a) = try ask(common, try conidRequest("state", conid))
        let code = a.result?.int ?? -1
        print(common.json ? line : "\(code) \(a.state ?? "gone")")
        if code <= 0 { throw ExitCode(CtlExit.negative) }
    }
}

/// Splits `[CONID] A B ...` where the conid is optional.
func optionalConid(_ values: [String], rest: Int, usage: String) throws -> (UInt64, [String]) {
    if values.count == rest + 1 { return (try resolveConid(values[0]), Array(values.dropFirst())) }
    if values.count == rest { return (try resolveConid(nil), values) }
    throw ValidationError("usage: \(usage)")
}

struct KeepaliveEnable: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keepalive-enable", abstract: "Turn keepalive on (tcp_keepalive_enable).")
    @OptionGroup var common: Common
    @Argument(help: "[CONID] IDLE COUNT INTERVAL") var values: [String] = []

    func run() throws {
        let (c, v) = try optionalConid(values, rest: 3, usage: "keepalive-enable [CONID] IDLE COUNT INTERVAL")
        guard let idle = Int(v[0]), let count = Int(v[1]), let interval = Int(v[2]) else {
            throw ValidationError("IDLE, COUNT and INTERVAL must be integers")
        }
        var r = ControlRequest(cmd: "keepalive-enable")
        r.conid = c
        r.idle = idle
        r.count = count
        r.interval = interval
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
    static let configuration = CommandConfiguration(abstract: "Set the idle lifetime in seconds, 0 for none (tcp_set_connection_lifetime).")
    @OptionGroup var common: Common
    @Argument(help: "[CONID] SECONDS") var values: [String] = []

    func run() throws {
        let (c, v) = try optionalConid(values, rest: 1, usage: "lifetime [CONID] SECONDS")
        guard let s = Double(v[0]), s >= 0, s.isFinite else { throw ValidationError("SECONDS must be a number of seconds, 0 or more") }
        var r = ControlRequest(cmd: "lifetime")
        r.conid = c
        r.seconds = s
        try flagCommand(common, r)
    }
}

struct ClosedEvent: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "closed-event", abstract: "Raise events for this connection under closed_event = 2 (tcp_enable_closed_event).")
    @OptionGroup var common: Common
    @Argument(help: "The conid (default $TCPOPS_CONID).") var conid: String?

    func run() throws {
        try flagCommand(common, try conidRequest("closed-event", conid))
    }
}

struct Conid: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The conid whose remote address is HOST[:PORT], newest first; port 5060 by default (tcp_get_conid).")
    @OptionGroup var common: Common
    @Argument(help: "HOST[:PORT] (IPv6 as [ADDR]:PORT)") var address: String
    @Flag(help: "Every match, newest first.") var all = false

    func run() throws {
        var r = ControlRequest(cmd: "conid")
        r.host = address
        r.all = all
        let (line, a) = try ask(common, r)
        if common.json { print(line) }
        switch a.result ?? .null {
        case .array(let ids):
            if !common.json { for id in ids { print(id.text) } }
            if ids.isEmpty { throw ExitCode(CtlExit.negative) }
        case .int(let id):
            if !common.json { print(id) }
            if id <= 0 { throw ExitCode(CtlExit.negative) }
        default:
            throw ExitCode(CtlExit.negative)
        }
    }
}

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write bytes to the connection's peer, after the relayed bytes already queued (tcp_set_otcpid).")
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
        r.conid = try resolveConid(conid)
        r.data = Data(bytes).base64EncodedString()
        try flagCommand(common, r)
    }
}

func writeStdoutLine(_ line: String) {
    var bytes = Array(line.utf8)
    bytes.append(10)
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return }
        off += n
    }
}

func readAll(fd: Int32) -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return out }
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
    static let configuration = CommandConfiguration(commandName: "events", abstract: "Recent events as JSON lines; with --follow, every new one as it happens.")
    @OptionGroup var common: Common
    @Flag(help: "Keep streaming new events.") var follow = false

    func run() throws {
        var client = try connectOrExit(common)
        var r = ControlRequest(cmd: "events")
        r.follow = follow
        _ = client.send(r)
        let first = try answerLine(&client, common)
        guard let a = Answer.parse(first), a.ok else {
            writeStderr("tcpopsctl: tcpopsd refused the events request: \(Answer.parse(first)?.error ?? first)\n")
            throw ExitCode(CtlExit.daemonError)
        }
        if follow { client.waitForever() }
        if common.json { writeStdoutLine(first) }
        var left = a.count ?? Int.max
        while follow || left > 0, case .line(let line) = client.readLine() {
            if let e = Answer.parse(line), !e.ok, line.hasPrefix("{\"id\"") {
                writeStderr("tcpopsctl: \(e.error ?? "error")\n")
                throw ExitCode(CtlExit.daemonError)
            }
            writeStdoutLine(line)  // unbuffered: a follower sees each event as it comes
            left -= 1
        }
        if follow { throw ExitCode(CtlExit.unavailable) }  // the stream ended: tcpopsd went away
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Counters: connections, bytes, events, hooks, subscribers.")
    @OptionGroup var common: Common

    func run() throws {
        let (line, a) = try ask(common, ControlRequest(cmd: "stats"))
        if common.json {
            print(line)
            return
        }
        let s = a.result ?? .null
        for key in ["connections_open", "relays_open", "accepted", "rejected", "relayed_bytes"] { print("\(key) \(s[key].text)") }
        for kind in ["tcp:closed", "tcp:reset", "tcp:timeout"] { print("events.\(kind) \(s["events"][kind].text)") }
        for key in ["run", "failed", "killed", "dropped"] { print("hooks.\(key) \(s["hooks"][key].text)") }
        print("subscribers \(s["subscribers"].text)")
    }
}
