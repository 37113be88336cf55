// tcpopsctl: the tcpops functions from outside, one request on tcpopsd's control socket.
import ArgumentParser
import FoundationEssentials
import Glibc
import TCPOps

struct Common: ParsableArguments {
    @Option(name: .long, help: "The control socket (default: $TCPOPS_CONTROL_SOCKET, then /run/tcpopsd/control.sock).")
    var socket: String?

    @Flag(name: .long, help: "Print tcpopsd's JSON answer as it is.")
    var json = false

    @Option(name: .long, help: "Give up after this many seconds without an answer (0: wait forever).")
    var timeout: Double = 10

    var path: String {
        socket ?? ProcessInfo.processInfo.environment["TCPOPS_CONTROL_SOCKET"].flatMap { $0.isEmpty ? nil : $0 } ?? ControlProtocol.defaultSocket
    }
}

/// A connection to tcpopsd's control socket, or exit 69 saying why there is none.
func connectOrExit(_ common: Common) throws -> ControlClient {
    guard common.timeout >= 0, common.timeout.isFinite else { throw ValidationError("--timeout must be 0 or more seconds") }
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

/// The next answer line, or exit 69 saying why none came.
func answerLine(_ client: inout ControlClient, _ common: Common) throws -> String {
    switch client.readLine() {
    case .line(let l): return l
    case .timeout:
        writeStderr("tcpopsctl: tcpopsd at \(common.path) did not answer within \(seconds(common.timeout))\n")
    case .end:
        writeStderr("tcpopsctl: tcpopsd closed the connection without an answer\n")
    }
    throw ExitCode(CtlExit.unavailable)
}

/// Sends one request and returns the first answer (exits on failure to reach the daemon).
func ask(_ common: Common, _ request: ControlRequest) throws -> (line: String, answer: Answer) {
    var client = try connectOrExit(common)
    // A failed send still reads: tcpopsd may have answered (and closed) before taking the request.
    _ = client.send(request)
    let line = try answerLine(&client, common)
    guard let answer = Answer.parse(line) else {
        writeStderr("tcpopsctl: unreadable answer: \(line)\n")
        throw ExitCode(CtlExit.daemonError)
    }
    if !answer.ok {
        if common.json { print(line) } else { writeStderr("tcpopsctl: \(answer.error ?? "error")\n") }
        throw ExitCode(CtlExit.daemonError)
    }
    return (line, answer)
}

/// `[CONID]`: the argument, else $TCPOPS_CONID (a hook acts on the connection that raised its event).
func resolveConid(_ given: String?) throws -> UInt64 {
    let text = given ?? ProcessInfo.processInfo.environment["TCPOPS_CONID"]
    guard let text, !text.isEmpty else {
        throw ValidationError("no CONID given and TCPOPS_CONID is not set")
    }
    guard let c = UInt64(text), c > 0 else { throw ValidationError("CONID must be a positive integer, not \"\(text)\"") }
    return c
}

/// A request that names one connection.
func conidRequest(_ cmd: String, _ conid: String?) throws -> ControlRequest {
    var r = ControlRequest(cmd: cmd)
    r.conid = try resolveConid(conid)
    return r
}

/// Prints the 1 / -1 of a tcpops function and exits 0 / 1.
func flagCommand(_ common: Common, _ r: ControlRequest) throws {
    let (line, a) = try ask(common, r)
    let v = a.result?.int ?? -1
    print(common.json ? line : String(v))
    if v != 1 { throw ExitCode(CtlExit.negative) }
}

@main
struct TCPOpsCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcpopsctl",
        abstract: "Query and steer tcpopsd's connections (the tcpops functions, at runtime).",
        discussion: "A CONID left out means $TCPOPS_CONID, so a hook acts on its own connection.",
        subcommands: [List.self, Alive.self, State.self, KeepaliveEnable.self, KeepaliveDisable.self, Lifetime.self,
                      ClosedEvent.self, Conid.self, Send.self, Close.self, EventsCommand.self, Stats.self]
    )
}
