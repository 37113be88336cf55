// The control socket: its own thread and event loop. It accepts tcpopsctl clients (checked with
// SO_PEERCRED), reads JSON lines, and plans each request here (ControlTarget): the workers are
// asked through their inboxes and their parts come back through this loop's. It also keeps the recent events and
// streams new ones to `events --follow` subscribers, cutting off any that fall behind. Clients are
// bounded in number and in the time they take to send a request; an idle one makes room for a new
// one; at the fd limit a reserved fd still lets one operator in.
import Glibc
import Synchronization
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix
import TCPOpsRelay
import TCPOpsProtocol

public final class ControlServer: Sendable {
    public struct Access: Sendable {
        public var daemonUID: UInt32
        public var groupID: UInt32?
        public var groupName: String?
    }

    private let runner: LoopThread<ControlWorker>
    private let subscribers: Atomic<Int>
    public let path: String

    /// Binds the socket now, so that a failure stops the start before READY=1.
    public init(settings: DaemonSettings, logger: Logger, metrics: DaemonMetrics? = nil) throws(SystemError) {
        let gid = settings.controlGroup.flatMap { UnixSocket.groupID($0) }
        let fd = try UnixSocket.listen(path: settings.controlSocket, mode: settings.controlMode, gid: gid)
        let loop: EventLoop
        do {
            loop = try EventLoop()
        } catch {
            closeFD(fd)
            throw error
        }
        path = settings.controlSocket
        let counter = Atomic<Int>(0)
        subscribers = counter
        let access = Access(daemonUID: geteuid(), groupID: gid, groupName: settings.controlGroup)
        runner = LoopThread(name: "tcpops-control",
                            worker: ControlWorker(loop: loop, listenFD: fd, access: access, logger: logger, metrics: metrics))
    }

    public var subscriberCount: Int { subscribers.load(ordering: .relaxed) }

    /// Serves requests about `workers`' connections (and the hook runner's counters), under
    /// `generation` until `apply` brings another.
    func start(workers: [RelayWorker], hooks: HookRunner?, generation: Generation, keepHeader: KeepHeader? = nil) throws(SystemError) {
        let worker = runner.unstartedWorker
        if let keepHeader {
            worker.keepHeader = keepHeader
            worker.nextSeq = max(1, keepHeader.nextSeq)
        }
        worker.target = ControlTarget(workers: workers, hooks: hooks, subscriberCount: { [unowned self] in self.subscriberCount },
                                      loop: worker.loop, generation: generation)
        let gauge = worker.metrics?.subscribers
        worker.onSubscribersChanged = { [self] n in
            self.subscribers.store(n, ordering: .relaxed)
            gauge?.set(to: Double(n))
        }
        try worker.listen()
        try runner.start()
    }

    /// Called on the relay's loop with a turn's events: one post to the control thread, where
    /// they are kept (the recent ones) and rendered, only when someone reads them.
    /// `keep`: the crash keep's header, which counts what the stream delivered (with nobody
    /// following it, a batch counts as delivered at once: no one waits for it).
    public func publish(_ events: [TCPEvent], keep: KeepHeader? = nil) {
        let batch = Handoff(events)
        // Nobody follows the stream: the batch only joins the recent events, and need not wake
        // the control thread (it is taken at its next turn, before any request is read).
        let quietly = subscriberCount == 0
        if quietly { keep?.streamed(UInt64(events.count)) }
        runner.post(quietly: quietly) { $0.broadcast(batch.value, counted: quietly) }
    }

    /// A reload's generation reaches the control thread (the listeners' names).
    public func apply(_ g: Generation) {
        runner.post { $0.target?.generation = g }
    }

    public func shutdown() {
        runner.shutdown()  // (one that never ran is torn down here)
        unlink(path)
    }
}

/// Lives on the control thread only.
final class ControlWorker: LoopWorker {
    static let maxClients = 256
    /// A client must complete a request line this long after connecting or after its last answer
    /// (a byte now and then does not extend it).
    static let requestTimeout: UInt64 = 10_000_000_000
    /// How long a client being closed may take to read its last line and hang up.
    static let lingerTimeout: UInt64 = 1_000_000_000
    static let subscriberBacklog = 1 << 20
    static let recentEvents = 1000

    let loop: EventLoop
    let listenFD: Int32
    let access: ControlServer.Access
    let logger: Logger
    var target: ControlTarget?
    var onSubscribersChanged: ((Int) -> Void)?
    var clients: [UInt64: ControlClient] = [:]
    /// Clients not being closed, the ones `maxClients` bounds.
    var active = 0
    var nextID: UInt64 = 1
    var recent: [TCPEvent] = []
    var recentHead = 0
    var listener: ListenHandler?
    private var backoff: AcceptPause?
    /// An fd held in reserve (/dev/null): at the fd limit it is closed so that one more control
    /// client can be accepted, and taken again once that client is gone.
    private var reserve: Int32 = -1
    /// Lines a local user can repeat per connection: one each per 5 s, with the count.
    private lazy var refusalLog = LogLimiter(loop: loop, logger: logger)
    private lazy var evictionLog = LogLimiter(loop: loop, logger: logger)
    private lazy var cutOffLog = LogLimiter(loop: loop, logger: logger)

