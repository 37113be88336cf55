// tcpopsd: parse the command line, load the configuration, run the daemon.
import ArgumentParser
import CEarly
import Glibc
import TCPOps

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
        version: TCPOpsVersion.line("tcpopsd")
    )

    @Option(name: .long, help: "The configuration file.")
    var config: String = Configuration.defaultPath

    @Flag(name: .long, help: "Validate the configuration and exit (0 valid, 78 invalid).")
    var checkConfig = false

    @Option(name: .long, help: "Where to log: auto, journal or stderr.")
    var logTarget: Logger.Target = .auto

    static func main() {
        // The constructor in CEarly blocked the daemon's signals before Swift started; should it
        // not have run, they are blocked here, still before any configuration is read.
        if tcpopsd_early_signals_blocked() == 0 { SignalReader.blockEarly() }
        main(nil)
    }

    func run() throws {
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
        // What is still queued for the journal (or stderr) and for systemd goes out before exit,
        // for at most a second: a receiver that stopped reading must not keep tcpopsd alive.
        defer {
            let deadline = Clock.monotonicNanoseconds() + 1_000_000_000
            Notify.flush(deadline: deadline)
            logger.flush(deadline: deadline)
        }
        do {
            let daemon = try Daemon(config: configuration, logger: logger)
            try daemon.run()
        } catch {
            logger.log(.error, "\(error)")
            if logger.writesToJournal { writeStderr("tcpopsd: \(error)\n") }
            throw ExitCode(ExitStatus.osResource)
        }
    }
}
