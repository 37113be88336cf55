// Wires the parts together and owns the lifecycle: start (an ordered list of services, READY=1),
// reload on SIGHUP (Daemon+Reload.swift), drain or hand over on SIGTERM/SIGINT bounded by
// shutdown_timeout, stop (the services in reverse). Runs on the main thread, whose loop is
// worker 0's.
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix
import TCPOpsRelay

public enum DaemonError: Error, CustomStringConvertible {
    case bind(listener: String, address: SocketAddress, SystemError)
    case control(path: String, SystemError)
    case metrics(address: SocketAddress, SystemError)
    case resource(SystemError)
    /// systemd passed a socket named for a listener but bound elsewhere: the unit and the file
    /// disagree (exit 78, as a bad file).
    case passedSocket(listener: String, configured: SocketAddress, passed: SocketAddress?)

    /// The exit status this error ends tcpopsd with: 78 where the configuration is at fault, else 71.
    public var exitStatus: Int32 {
        if case .passedSocket = self { return 78 }
        return 71
    }

    public var description: String {
        switch self {
        case let .passedSocket(name, configured, passed):
            return "listener \"\(name)\" listens on \(configured), but the socket systemd passed as \"\(name)\" "
                + "(FileDescriptorName=) is bound to \(passed?.description ?? "an unknown address"): make the socket unit's "
                + "ListenStream= and the listener's listen agree"
        case let .bind(name, address, e): return "cannot listen on \(address) for listener \"\(name)\": \(e)"
        case let .control(path, e): return "cannot create the control socket \(path): \(e)"
        case let .metrics(address, e): return "cannot listen on \(address) for [metrics]: \(e)"
        case let .resource(e): return "\(e)"
        }
    }
}

public final class Daemon {
    var config: Configuration
    let logger: Logger
    /// RelayWorker 0's loop: the main thread's, which also runs signals, reload and status.
    let loop: EventLoop
    let hooks: HookRunner
    /// The event loops relaying (workers[0] runs on the main thread).
    let workers: [RelayWorker]
    let shared = RelayShared()
    /// The configuration generation in force (every part holds the same one).
    private(set) var generation: Generation
    var listeners: [String: ListenerGroup] = [:]
    private var signals: SignalReader?
    private(set) var control: ControlServer?
    let metrics = DaemonMetrics()
    /// Serving [metrics] listen, when configured (started on first use, also by a reload).
    private var metricsServer: MetricsServer?
    private(set) var metricsAddress: SocketAddress?
    /// systemd's fd store, when the unit hands relays over at a restart.
    private var fdStore: FDStore?
    /// The crash keep, when on (and while a previous one is taken back).
    private var crashKeep: CrashKeep?
    private(set) var stopping = false
    private var stopStartedAt: UInt64 = 0
    /// The open-files limit after raising it at start (max_connections' default fits it).
    let fdLimit: UInt64
    /// When a stop must be over (monotonic ns): shutdown_timeout after the signal, and half a second
    /// for the last log entries and notify messages. nil until a stop began.
    public private(set) var exitDeadline: UInt64?
    private var lastStatus = ""
    /// The thread reading and resolving the file for a reload under way, and whether another
    /// SIGHUP came meanwhile.
    var reloadWorker: PosixThread?
    var reloadQueued = false
    /// Old listening sockets a reload retired that are not yet closed (RelayWorker's retire runs
    /// on every worker first); the next reload waits for them.
    var retirementsInFlight = 0

    /// Makes the parts (nothing runs yet) under the first generation; raises the open-files limit
    /// to the hard one, which max_connections' default fits.
    public init(config: Configuration, logger: Logger) throws(DaemonError) {
        self.config = config
        self.logger = logger
        fdLimit = FileLimit.raiseToHard()
        let generation = Generation(number: 1, config: config, fdLimit: fdLimit, listening: config.listeners,
                                    controlSocket: config.daemon.controlSocket)
        self.generation = generation
        let count = config.daemon.workerCount
        do {
            loop = try EventLoop()
            hooks = try HookRunner(settings: generation.hooks, logger: logger, metrics: metrics.hooks)
            var workers: [RelayWorker] = []
            for i in 0..<count {
                workers.append(RelayWorker(index: i, count: count, loop: i == 0 ? loop : try EventLoop(), logger: logger, hooks: hooks,
                                           shared: shared, generation: generation, metrics: metrics))
            }
            self.workers = workers
        } catch {
            throw .resource(error)
        }
    }