    let metrics: DaemonMetrics?

    init(loop: EventLoop, listenFD: Int32, access: ControlServer.Access, logger: Logger, metrics: DaemonMetrics?) {
        self.metrics = metrics
        self.loop = loop
        self.listenFD = listenFD
        self.access = access
        self.logger = logger
        reserve = Socket.placeholder()
    }

    final class ListenHandler: EventHandler {
        unowned let worker: ControlWorker
        init(_ w: ControlWorker) { worker = w }
        override func handleEvents(_ events: UInt32) { worker.acceptAll() }
    }

    func listen() throws(SystemError) {
        let h = ListenHandler(self)
        listener = h
        backoff = AcceptPause(loop: loop, fd: listenFD, what: "control socket accept") { [logger] in logger.log(.warning, $0, id: .listener) }
        try loop.register(listenFD, mask: Events.read, handler: h)
    }

    func started() { sweep() }

    func loopFailed(_ error: SystemError) { logger.log(.error, "control loop failed: \(error)") }

    /// Closes every client and the socket, and drops what refers back to this worker.
    func finish() {
        for c in Array(clients.values) { drop(c) }
        backoff?.close()
        loop.unregister(listenFD)
        closeFD(listenFD)
        closeFD(reserve)
        target = nil
        listener = nil
        backoff = nil
        onSubscribersChanged = nil
        loop.close()
    }

    func stop() { loop.stop() }

    /// Closes clients past their request deadline (not subscribers, not waiting for an answer)
    /// and lingering ones that did not hang up.
    private func sweep() {
        let now = loop.now
        for c in Array(clients.values) {
            if c.closing {
                if c.pending == 0 && now - c.closingSince > ControlWorker.lingerTimeout { drop(c) }
            } else if !c.subscribed && c.pending == 0 && now - c.requestSince > ControlWorker.requestTimeout {
                c.closeAfterFlush(error: "idle: no complete request line within \(ControlWorker.requestTimeout / 1_000_000_000) s: closed")
            }
        }
        loop.timers.schedule(at: now + 1_000_000_000) { [weak self] in self?.sweep() }
    }

    func acceptAll() {
        for _ in 0..<64 {
            guard let (fd, reserved) = acceptOne() else { return }
            let c = ControlClient(id: nextID, fd: fd, worker: self)
            c.usesReserve = reserved
            nextID += 1
            do {
                try loop.register(fd, mask: Events.read, handler: c)
            } catch {
                closeFD(fd)
                if reserved { takeReserve() }
                continue
            }
            clients[c.id] = c
            metrics?.controlClients.set(to: Double(clients.count))
            active += 1
            if let why = refusal(fd) {
                refusalLog.log(.warning, "control socket: refused a client: \(why)")
                c.closeAfterFlush(error: "permission denied: \(why)")
                continue
            }
            if active > ControlWorker.maxClients && !makeRoom(for: c) {
                c.closeAfterFlush(error: "too many control clients (\(ControlWorker.maxClients)), all busy")
            }
        }
    }

    /// One accepted fd, and whether the reserve was spent on it; nil when none is waiting or
    /// accepting has to pause.
    private func acceptOne() -> (Int32, Bool)? {
        var spent = false
        while true {
            do {
                guard let a = try Socket.accept(listenFD) else { return nil }
                return (a.fd, spent)
            } catch {
                if [ECONNABORTED, EPROTO].contains(error.errno) { continue }
                if (error.errno == EMFILE || error.errno == ENFILE) && reserve >= 0 && !spent {
                    closeFD(reserve)
                    reserve = -1
                    spent = true
                    continue
                }
                if spent { takeReserve() }
                backoff?.pause(error)
                return nil
            }
        }
    }

    /// Takes the reserve fd back once the client it was spent on is gone (retried until it can).
    private func takeReserve() {
        guard reserve < 0 else { return }
        reserve = Socket.placeholder()
        if reserve < 0 {
            loop.timers.schedule(at: loop.now + AcceptPause.interval) { [weak self] in self?.takeReserve() }
        }
    }

    /// At the client limit: the longest-idle client (no request under way, not subscribed) is
    /// closed so that `newcomer` can be served; false when every other client is busy.
    private func makeRoom(for newcomer: ControlClient) -> Bool {
        let idle = clients.values.filter { $0 !== newcomer && !$0.closing && !$0.subscribed && $0.pending == 0 }
        guard let oldest = idle.min(by: { ($0.input.isEmpty ? 0 : 1, $0.requestSince) < ($1.input.isEmpty ? 0 : 1, $1.requestSince) }) else {
            return false
        }
        evictionLog.log(.notice, "control socket: \(ControlWorker.maxClients) clients: closing the longest idle to make room")
        oldest.closeAfterFlush(error: "closed to make room for another control client (\(ControlWorker.maxClients) at most)")
        return true
    }

