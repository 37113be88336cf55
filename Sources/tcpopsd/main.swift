// tcpopsd: parse the command line, load the configuration, run the daemon.
import ArgumentParser
import CEarly
import Glibc
import TCPOps
import TCPOpsConfig
import TCPOpsLoop
import TCPOpsPosix
import TCPOpsProtocol
import TCPOpsSystemd

enum ExitStatus {
    static let config: Int32 = 78  // EX_CONFIG
    static let osResource: Int32 = 71  // EX_OSERR
}

extension Logger.Target: ExpressibleByArgument {}

@main
struct TCPOpsD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tcpopsd",
        abstract: "A TCP connection manager: relays, tracks, times out and reports TCP connections.",
        discussion: """
        tcpopsd accepts TCP connections on the listeners of its configuration file (see tcpopsd.toml(5)), \
        relays each to an upstream, tracks both sides under connection ids (conids), applies keepalive, \
        TCP_USER_TIMEOUT and idle-lifetime timers, tells a peer's FIN, RST and timeout apart, and reports \
        each as an event (tcp:closed, tcp:reset, tcp:timeout) to hooks, to the journal and to \
        `tcpopsctl events` subscribers. tcpopsctl(1) queries and steers the connections at runtime.

        Signals: SIGTERM and SIGINT stop (relays drain for up to shutdown_timeout); SIGHUP re-reads the \
        file without refusing or resetting a client (an invalid file changes nothing); SIGPIPE is ignored. \
        Under systemd: Type=notify readiness and status, WATCHDOG=1, socket activation, and with \
        TCPOPSD_FDSTORE=N (the fd store's size) a restart that hands established relays to the next tcpopsd.

        Exit status: 0 clean stop (or a valid file with --check-config); 64 bad command line; 71 an OS \
        resource could not be had (a bind failed: listener, address and errno named); 78 bad \
        configuration (every problem as PATH:LINE: what is wrong).

        Files: /etc/tcpopsd/tcpopsd.toml (the configuration), /run/tcpopsd/control.sock (the control \
        socket). The full contract: /usr/local/share/doc/tcpopsd/.
        """,
        version: TCPOpsVersion.line("tcpopsd")
    )

    @Option(name: .long, help: "The configuration file.")
    var config: String = Configuration.defaultPath

    @Flag(name: .long, help: "Validate the configuration and exit (0 valid, 78 invalid).")
    var checkConfig = false

    @Option(name: .long, help: "Where to log: auto, journal or stderr.")
    var logTarget: Logger.Target = .auto

    @Flag(name: .long, help: ArgumentHelp(
        "Run by the unit as ExecStop=+ (root): on `systemctl stop`, tell the daemon to drain its relays instead of handing them to the fd store.",
        discussion: "Asks systemd over the system bus which job it runs on the unit; a stop leaves $RUNTIME_DIRECTORY/stop-for-good for the daemon. Always exits 0."))
    var stopHint = false

    static func main() {
        // CEarly's .preinit_array entry blocked the daemon's signals before Swift started; should it
        // not have run, they are blocked here, still before any configuration is read.
        if tcpopsd_early_signals_blocked() == 0 { SignalReader.blockEarly() }
        main(nil)
    }

    func run() throws {
        if stopHint {
            print(StopHint.run())
            return
        }
        let configuration: Configuration
        do {
            // Names resolve here, before anything else runs (DNS may take its time).
            let outcome = try ConfigResolver.resolve(try ConfigLoader.load(path: config), mode: checkConfig ? .check : .start)
            for w in outcome.warnings { writeStderr("warning: \(w)\n") }
            configuration = outcome.config
        } catch {
            writeStderr("\(error)\n")
            throw ExitCode(ExitStatus.config)
        }
        if checkConfig {
            print("\(config): configuration is valid (\(configuration.listeners.count) listener(s))")
            return
        }
        if logTarget == .journal && !Logger.journalSocketExists() {
            writeStderr("tcpopsd: --log-target journal, but there is no journal socket at /run/systemd/journal/socket\n")
            throw ExitCode(ExitStatus.osResource)
        }
        let logger = Logger(target: logTarget, level: configuration.daemon.logLevel)
        var daemon: Daemon?
        // What is still queued for the journal (or stderr) and for systemd goes out before exit, for
        // what is left of shutdown_timeout and half a second (at least a quarter of a second; a
        // second when no stop began): a receiver that stopped reading must not keep tcpopsd alive.
        defer {
            let now = Clock.monotonicNanoseconds()
            let deadline = max(now + 250_000_000, daemon?.exitDeadline ?? now + 1_000_000_000)
            Notify.flush(deadline: deadline)
            logger.flush(deadline: deadline)
        }
        do {
            if let stale = StopHint.path() { Files.remove(stale) }  // a mark a stop left that no SIGTERM took
            daemon = try Daemon(config: configuration, logger: logger)
            try daemon?.run()
        } catch {
            logger.log(.error, "\(error)")
            if logger.writesToJournal { writeStderr("tcpopsd: \(error)\n") }
            throw ExitCode(error.exitStatus)
        }
    }
}