    /// Relays open in every worker (their counters are atomics).
    var relaysNow: Int { workers.reduce(0) { $0 + $1.ctx.counters.relaysNow } }

    /// Runs until stopped by a signal. Throws only what prevents starting (after stopping what
    /// had started).
    public func run() throws(DaemonError) {
        var services = Services()
        do {
            try start(&services)
        } catch {
            services.stopAll(deadline: Clock.monotonicNanoseconds())
            throw error
        }
        announceStart()
        do {
            try loop.run()
        } catch {
            logger.log(.error, "event loop failed: \(error)")
        }
        services.stopAll(deadline: stopStartedAt + config.daemon.shutdownTimeout.nanoseconds)
        logStopped()
    }

    /// The start, as an ordered list of services. Each is stopped (in reverse) at the stop, or when
    /// a later one fails to start. The control socket is bound early (a bad path fails the start
    /// before any listener binds) and stops last but the signals: the workers' last events reach
    /// its subscribers, and hooks still running at the stop can still use tcpopsctl. Hooks start
    /// before the workers that submit to them and stop after them.
    private func start(_ services: inout Services) throws(DaemonError) {
        // What systemd passed: listening sockets (socket activation, or stored by a previous
        // tcpopsd), relays handed over at a restart, the crash keep.
        let handed = ListenFDs.takeAll(stored: { FDStore.isStored($0) || CrashKeep.claims($0) })
        crashKeep = CrashKeep(stored: handed.stored.filter { CrashKeep.claims($0.name) },
                              enabled: config.daemon.crashSafe && FDStore.configuredSize != nil, logger: logger)
        if let k = crashKeep {
            shared.keepConids(in: k.header)
            hooks.keepHeader = k.header
            for w in workers { w.dispatcher.keepHeader = k.header }
            k.reportUndelivered()
        }
        // Worker 0's loop is the main thread's: what it holds goes last.
        services.add("worker 0") { [workers] _ in workers[0].finish() }
        try services.start("signals", { () throws(DaemonError) in
            do throws(SystemError) {
                signals = try SignalReader([SIGTERM, SIGINT, SIGHUP] + (Daemon.debugStall ? [SIGUSR2] : []), loop: loop) { [unowned self] in
                    self.signal($0)
                }
            } catch {
                throw .resource(error)
            }
        }, stop: { [unowned self] _ in signals = nil })
        let control: ControlServer
        do {
            control = try ControlServer(settings: config.daemon, logger: logger, metrics: metrics)
        } catch {
            throw .control(path: config.daemon.controlSocket, error)
        }
        self.control = control
        services.add("control socket") { [workers] _ in
            control.shutdown()
            for w in workers { w.dispatcher.observers.removeAll() }
        }
        try services.start("hook runner", { () throws(DaemonError) in
            do throws(SystemError) { try hooks.start() } catch { throw .resource(error) }
        }, stop: { [hooks] deadline in hooks.shutdown(deadline: max(deadline, Clock.monotonicNanoseconds())) })
        try services.start("workers", { () throws(DaemonError) in
            do throws(SystemError) {
                for w in workers.dropFirst() { try w.start(logger: logger) }
            } catch {
                throw .resource(error)
            }
        }, stop: { [workers] _ in
            // The other workers' loops stop (if they run), their threads end, then every loop's
            // relays, timers and queued jobs go; worker 0's last events go out.
            for w in workers.dropFirst() { w.loop.inbox.post { $0.stop() } }
            for w in workers.dropFirst() { w.finish() }
            workers[0].dispatcher.turnEnded()
        })
        // Socket activation: a passed socket serves the [[listener]] named by its
        // FileDescriptorName, else the one with its address; listeners left over bind as usual.
        let (carried, marker) = FDStore.read(handed.stored.filter { !CrashKeep.claims($0.name) })
        for r in handed.rejected { logger.log(.warning, "ignoring a socket passed by systemd: \(r)", id: .listener) }
        try services.start("listeners", { () throws(DaemonError) in try listen(passed: handed.sockets) },
                           stop: { [unowned self] _ in closeListeners() })
        if let at = config.metrics.listen {
            try services.start("metrics", { () throws(DaemonError) in
                if let error = serveMetrics(at) { throw .metrics(address: at, error) }
            }, stop: { [unowned self] _ in metricsServer?.shutdown() })
        }
        let keepHeader = crashKeep?.header
        for w in workers {
            w.post { w in w.dispatcher.observers.append { control.publish($0, keep: keepHeader) } }
        }
        if let k = crashKeep {
            if config.daemon.crashSafe && FDStore.configuredSize != nil { k.install(workers, relays: Int(min(fdLimit, 1 << 22) / 2)) }
            k.takeBack(workers, listener: { [unowned self] hash in
                listeners.values.first { KeepRecord.hash($0.settings.name) == hash }?.settings
                    ?? config.listeners.first { KeepRecord.hash($0.name) == hash }
            }, listenerAt: { [unowned self] local in
                listeners.values.map(\.settings).first { s in
                    s.listen == local || (s.listen.isWildcard && s.listen.port == local.port && s.listen.family == local.family)
                }
            })
        }
        fdStore = FDStore(logger: logger, shared: shared)
        FDStore.adopt(carried, marker: marker, workers: workers, shared: shared, logger: logger) { [unowned self] name in
            listeners[name]?.settings ?? config.listeners.first { $0.name == name }
        }
        fdStore?.announce(fdLimit: fdLimit)
        do {
            try control.start(workers: workers, hooks: hooks, generation: generation, keepHeader: crashKeep?.header)
        } catch {
            throw .resource(error)
        }
    }

