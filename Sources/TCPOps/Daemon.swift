// Wires the parts together and owns the lifecycle: start (bind, hooks, READY=1), reload on SIGHUP,
// drain on SIGTERM/SIGINT bounded by shutdown_timeout, stop.
import Glibc
import TCPOpsConfig
import TCPOpsLoop
import TCPOpsPosix

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
    private var config: Configuration
    private let logger: Logger
    /// RelayWorker 0's loop: the main thread's, which also runs signals, reload, status and control.
    private let loop: EventLoop
    private let hooks: HookRunner
    /// The event loops relaying (workers[0] runs on the main thread).
    private let workers: [RelayWorker]
    private let shared: RelayShared
    private var listeners: [String: ListenerGroup] = [:]
    private var signals: SignalReader?
    private var control: ControlServer?
    private let metrics = DaemonMetrics()
    /// Serving [metrics] listen, when configured (started on first use, also by a reload).
    private var metricsServer: MetricsServer?
    private var metricsAddress: SocketAddress?
    private var stopping = false
    private var stopStartedAt: UInt64 = 0
    /// The open-files limit after raising it at start (max_connections' default fits it).
    private var fdLimit: UInt64 = 0
    /// When a stop must be over (monotonic ns): shutdown_timeout after the signal, and half a second
    /// for the last log entries and notify messages. nil until a stop began.
    public private(set) var exitDeadline: UInt64?
    private var lastStatus = ""
    /// The thread reading and resolving the file for a reload under way, and whether another
    /// SIGHUP came meanwhile.
    private var reloadWorker: PosixThread?
    private var reloadQueued = false
    /// Old listening sockets a reload retired that are not yet closed (RelayWorker's retire runs
    /// on every worker first); the next reload waits for them.
    private var retirementsInFlight = 0

    public init(config: Configuration, logger: Logger) throws(DaemonError) {
        self.config = config
        self.logger = logger
        shared = RelayShared(maxConnections: config.daemon.maxConnections, closedEventMode: config.events.closedEvent,
                             opened: config.events.opened)
        let count = config.daemon.workerCount
        do {
            loop = try EventLoop()
            hooks = try HookRunner(settings: .init(config.events, controlSocket: config.daemon.controlSocket), logger: logger,
                                   metrics: metrics.hooks)
            var workers: [RelayWorker] = []
            for i in 0..<count {
                workers.append(RelayWorker(index: i, count: count, loop: i == 0 ? loop : try EventLoop(), logger: logger, hooks: hooks,
                                      shared: shared, metrics: metrics))
            }
            self.workers = workers
        } catch {
            throw .resource(error)
        }
    }

    /// Relays open in every worker (their counters are atomics).
    private var relaysNow: Int { workers.reduce(0) { $0 + $1.ctx.counters.relaysNow } }

    /// Runs until stopped by a signal. Throws only what prevents starting.
    public func run() throws(DaemonError) {
        do {
            signals = try SignalReader([SIGTERM, SIGINT, SIGHUP], loop: loop) { [unowned self] in self.signal($0) }
        } catch {
            throw .resource(error)
        }
        let fdLimit = FileLimit.raiseToHard()
        self.fdLimit = fdLimit
        shared.apply(maxConnections: config.daemon.maxConnections(fdLimit: fdLimit), closedEventMode: config.events.closedEvent,
                     opened: config.events.opened)
        // Each tracked connection is one fd; a relay with bytes in flight holds a pipe (two more).
        if let given = config.daemon.maxConnectionsGiven, UInt64(given) + 64 > fdLimit {
            logger.log(.warning, "max_connections \(given) exceeds what the open-files limit (\(fdLimit)) allows; "
                       + "past about \(fdLimit > 64 ? fdLimit - 64 : 0) connections, accepting pauses until fds are free",
                       [("TCPOPS_FD_LIMIT", String(fdLimit))])
        }
        let control: ControlServer
        do {
            control = try ControlServer(settings: config.daemon, relayInbox: loop.inbox, logger: logger, metrics: metrics)
        } catch {
            throw .control(path: config.daemon.controlSocket, error)
        }
        self.control = control
        // Socket activation: a passed socket serves the [[listener]] named by its
        // FileDescriptorName, else the one with its address; listeners left over bind as usual.
        let handed = ListenFDs.takeAll()
        var passed = handed.sockets
        for r in handed.rejected { logger.log(.warning, "ignoring a socket passed by systemd: \(r)", id: .listener) }
        do {
            for w in workers.dropFirst() { try w.start(logger: logger) }
        } catch {
            teardown()
            throw .resource(error)
        }
        for l in config.listeners {
            // By name (FileDescriptorName=), and then the addresses must agree: a socket used under
            // another address than the file says would be a listener the log misnames. Else by
            // address.
            if let named = passed.first(where: { $0.name == l.name }), named.address != l.listen {
                for l in listeners.values { l.close() }
                for p in passed { closeFD(p.fd) }
                teardown()
                throw .passedSocket(listener: l.name, configured: l.listen, passed: named.address)
            }
            let match = passed.firstIndex { $0.name == l.name } ?? passed.firstIndex { $0.address == l.listen }
            let inherited = match.map { passed.remove(at: $0) }
            do {
                listeners[l.name] = try ListenerGroup(settings: l, workers: workers, passed: inherited?.fd)
                if let inherited {
                    logger.log(.info, "listener \"\(l.name)\" uses the socket systemd passed as \"\(inherited.name)\" (\(inherited.address?.description ?? "?"))",
                               id: .listener, [("TCPOPS_LISTENER", l.name)])
                }
            } catch {
                for l in listeners.values { l.close() }
                teardown()
                throw .bind(listener: l.name, address: l.listen, error)
            }
        }
        for p in passed {
            logger.log(.warning, "socket passed by systemd as \"\(p.name)\" (\(p.address?.description ?? "?")) matches no [[listener]]: closed", id: .listener)
            closeFD(p.fd)
        }
        if let at = config.metrics.listen {
            if let error = serveMetrics(at) {
                for l in listeners.values { l.close() }
                teardown()
                throw .metrics(address: at, error)
            }
        }
        for w in workers {
            w.post { w in w.dispatcher.observers.append { control.publish($0) } }
        }
        adopt(handed.carried, marker: handed.marker)
        if let size = fdStoreSize {
            let room = Daemon.carryRoom(storeSize: size)
            // A relay holds two fds (and a pipe's two while bytes are in flight): the fd limit's share.
            let fdRelays = Int(min(fdLimit, UInt64(Int.max))) / 2 - 64
            if room == 0 {
                logger.log(.warning, "TCPOPSD_FDSTORE=\(size): systemd's fd store of \(size) fd(s) carries no relay (two fds each, one for "
                           + "the conid counter): a restart closes every relay; set it to the unit's FileDescriptorStoreMax=", id: .started)
            } else {
                logger.log(room < fdRelays ? .notice : .info, "a restart carries up to \(room) relays in systemd's fd store (\(size) fds); "
                           + "more than that are closed at a restart (the oldest are carried)", id: .started,
                           [("TCPOPS_FDSTORE", String(size))])
            }
        }
        do {
            try hooks.start()
            try control.start(target: ControlTarget(workers: workers, hooks: hooks, subscriberCount: { control.subscriberCount },
                                                    listenerNames: { [unowned self] in Set(self.listeners.keys) }))
        } catch {
            for l in listeners.values { l.close() }
            teardown()
            throw .resource(error)
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
        do {
            try loop.run()
        } catch {
            logger.log(.error, "event loop failed: \(error)")
        }
        teardown(hooksUntil: stopStartedAt + config.daemon.shutdownTimeout.nanoseconds)
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

    /// Stops the hook runner (queued hooks may run until `hooksUntil`) and the control server,
    /// and drops every handler and closure that refers back to its owner through a loop.
    private func teardown(hooksUntil: UInt64 = 0) {
        // The other workers' loops stop (if they run), their threads end; then every loop's
        // relays, timers and queued jobs go.
        for w in workers.dropFirst() { w.loop.inbox.post { $0.stop() } }
        for w in workers.dropFirst() { w.finish() }
        workers[0].dispatcher.turnEnded()
        hooks.shutdown(deadline: max(hooksUntil, Clock.monotonicNanoseconds()))
        control?.shutdown()
        metricsServer?.shutdown()
        signals = nil
        for w in workers { w.dispatcher.observers.removeAll() }
        workers[0].finish()
    }

    /// Serves /metrics on `at` (binding it here, so that a failure is reported where it happens),
    /// or stops serving (nil). The old socket stays until the new one is bound. Returns the error.
    @discardableResult
    private func serveMetrics(_ at: SocketAddress?) -> SystemError? {
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

    private func signal(_ signo: Int32) {
        switch signo {
        case SIGHUP: reload()
        default: beginStop(signo)
        }
    }

    // MARK: status

    private func statusLine() -> String {
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

    // MARK: restart without loss

    /// The size of systemd's fd store for this service, when the unit hands relays over on a
    /// restart: the unit says it in TCPOPSD_FDSTORE (the same number as its
    /// FileDescriptorStoreMax=); systemd 254 and later say it in $FDSTORE, which wins. nil: off.
    private var fdStoreSize: Int? {
        guard getenv("NOTIFY_SOCKET") != nil, let v = getenv("TCPOPSD_FDSTORE"), let n = Int(String(cString: v)), n > 0 else { return nil }
        if let s = getenv("FDSTORE"), let real = Int(String(cString: s)), real >= 0 { return real }
        return n
    }

    /// How many relays the fd store can carry: two fds each, and one fd for the conid counter.
    private static func carryRoom(storeSize: Int) -> Int { max(0, storeSize - 1) / 2 }

    private var handoverEnabled: Bool { fdStoreSize != nil }

    /// Rebuilds the relays a previous tcpopsd stored (spread over the workers, one after another),
    /// then asks systemd to drop its copies.
    private func adopt(_ carried: [(fd: Int32, side: CarriedSide)], marker: ListenFDs.Marker?) {
        if let next = marker?.nextConid, next > 0 { shared.adopted(last: next - 1) }
        for name in marker?.names ?? [] { Notify.send("FDSTOREREMOVE=1\nFDNAME=\(name)") }
        var byPair: [UInt64: [(fd: Int32, side: CarriedSide)]] = [:]
        for c in carried { byPair[c.side.clientConid, default: []].append(c) }
        // The previous tcpopsd stored more than came back whole: systemd refused the rest (its store
        // is smaller than TCPOPSD_FDSTORE says), and those clients were closed with nothing logged.
        let whole = byPair.values.filter { p in p.contains { $0.side.side == .client } && p.contains { $0.side.side == .upstream } }.count
        if let stored = marker?.stored, stored > whole {
            logger.log(.warning, "the previous tcpopsd stored \(stored) relay(s) in systemd's fd store but \(whole) came back: systemd "
                       + "refused the rest (its FileDescriptorStoreMax= is smaller than TCPOPSD_FDSTORE=; set both to the same number)",
                       id: .started, [("TCPOPS_STORED", String(stored)), ("TCPOPS_ADOPTED", String(whole))])
        }
        guard !carried.isEmpty else { return }
        var adopted = 0
        for (_, pair) in byPair.sorted(by: { $0.key < $1.key }) {
            let client = pair.first { $0.side.side == .client }
            let upstream = pair.first { $0.side.side == .upstream }
            if let client, let upstream, let l = listeners[client.side.listener]?.settings ?? config.listeners.first(where: { $0.name == client.side.listener }) {
                shared.adopted(last: max(client.side.clientConid, client.side.upstreamConid))
                workers[adopted % workers.count].post { w in Relay.adopt(ctx: w.ctx, listener: l, client: client, upstream: upstream) }
                adopted += 1
            } else {
                logger.log(.warning, "a relay stored by the previous tcpopsd cannot be adopted (\(pair.map(\.side.name).joined(separator: ", "))): closed")
                for p in pair { closeFD(p.fd) }
            }
            for p in pair { Notify.send("FDSTOREREMOVE=1\nFDNAME=\(p.side.name)") }
        }
        logger.log(.notice, "adopted \(adopted) relay(s) from the previous tcpopsd", id: .started, [("TCPOPS_ADOPTED", String(adopted))])
    }

    /// Quiets every relay, waits (briefly) until what tcpopsd holds is written out, stores both
    /// sockets of each in the fd store, and stops. Each worker hands over its own relays. The store
    /// holds only so many (FileDescriptorStoreMax=; systemd refuses the rest without telling the
    /// sender): past that, the oldest relays are carried (the lowest client conids: conids grow
    /// with time, across restarts too) and the others are closed as at a stop, counted in the log.
    /// Oldest, because a long-lived connection (a registered phone, an MQTT session) is the
    /// costly one to lose, and a young one is the likeliest to end on its own soon.
    private func handOver() {
        let deadline = Clock.monotonicNanoseconds() + min(config.daemon.shutdownTimeout, 5).nanoseconds
        let storeSize = fdStoreSize ?? 0
        let room = Daemon.carryRoom(storeSize: storeSize)
        logger.log(.notice, "stopping: handing \(relaysNow) relay(s) to systemd's fd store (room for \(room))", id: .stopping)
        // The conid counter first, so that it has its place in the store whatever else fits; it is
        // replaced by the final count once the relays are stored.
        storeConidMarker(stored: nil)
        let candidates = Locked<[(worker: Int, conid: UInt64)]>([])
        everyWorker(workers, { w in
            let quiet = w.ctx.liveRelays.filter { $0.quiet() }
            candidates.withLock { $0 += quiet.map { (w.index, $0.client.conid) } }
        }, then: { [self] in
            let all = candidates.withLock { $0 }.sorted { $0.conid < $1.conid }
            var quota = [Int](repeating: 0, count: workers.count)
            for c in all.prefix(room) { quota[c.worker] += 1 }
            let counts = Locked((stored: 0, overflow: 0))
            let main = workers[0]
            everyWorker(workers, { w in
                Daemon.handOver(w, deadline: deadline, quota: quota[w.index], room: room) { stored, overflow in
                    counts.withLock {
                        $0.stored += stored
                        $0.overflow += overflow
                    }
                    main.post { _ in self.workerHandedOver(counts.withLock { $0 }, storeSize: storeSize) }
                }
            }, then: {})
        })
    }

    private var workersHandedOver = 0

    /// A worker finished its handover (on the main thread); the last one ends it.
    private func workerHandedOver(_ counts: (stored: Int, overflow: Int), storeSize: Int) {
        workersHandedOver += 1
        guard workersHandedOver == workers.count else { return }
        storeConidMarker(stored: counts.stored)
        logger.log(.notice, "handed \(counts.stored) relay(s) to systemd's fd store", id: .stopping, [("TCPOPS_STORED", String(counts.stored))])
        if counts.overflow > 0 {
            logger.log(.warning, "\(counts.overflow) relay(s) did not fit in systemd's fd store (\(storeSize) fds: room for "
                       + "\(Daemon.carryRoom(storeSize: storeSize)) relays) and were closed; the oldest were carried. "
                       + "Raise FileDescriptorStoreMax= and TCPOPSD_FDSTORE= together to carry more", id: .stopping,
                       [("TCPOPS_NOT_CARRIED", String(counts.overflow)), ("TCPOPS_FDSTORE", String(storeSize))])
        }
        loop.stop()
    }

    /// The conid counter travels in the store as a name (`tn.NEXT`, on a placeholder fd), and with
    /// the number of relays stored once it is known (`tn.NEXT.STORED`): the next tcpopsd never hands
    /// out a conid again, and can tell when systemd refused some of the relays.
    private var conidMarker: String?

    private func storeConidMarker(stored: Int?) {
        // At once, not through the notify thread: the new marker may need the old one's place.
        if let old = conidMarker { _ = Notify.send("FDSTOREREMOVE=1\nFDNAME=\(old)", fds: []) }
        conidMarker = nil
        let marker = Socket.placeholder()
        guard marker >= 0 else { return }
        let name = "tn.\(shared.peekNextConid)" + (stored.map { ".\($0)" } ?? "")
        if Notify.send("FDSTORE=1\nFDPOLL=0\nFDNAME=\(name)", fds: [marker]) { conidMarker = name }
        closeFD(marker)
    }

    /// On `w`'s thread: waits until each quieted relay is ready to carry (or the deadline), stores
    /// the `quota` oldest in the fd store (two fds each), closes the rest, and tells `done` how many
    /// it stored and how many it closed for want of room in the store.
    private static func handOver(_ w: RelayWorker, deadline: UInt64, quota: Int, room: Int, done: @escaping (Int, Int) -> Void) {
        let ctx = w.ctx
        func attempt() {
            let live = ctx.liveRelays
            if ctx.loop.now < deadline && !live.allSatisfy(\.readyToCarry) {
                ctx.loop.timers.schedule(at: ctx.loop.now + 20_000_000) { attempt() }
                return
            }
            var stored = 0, overflow = 0
            for r in live.sorted(by: { $0.client.conid < $1.client.conid }) {
                guard r.readyToCarry else {
                    r.end(failed: nil, reason: .local, why: "bytes still held at the handover deadline: closed")
                    continue
                }
                guard stored < quota else {
                    overflow += 1
                    r.end(failed: nil, reason: .local, why: "no room in systemd's fd store (\(room) relays): closed at the restart")
                    continue
                }
                let sides = r.carried
                var done: [String] = []
                for s in sides where Notify.send("FDSTORE=1\nFDPOLL=0\nFDNAME=\(s.name)", fds: [s.fd]) { done.append(s.name) }
                if done.count == sides.count {
                    r.handedOver()
                    stored += 1
                } else {
                    for n in done { Notify.send("FDSTOREREMOVE=1\nFDNAME=\(n)") }
                    r.end(failed: nil, reason: .local, why: "the fd store refused it: closed")
                }
            }
            done(stored, overflow)
        }
        attempt()
    }

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
        if handoverEnabled && relaysNow > 0 {
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
        handOver()
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

    // MARK: reload

    /// Brings the listening sockets to `wanted` without refusing or resetting a client: a socket
    /// whose address is still wanted is kept (under its new name and settings, for new
    /// connections); new addresses are bound before any old socket closes; old sockets are retired
    /// (their accept queues relayed first). A listener whose new address cannot be bound keeps its
    /// old socket and settings. Returns what could not be applied, one line each.
    private func applyListeners(_ wanted: [ListenerSettings], unusable: [String: String] = [:]) -> [String] {
        var byAddress: [SocketAddress: ListenerGroup] = [:]
        for l in listeners.values { byAddress[l.settings.listen] = l }
        var next: [String: ListenerGroup] = [:]
        var failures: [String] = []
        for s in wanted {
            if let why = unusable[s.name] {
                // Not applicable (no upstream address): the old listener stays as it was.
                let old = listeners[s.name].flatMap { byAddress.removeValue(forKey: $0.settings.listen) }
                if let old { next[s.name] = old }
                let keeps = old.map { "; it keeps its previous settings on \($0.settings.listen)" } ?? "; it is not listening"
                failures.append("listener \"\(s.name)\": \(why)\(keeps)")
                logger.log(.error, "reload: listener \"\(s.name)\": \(why)\(keeps)", id: .listener, [("TCPOPS_LISTENER", s.name)])
                continue
            }
            if let kept = byAddress.removeValue(forKey: s.listen) {
                let before = kept.settings
                kept.update(s)
                next[s.name] = kept
                if before != s {
                    logger.log(.info, "listener \"\(s.name)\" on \(s.listen): new settings apply to new connections", id: .listener,
                               [("TCPOPS_LISTENER", s.name), ("TCPOPS_LOCAL", s.listen.description)])
                }
                continue
            }
            do {
                let l = try ListenerGroup(settings: s, workers: workers)
                next[s.name] = l
                logger.log(.info, "listening on \(s.listen) for \"\(s.name)\", relaying to \(s.upstreamText)", id: .listener,
                           [("TCPOPS_LISTENER", s.name), ("TCPOPS_LOCAL", s.listen.description)])
            } catch {
                let old = listeners[s.name].flatMap { byAddress.removeValue(forKey: $0.settings.listen) }
                let keeps = old.map { "; it keeps listening on \($0.settings.listen) with its previous settings" } ?? "; it is not listening"
                let why = "listener \"\(s.name)\": cannot listen on \(s.listen): \(error)\(keeps)"
                if let old { next[s.name] = old }
                failures.append(why)
                logger.log(.error, "reload: \(why)", id: .listener, [("TCPOPS_LISTENER", s.name), ("TCPOPS_LOCAL", s.listen.description)])
            }
        }
        // Every address still wanted is listening: only now do the others go.
        for old in byAddress.values {
            let (name, address, logger) = (old.settings.name, old.settings.listen, logger)
            retirementsInFlight += 1
            old.retire { [unowned self] taken in
                logger.log(.info, "listener \"\(name)\" on \(address) removed\(taken > 0 ? " (\(taken) waiting client(s) relayed first)" : "")",
                           id: .listener, [("TCPOPS_LISTENER", name), ("TCPOPS_LOCAL", address.description)])
                self.retirementsInFlight -= 1
                if self.retirementsInFlight == 0 && self.reloadQueued && self.reloadWorker == nil {
                    self.reloadQueued = false
                    self.reload()
                }
            }
        }
        listeners = next
        return failures
    }

    /// SIGHUP: the file is read and its names resolved in a thread of its own (DNS and the disk may
    /// take their time; the loop does not wait), then applied here. A SIGHUP during a reload runs
    /// another one after it.
    private func reload() {
        guard !stopping else { return }
        // One at a time, and not before the last one's old listening sockets are closed: a reload
        // that moves a listener back to an address it just left must find it free (the old
        // socket is closed once every worker let go of it, which a busy worker can delay).
        if reloadWorker != nil || retirementsInFlight > 0 {
            reloadQueued = true
            return
        }
        Notify.send("RELOADING=1\nMONOTONIC_USEC=\(Clock.monotonicNanoseconds() / 1000)")
        let path = config.path
        let previous = config
        let inbox = loop.inbox
        let me = Handoff(self)
        let worker = PosixThread(name: "tcpops-reload")
        reloadWorker = worker
        do {
            try worker.start {
                let result: Result<ConfigResolver.Outcome, ConfigError>
                do throws(ConfigError) {
                    result = .success(try ConfigResolver.resolve(try ConfigLoader.load(path: path), mode: .reload(previous: previous)))
                } catch {
                    result = .failure(error)
                }
                inbox.post { _ in me.value.finishReload(result) }
            }
        } catch {
            reloadWorker = nil
            logger.log(.error, "reload failed: \(error)", id: .configInvalid)
            Notify.send("READY=1\nSTATUS=reload failed: \(error); \(statusLine())")
        }
    }

    private func finishReload(_ result: Result<ConfigResolver.Outcome, ConfigError>) {
        reloadWorker?.join()
        reloadWorker = nil
        guard !stopping else { return }
        defer {
            if reloadQueued {
                reloadQueued = false
                reload()
            }
        }
        let outcome: ConfigResolver.Outcome
        switch result {
        case .success(let o): outcome = o
        case .failure(let error):
            logger.log(.error, "reload failed, keeping the running configuration: \(error)", id: .configInvalid)
            metrics.reloaded("failed")
            Notify.send("READY=1\nSTATUS=reload failed: configuration invalid; \(statusLine())")
            return
        }
        for w in outcome.warnings { logger.log(.warning, "reload: \(w)", id: .configInvalid) }
        let next = outcome.config
        var failures = applyListeners(next.listeners, unusable: outcome.unusable)
        if let error = serveMetrics(next.metrics.listen), let at = next.metrics.listen {
            let keeps = metricsAddress.map { "; /metrics stays on \($0)" } ?? ""
            failures.append("[metrics]: cannot listen on \(at): \(error)\(keeps)")
            logger.log(.error, "reload: [metrics]: cannot listen on \(at): \(error)\(keeps)")
        }
        if next.daemon.controlSocket != config.daemon.controlSocket || next.daemon.controlMode != config.daemon.controlMode
            || next.daemon.controlGroup != config.daemon.controlGroup {
            logger.log(.notice, "control_socket, control_mode and control_group changes take effect at the next start")
        }
        config = next
        logger.setLevel(next.daemon.logLevel)
        shared.apply(maxConnections: next.daemon.maxConnections(fdLimit: fdLimit), closedEventMode: next.events.closedEvent,
                     opened: next.events.opened)
        if next.daemon.workerCount != workers.count {
            logger.log(.notice, "workers: \(workers.count) event loop(s) run; a change takes effect at the next start")
        }
        hooks.update(.init(next.events, controlSocket: control?.path ?? config.daemon.controlSocket))
        metrics.reloaded(failures.isEmpty ? "ok" : "partial")
        let summary = failures.isEmpty ? "reloaded" : "reloaded with errors (\(failures.count)): \(failures.joined(separator: "; "))"
        logger.log(failures.isEmpty ? .notice : .error, "configuration \(summary)", id: .started)
        Notify.send("READY=1\nSTATUS=\(summary); \(statusLine())")
    }
}
