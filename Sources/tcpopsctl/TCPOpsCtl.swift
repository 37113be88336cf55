// tcpopsctl: the tcpops functions from outside, one request on tcpopsd's control socket.
import ArgumentParser
import Glibc
import TCPOpsPosix
import TCPOpsProtocol

/// The options every command takes, before or after the command's name.
struct Common: ParsableArguments {
    @Option(name: .long, help: "The control socket (default: $TCPOPS_CONTROL_SOCKET, then /run/tcpopsd/control.sock).")
    var socket: String?

    @Flag(name: .long, help: "Print the result as JSON (an object, an array or a number; events: one object a line).")
    var json = false

    // .unconditional: "--timeout -1" is a value (refused with its range), not a missing one.
    @Option(name: .long, parsing: .unconditional, help: "Give up after this many seconds without an answer (0: wait forever).")
    var timeout: Double = 10

    var path: String {
        if let socket { return socket }
        if let env = environment("TCPOPS_CONTROL_SOCKET"), !env.isEmpty { return env }
        return ControlProtocol.defaultSocket
    }

    /// Global options may stand before the command (`tcpopsctl --socket S list`, as systemctl and
    /// ip are typed) or after it; ArgumentParser reads them after it, so they are moved there.
    static let valued: Set<String> = ["--socket", "--timeout"]
    static let flags: Set<String> = ["--json"]

    static func reorder(_ args: [String]) -> [String] {
        var globals: [String] = []
        var i = 0
        while i < args.count {
            let a = args[i]
            let name = String(a.prefix { $0 != "=" })
            if valued.contains(name) {
                globals.append(a)
                if !a.contains("="), i + 1 < args.count {
                    globals.append(args[i + 1])
                    i += 1
                }
            } else if flags.contains(a) {
                globals.append(a)
            } else {
                break
            }
            i += 1
        }
        guard i < args.count, !globals.isEmpty else { return args }
        return [args[i]] + globals + args[(i + 1)...]
    }
}

func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

enum CtlExit {
    static let ok: Int32 = 0
    static let negative: Int32 = 1  // the tcpops function answered -1, or the state is not positive
    static let daemonError: Int32 = 2  // the daemon answered with an error
    static let usage: Int32 = 64
    static let unavailable: Int32 = 69  // no daemon on the socket, or no answer in time
}

/// A connection to tcpopsd's control socket, or exit 69 saying why there is none.
func connectOrExit(_ common: Common) throws -> ControlClient {
    guard common.timeout >= 0, common.timeout.isFinite else {
        throw ValidationError("--timeout \(common.timeout) is out of range: 0 (wait for ever) or more seconds")
    }
    // A Unix socket's address holds 107 bytes: a longer path would be cut and name another socket.
    guard common.path.utf8.count <= UnixSocket.maxPath, !common.path.isEmpty else {
        throw ValidationError("the control socket path \"\(common.path)\" is \(common.path.utf8.count) bytes; a Unix socket path holds 1 to \(UnixSocket.maxPath)")
    }
    do {
        return try ControlClient(socket: common.path, timeout: common.timeout)
    } catch {
        if error.errno == EAGAIN {
            writeStderr("tcpopsctl: tcpopsd at \(common.path) did not accept the connection within \(seconds(common.timeout))\n")
        } else {
            writeStderr("tcpopsctl: cannot reach tcpopsd at \(common.path): \(error)\n")
        }
        throw ExitCode(CtlExit.unavailable)
    }
}

func seconds(_ s: Double) -> String { s == s.rounded() ? "\(Int(s)) s" : "\(s) s" }

/// The next answer line, decoded, or exit 69 (no answer) / 2 (not JSON) saying why.
func answer(_ client: inout ControlClient, _ common: Common) throws -> JSON {
    let line: String
    switch client.readLine() {
    case .line(let l): line = l
    case .timeout:
        writeStderr("tcpopsctl: tcpopsd at \(common.path) did not answer within \(seconds(common.timeout))\n")
        throw ExitCode(CtlExit.unavailable)
    case .end:
        writeStderr("tcpopsctl: tcpopsd closed the connection without an answer\n")
        throw ExitCode(CtlExit.unavailable)
    }
    do {
        return try JSON.parse(line)
    } catch {
        writeStderr("tcpopsctl: unreadable answer (\(error)): \(line)\n")
        throw ExitCode(CtlExit.daemonError)
    }
}

/// Sends one request and returns its answer when it is `ok`; an error answer is printed on stderr
/// and ends tcpopsctl with status 2.
func ask(_ common: Common, _ request: ControlRequest) throws -> JSON {
    var client = try connectOrExit(common)
    // A failed send still reads: tcpopsd may have answered (and closed) before taking the request.
    _ = client.send(request)
    let a = try answer(&client, common)
    guard a["ok"] == .bool(true) else {
        writeStderr("tcpopsctl: \(a["error"]?.string ?? "tcpopsd answered with an error")\n")
        throw ExitCode(CtlExit.daemonError)
    }
    return a
}

/// `[CONID]` of the commands that take nothing else: the argument, else $TCPOPS_CONID (so a hook
/// acts on the connection that raised its event).
func resolveConid(_ given: String?) throws -> Target {
    guard let text = given ?? environment("TCPOPS_CONID"), !text.isEmpty else {
        throw ValidationError("no CONID given and TCPOPS_CONID is not set")
    }
    return try parseTarget(text)
}

/// How a command names its connection: by conid, or by the client's address HOST:PORT (the
/// address the service behind sees, as Kamailio's $si:$sp), so that a script needs one call.
enum Target {
    case conid(UInt64)
    case address(host: String, port: UInt16)
}