    /// Binds every listener (or takes the socket systemd passed for it); the passed sockets no
    /// listener takes are closed. On a failure nothing listens and every passed socket is closed.
    private func listen(passed: [PassedSocket]) throws(DaemonError) {
        var passed = passed
        defer { for p in passed { closeFD(p.fd) } }
        for l in config.listeners {
            // By name (FileDescriptorName=), and then the addresses must agree: a socket used under
            // another address than the file says would be a listener the log misnames. Else by
            // address.
            if let named = passed.first(where: { $0.name == l.name }), named.address != l.listen {
                closeListeners()
                throw .passedSocket(listener: l.name, configured: l.listen, passed: named.address)
            }
            let match = passed.firstIndex { $0.name == l.name } ?? passed.firstIndex { $0.address == l.listen }
            let inherited = match.map { passed.remove(at: $0) }
            do {
                let group = try ListenerGroup(settings: l, workers: workers, passed: inherited?.fd)
                listeners[l.name] = group
                // Bound here: into the fd store, so that clients wait in its queue while no
                // tcpopsd runs (a crash, a restart) instead of being refused.
                if inherited == nil { storeListening(group.fd, l.listen) }
                if let inherited {
                    logger.log(.info, "listener \"\(l.name)\" uses the socket systemd passed as \"\(inherited.name)\" (\(inherited.address?.description ?? "?"))",
                               id: .listener, [("TCPOPS_LISTENER", l.name)])
                }
            } catch {
                closeListeners()
                throw .bind(listener: l.name, address: l.listen, error)
            }
        }
        for p in passed {
            if p.name.hasPrefix(Daemon.storedListening) {
                // A listener stored by a previous tcpopsd that the file no longer has.
                Notify.send("FDSTOREREMOVE=1\nFDNAME=\(p.name)")
                logger.log(.notice, "the listening socket on \(p.address?.description ?? "?") kept for a previous listener is no longer configured: closed", id: .listener)
                continue
            }
            logger.log(.warning, "socket passed by systemd as \"\(p.name)\" (\(p.address?.description ?? "?")) matches no [[listener]]: closed", id: .listener)
        }
    }

    /// Listening sockets tcpopsd bound are stored as `tl.` and their address (in hex) when the crash
    /// keep is on: they outlive the process, and the next one takes them back by address.
    static let storedListening = "tl."

    func storeListening(_ fd: Int32, _ at: SocketAddress) {
        guard crashKeep != nil, config.daemon.crashSafe else { return }
        if !Notify.send("FDSTORE=1\nFDPOLL=0\nFDNAME=\(Daemon.storedListening)\(CarriedSide.hex(at))", fds: [fd]) {
            logger.log(.warning, "systemd's fd store refused the listening socket on \(at): clients are refused while no tcpopsd runs", id: .listener)
        }
    }

    func unstoreListening(_ at: SocketAddress) {
        guard crashKeep != nil else { return }
        Notify.send("FDSTOREREMOVE=1\nFDNAME=\(Daemon.storedListening)\(CarriedSide.hex(at))")
    }

    private func closeListeners() {
        for l in listeners.values { l.close() }
        listeners.removeAll()
    }