    /// nil when the peer may use the socket: root, the daemon's own user, or control_group members.
    private func refusal(_ fd: Int32) -> String? {
        guard let cred = UnixSocket.credentials(fd) else { return "cannot read the peer's credentials" }
        if cred.uid == 0 || cred.uid == access.daemonUID { return nil }
        if let g = access.groupID, UnixSocket.isMember(uid: cred.uid, gid: cred.gid, of: g) { return nil }
        let group = access.groupName.map { " nor in group \($0)" } ?? ""
        return "uid \(cred.uid) (pid \(cred.pid)) is not root, not the daemon's user\(group)"
    }

    func request(_ c: ControlClient, _ line: [UInt8]) {
        let ticket = c.ticket()
        let req: ControlRequest
        switch ControlRequest.decode(line) {
        case .success(let r): req = r
        case .failure(.message(let m, let id)):
            c.answer(ticket, [ControlAnswer.error(id, m)])
            c.requestSince = loop.now
            return
        }
        if req.cmd == "events" {
            subscribe(c, req, ticket)
            return
        }
        if req.cmd == "stats", req.format == "openmetrics", let metrics {
            // Rendered here, off the relay's loop: the registry is safe from any thread.
            c.answer(ticket, [ControlAnswer.ok(req.id, [("result", .string(String(decoding: metrics.render(), as: UTF8.self)))])])
            c.requestSince = loop.now
            return
        }
        guard let target else { return }
        c.pending += 1
        let clientID = c.id
        target.execute(req) { [unowned self] answer in self.answered(clientID, ticket, answer) }
    }

    func answered(_ id: UInt64, _ ticket: UInt64, _ answer: String) {
        guard let c = clients[id] else { return }
        c.pending -= 1
        c.requestSince = loop.now
        c.answer(ticket, [answer])
    }

    private func subscribe(_ c: ControlClient, _ req: ControlRequest, _ ticket: UInt64) {
        if req.follow == true {
            c.answer(ticket, [ControlAnswer.ok(req.id, [("follow", .bool(true))])])
            c.subscribed = true
            onSubscribersChanged?(clients.values.filter(\.subscribed).count)
            return
        }
        let events = Array(recent[recentHead...] + recent[..<recentHead])
        c.answer(ticket, [ControlAnswer.ok(req.id, [("count", .int(Int64(events.count)))])] + events.map { $0.jsonLine() })
        c.requestSince = loop.now
    }

    /// Event numbers for the stream: given here, in the order the events reach the control
    /// thread (each worker's in the order it raised them, so a conid's events stay in order).
    var nextSeq: UInt64 = 1
    /// The crash keep's header: the seq continues there, and what reached subscribers is counted.
    var keepHeader: KeepHeader?

    func broadcast(_ events: [TCPEvent], counted: Bool = false) {
        var events = events
        for i in events.indices {
            events[i].seq = nextSeq
            nextSeq += 1
        }
        if let h = keepHeader {
            h.nextSeq = nextSeq
            if !counted { h.streamed(UInt64(events.count)) }
        }
        for event in events {
            if recent.count < ControlWorker.recentEvents {
                recent.append(event)
            } else {
                recent[recentHead] = event
                recentHead = (recentHead + 1) % ControlWorker.recentEvents
            }
        }
        guard clients.values.contains(where: { $0.subscribed && !$0.closing }) else { return }
        for event in events {
            let line = event.jsonLine()
            for c in clients.values where c.subscribed && !c.closing {
                if c.backlog > ControlWorker.subscriberBacklog {
                    cutOffLog.log(.warning, "control socket: events subscriber fell \(c.backlog) bytes behind: cut off")
                    c.cutOff()
                    continue
                }
                c.send(line)
            }
        }
    }

    /// A client starts closing: it no longer counts against the limit. Whether it may linger
    /// (wait for the peer to hang up after its last line, so that the peer reads that line rather
    /// than a reset): not under a flood of closing clients, which would hold as many fds.
    func closing(_ c: ControlClient) -> Bool {
        active -= 1
        return clients.count - active <= ControlWorker.maxClients
    }

    func drop(_ c: ControlClient) {
        guard clients.removeValue(forKey: c.id) != nil else { return }
        metrics?.controlClients.set(to: Double(clients.count))
        if !c.closing { active -= 1 }
        loop.unregister(c.fd)
        closeFD(c.fd)
        if c.usesReserve { takeReserve() }
        if c.subscribed { onSubscribersChanged?(clients.values.filter(\.subscribed).count) }
    }
}