func parseTarget(_ text: String) throws -> Target {
    if text.allSatisfy(\.isNumber) {
        guard let c = UInt64(text), c > 0 else { throw ValidationError("CONID must be a positive integer, not \"\(text)\"") }
        return .conid(c)
    }
    let (host, port) = try hostAndPort(text, portRequired: true)
    return .address(host: host, port: port!)
}

/// "a.b.c.d[:port]", "[v6][:port]", "v6" (no port), "name[:port]". The port, when there is one,
/// must be 1 to 65535.
func hostAndPort(_ text: String, portRequired: Bool) throws -> (String, UInt16?) {
    let usage = "a CONID, or a client's address HOST:PORT (IPv4, [IPv6] or a host name)"
    var host = Substring(text), portText: Substring?
    if text.hasPrefix("[") {
        guard let close = text.firstIndex(of: "]") else { throw ValidationError("\"\(text)\" is not \(usage)") }
        host = text[text.index(after: text.startIndex)..<close]
        let rest = text[text.index(after: close)...]
        if rest.hasPrefix(":") { portText = rest.dropFirst() } else if !rest.isEmpty { throw ValidationError("\"\(text)\" is not \(usage)") }
    } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
    }
    guard !host.isEmpty else { throw ValidationError("\"\(text)\" is not \(usage)") }
    if let portText {
        guard let p = Int(portText), (1...65535).contains(p) else { throw ValidationError("\"\(text)\": port \"\(portText)\" must be 1 to 65535") }
        return (String(host), UInt16(p))
    }
    if portRequired { throw ValidationError("\"\(text)\" is not \(usage): a connection's address needs its port") }
    return (String(host), nil)
}

/// The addresses a host stands for, as "ip" (IPv6 bare): itself when it is an address, else what
/// the resolver says. A name that does not resolve ends tcpopsctl with status 1 (no such
/// connection can exist), saying so.
func addressesOf(_ host: String) throws -> [String] {
    if (try? SocketAddress.parseHost(host)) != nil { return [host] }
    switch Resolve.addresses(host, port: 1) {
    case .success(let list): return list.prefix(64).map(\.ip)
    case .failure(let e):
        writeStderr("tcpopsctl: \(e)\n")
        throw ExitCode(CtlExit.negative)
    }
}

/// Names `target` in `r`: its conid, or its client's address(es) ("ip:port"), which tcpopsd
/// resolves to the one connection that has it (two or more: an error naming them).
func name(_ target: Target, in r: inout ControlRequest) throws {
    switch target {
    case .conid(let c): r.conid = c
    case .address(let host, let port):
        r.remotes = try addressesOf(host).map { SocketAddress.isIPv6Text($0) ? "[\($0)]:\(port)" : "\($0):\(port)" }
    }
}

/// A request that names one connection.
func conidRequest(_ cmd: String, _ conid: String?) throws -> ControlRequest {
    var r = ControlRequest(cmd: cmd)
    try name(try resolveConid(conid), in: &r)
    return r
}

/// Prints the 1 / -1 of a tcpops function and exits 0 / 1.
func flagCommand(_ common: Common, _ r: ControlRequest) throws {
    let a = try ask(common, r)
    let v = a["result"]?.int64 ?? -1
    printLine(String(v))
    if v != 1 { throw ExitCode(CtlExit.negative) }
}

/// One line on stdout, unbuffered (a follower sees each event as it comes).
func printLine(_ line: String) {
    var bytes = Array(line.utf8)
    bytes.append(10)
    var off = 0
    while off < bytes.count {
        guard let n = try? sys("write", { bytes[off...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) } }), n > 0 else { return }
        off += n
    }
}

@main
struct TCPOpsCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcpopsctl",
        abstract: "Query and steer tcpopsd's connections (the tcpops functions, at runtime).",
        discussion: """
        Global options, before or after the command: --socket PATH (the control socket; default $TCPOPS_CONTROL_SOCKET, then /run/tcpopsd/control.sock), --json (print the result as JSON), --timeout SECONDS (give up after this long without an answer; default 10, 0 waits for ever).

        A CONID is a connection id; the client's address HOST:PORT may stand instead (the address the service behind tcpopsd sees). Commands that take only a connection accept it as [CONID]; left out, it is $TCPOPS_CONID, so a hook acts on its own connection. Commands that take values (keepalive-enable, lifetime, send) need the CONID first, always: in a hook, pass "$TCPOPS_CONID".

        Exit status: 0 success; 1 the function answered -1 (no such connection, state not positive, no match); 2 tcpopsd answered with an error; 64 bad command line; 69 tcpopsd unreachable or silent.

        See tcpopsctl(1).
        """,
        version: TCPOpsVersion.line("tcpopsctl"),
        subcommands: [List.self, Alive.self, State.self, KeepaliveEnable.self, KeepaliveDisable.self, Lifetime.self,
                      ClosedEvent.self, Conid.self, Send.self, Close.self, EventsCommand.self, Stats.self]
    )

    static func main() {
        let arguments = Common.reorder(Array(CommandLine.arguments.dropFirst()))
        var command: ParsableCommand
        do {
            command = try parseAsRoot(arguments)
        } catch {
            exit(withError: error)  // the parser knows which command it was reading
        }
        do {
            try command.run()
        } catch let e as ValidationError {
            // A value found wrong while the command runs: that command's usage, not the list of
            // every command.
            let name = type(of: command)._commandName
            writeStderr("Error: \(e.message)\nUsage: \(usageString(for: type(of: command)))\n"
                        + "  See 'tcpopsctl \(name) --help' for more information.\n")
            Glibc.exit(CtlExit.usage)
        } catch {
            exit(withError: error)
        }
    }
}