    /// The lines and notifications of a start that succeeded: what listens, READY=1, the status
    /// line and the watchdog.
    private func announceStart() {
        // Each tracked connection is one fd; a relay with bytes in flight holds a pipe (two more).
        if let given = config.daemon.maxConnectionsGiven, UInt64(given) + 64 > fdLimit {
            logger.log(.warning, "max_connections \(given) exceeds what the open-files limit (\(fdLimit)) allows; "
                       + "past about \(fdLimit > 64 ? fdLimit - 64 : 0) connections, accepting pauses until fds are free",
                       [("TCPOPS_FD_LIMIT", String(fdLimit))])
        }
        for l in listeners.values {
            logger.log(.info, "listening on \(l.settings.listen) for \"\(l.settings.name)\", relaying to \(l.settings.upstreamText)", id: .listener,
                       [("TCPOPS_LISTENER", l.settings.name), ("TCPOPS_LOCAL", l.settings.listen.description)])
        }
        logger.log(.notice, "tcpopsd started with \(config.path): \(listeners.count) listener(s), \(workers.count) worker(s)", id: .started,
                   [("TCPOPS_WORKERS", String(workers.count))])
        Notify.send("READY=1\nSTATUS=\(statusLine())")
        scheduleStatus()
        if let usec = Notify.watchdogInterval() {
            // From the main loop, and only while every worker's loop turns too: if one stops
            // turning, systemd stops hearing from tcpopsd.
            let beat = usec * 1000 / 4
            for w in workers.dropFirst() {
                w.heartbeat.store(Clock.monotonicNanoseconds(), ordering: .relaxed)
                w.post { $0.beat(every: beat) }
            }
            scheduleWatchdog(every: usec * 1000 / 2, limit: usec * 1000)
            logger.log(.info, "watchdog: WATCHDOG=1 every \(usec / 2000) ms")
        }
    }

    private func logStopped() {
        let h = hooks.snapshot
        var counts: [EventKind: UInt64] = [:]
        for w in workers { for (k, n) in w.dispatcher.counts { counts[k, default: 0] += n } }
        let accepted = workers.reduce(0) { $0 + $1.ctx.counters.acceptedTotal }
        let bytes = workers.reduce(0) { $0 + $1.ctx.counters.relayedBytesTotal }
        logger.log(.notice, "tcpopsd stopped", id: .stopped, [
            ("TCPOPS_ACCEPTED", String(accepted)), ("TCPOPS_RELAYED_BYTES", String(bytes)),
            ("TCPOPS_EVENTS_CLOSED", String(counts[.closed] ?? 0)), ("TCPOPS_EVENTS_RESET", String(counts[.reset] ?? 0)),
            ("TCPOPS_EVENTS_TIMEOUT", String(counts[.timeout] ?? 0)),
            ("TCPOPS_HOOKS_RUN", String(h.started)), ("TCPOPS_HOOKS_FAILED", String(h.failed)),
            ("TCPOPS_HOOKS_KILLED", String(h.killed)), ("TCPOPS_HOOKS_DROPPED", String(h.dropped)),
        ])
    }

    /// Hands a new generation to every part, once each: the logger's level, the hook runner's
    /// thread, the control thread and every worker's loop (one post each).
    func apply(_ g: Generation) {
        generation = g
        logger.setLevel(g.logLevel)
        hooks.apply(g)
        control?.apply(g)
        for w in workers { w.post { $0.apply(g) } }
    }

    /// Serves /metrics on `at` (binding it here, so that a failure is reported where it happens),
    /// or stops serving (nil). The old socket stays until the new one is bound. Returns the error.
    @discardableResult
    func serveMetrics(_ at: SocketAddress?) -> SystemError? {
        guard at != metricsAddress else { return nil }
        guard let at else {
            metricsServer?.replace(listenFD: nil, address: nil)
            metricsAddress = nil
            logger.log(.info, "metrics: no longer served")
            return nil
        }
        do throws(SystemError) {
            let fd = try Socket.listen(at, backlog: 1024)  // a burst of connections waits for its turn, no SYN dropped
            if let server = metricsServer {
                server.replace(listenFD: fd, address: at)
            } else {
                let server = try MetricsServer(metrics: metrics, logger: logger)
                do {
                    try server.start(listenFD: fd, address: at)
                } catch {
                    closeFD(fd)
                    throw error
                }
                metricsServer = server
            }
            metricsAddress = at
            logger.log(.info, "metrics: serving GET /metrics on \(at)", [("TCPOPS_LOCAL", at.description)])
            return nil
        } catch {
            return error
        }
    }

    /// TCPOPSD_DEBUG_STALL=1 (tests only): SIGUSR2 stalls the main loop for good, as a bug that
    /// hangs it would, so that the watchdog's abort can be tested.
    static let debugStall = getenv("TCPOPSD_DEBUG_STALL").map { String(cString: $0) == "1" } ?? false

    private func signal(_ signo: Int32) {
        switch signo {
        case SIGUSR2 where Daemon.debugStall:
            logger.log(.warning, "TCPOPSD_DEBUG_STALL: SIGUSR2 stalls the main loop until the watchdog ends tcpopsd")
            while true { sleep(60) }
        case SIGHUP: reload()
        default: beginStop(signo)
        }
    }

    // MARK: status

    func statusLine() -> String {
        let state = stopping ? "draining" : "relaying"
        let accepted = workers.reduce(0) { $0 + $1.ctx.counters.acceptedTotal }
        return "\(state): \(relaysNow) relays, \(shared.connectionsNow) connections; \(accepted) accepted"
    }

    private func scheduleStatus() {
        loop.timers.schedule(at: loop.now + 1_000_000_000) { [weak self] in
            guard let self else { return }
            let s = self.statusLine()
            if s != self.lastStatus {
                self.lastStatus = s
                Notify.send("STATUS=\(s)")
            }
            self.scheduleStatus()
        }
    }

    /// WATCHDOG=1 every `ns`, as long as every other worker's loop beat within `limit` ns.
    private func scheduleWatchdog(every ns: UInt64, limit: UInt64) {
        let stuck = workers.dropFirst().filter { w in
            let beat = w.heartbeat.load(ordering: .relaxed)
            return loop.now > beat && loop.now - beat > limit
        }
        if stuck.isEmpty {
            Notify.send("WATCHDOG=1")
            watchdogWarned = false
        } else if !watchdogWarned {
            watchdogWarned = true
            logger.log(.error, "worker(s) \(stuck.map { String($0.index) }.joined(separator: ", ")) stopped turning: no WATCHDOG=1 until they do",
                       id: .stopping)
        }
        loop.timers.schedule(at: loop.now + ns) { [weak self] in self?.scheduleWatchdog(every: ns, limit: limit) }
    }

    private var watchdogWarned = false

    // MARK: stop

    private func beginStop(_ signo: Int32) {
        if stopping {
            logger.log(.notice, "second stop signal: closing \(relaysNow) relays now", id: .stopping)
            for w in workers { w.post { $0.ctx.closeAll(why: "a second stop signal") } }
            return
        }
        stopping = true
        stopStartedAt = loop.now
        exitDeadline = Clock.monotonicNanoseconds() + config.daemon.shutdownTimeout.nanoseconds + 500_000_000
        Notify.send("STOPPING=1\nSTATUS=\(statusLine())")
        for l in listeners.values { l.close() }
        listeners.removeAll()
        if fdStore != nil && relaysNow > 0 {
            stopOrRestart(signo)
            return
        }
        drain(signo)
    }

    /// With the fd store on, only a restart hands the relays over: on `systemctl stop` systemd
    /// empties the store, closing every stored socket without a word in the journal (and
    /// resetting each client still sending). The unit's `ExecStop=+tcpopsd --stop-hint` asks
    /// systemd (as root: under the sandbox the daemon cannot) which job it runs, and
    /// on a stop leaves `StopHint.file` in the runtime directory: then the relays drain as without
    /// the store. A restart, or a signal sent by hand (no mark), hands them over.
    private func stopOrRestart(_ signo: Int32) {
        if let mark = StopHint.path(), Files.remove(mark) {
            logger.log(.notice, "systemctl stop (not a restart): the relays drain instead of going to the fd store", id: .stopping)
            drain(signo)
            return
        }
        fdStore?.handOver(workers, relays: relaysNow, shutdownTimeout: config.daemon.shutdownTimeout) { [loop] in loop.stop() }
    }

    private func drain(_ signo: Int32) {
        logger.log(.notice, "stopping on signal \(signo): draining \(relaysNow) relays for up to \(config.daemon.shutdownTimeout.secondsText)", id: .stopping)
        waitForDrain()
        loop.timers.schedule(at: loop.now + config.daemon.shutdownTimeout.nanoseconds) { [unowned self] in
            self.logger.log(.notice, "shutdown_timeout reached: closing \(self.relaysNow) relays", id: .stopping)
            for w in self.workers { w.post { $0.ctx.closeAll() } }
        }
    }

    /// Stops once no worker has a relay left (looked at every 10 ms: their counts are atomics).
    private func waitForDrain() {
        if relaysNow == 0 {
            loop.stop()
            return
        }
        loop.timers.schedule(at: loop.now + 10_000_000) { [unowned self] in self.waitForDrain() }
    }
}
