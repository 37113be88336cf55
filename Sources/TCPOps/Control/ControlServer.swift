// The control socket: its own thread and event loop. It accepts tcpopsctl clients (checked with
// SO_PEERCRED), reads JSON lines, and hands each request to the relay's loop through that loop's
// inbox; the answer comes back through this loop's inbox. It also keeps the recent events and
// streams new ones to `events --follow` subscribers, cutting off any that fall behind.
import Glibc
import Synchronization

public final class ControlServer: Sendable {
    public struct Access: Sendable {
        public var daemonUID: UInt32
        public var groupID: UInt32?
        public var groupName: String?
    }

    private let thread = PosixThread()
    private let inbox: Inbox
    private let worker: Handoff<ControlWorker>
    private let subscribers: Atomic<Int>
    public let path: String

    /// Binds the socket now, so that a failure stops the start before READY=1.
    public init(settings: DaemonSettings, relayInbox: Inbox, logger: Logger) throws(SystemError) {
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
        inbox = loop.inbox
        let counter = Atomic<Int>(0)
        subscribers = counter
        let access = Access(daemonUID: geteuid(), groupID: gid, groupName: settings.controlGroup)
        worker = Handoff(ControlWorker(loop: loop, listenFD: fd, access: access, relayInbox: relayInbox, logger: logger))
    }

    public var subscriberCount: Int { subscribers.load(ordering: .relaxed) }

    /// `target` is used only on the relay's loop, inside jobs posted to its inbox.
    public func start(target: ControlTarget) throws(SystemError) {
        let worker = self.worker
        worker.value.target = Handoff(target)
        worker.value.selfInbox = inbox
        try worker.value.listen()
        try thread.start { [self] in
            worker.value.onSubscribersChanged = { [self] n in self.subscribers.store(n, ordering: .relaxed) }
            worker.value.run()
        }
    }

    /// Called on the relay's loop for every event.
    public func publish(_ event: TCPEvent) {
        let line = event.json(seq: event.seq, unixMicros: event.unixMicros).text
        let worker = self.worker
        inbox.post { _ in worker.value.broadcast(line) }
    }

    public func shutdown() {
        let worker = self.worker
        inbox.post { _ in worker.value.stop() }
        thread.join()
        unlink(path)
    }
}

/// Lives on the control thread only.
private final class ControlWorker {
    static let maxClients = 256
    static let idleTimeout: UInt64 = 10_000_000_000
    static let subscriberBacklog = 1 << 20
    static let recentEvents = 1000

    let loop: EventLoop
    let listenFD: Int32
    let access: ControlServer.Access
    let relayInbox: Inbox
    let logger: Logger
    var target: Handoff<ControlTarget>?
    var selfInbox: Inbox?
    var onSubscribersChanged: ((Int) -> Void)?
    var clients: [UInt64: ControlClient] = [:]
    var nextID: UInt64 = 1
    var recent: [String] = []
    var recentHead = 0
    var listener: ListenHandler?

    init(loop: EventLoop, listenFD: Int32, access: ControlServer.Access, relayInbox: Inbox, logger: Logger) {
        self.loop = loop
        self.listenFD = listenFD
        self.access = access
        self.relayInbox = relayInbox
        self.logger = logger
    }

    final class ListenHandler: EventHandler {
        unowned let worker: ControlWorker
        init(_ w: ControlWorker) { worker = w }
        func handleEvents(_ events: UInt32) { worker.acceptAll() }
    }

    func listen() throws(SystemError) {
        let h = ListenHandler(self)
        listener = h
        try loop.register(listenFD, mask: Events.read, handler: h)
    }

    func run() {
        sweep()
        do {
            try loop.run()
        } catch {
            logger.log(.error, "control loop failed: \(error)")
        }
        for c in Array(clients.values) { drop(c) }
        loop.unregister(listenFD)
        closeFD(listenFD)
    }

    func stop() { loop.stop() }

    /// Closes clients idle past the timeout (not subscribers, not waiting for an answer).
    private func sweep() {
        let now = loop.now
        for c in Array(clients.values) where !c.subscribed && c.pending == 0 && now - c.lastActivity > ControlWorker.idleTimeout {
            c.closeAfterFlush(error: "idle for 10 s: closed")
        }
        loop.timers.schedule(at: now + 1_000_000_000) { [weak self] in self?.sweep() }
    }

    func acceptAll() {
        for _ in 0..<64 {
            let fd: Int32
            do {
                guard let a = try Socket.accept(listenFD) else { return }
                fd = a.fd
            } catch {
                if error.errno == EMFILE || error.errno == ENFILE {
                    logger.log(.warning, "control socket: \(error)")
                }
                return
            }
            let c = ControlClient(id: nextID, fd: fd, worker: self)
            nextID += 1
            do {
                try loop.register(fd, mask: Events.read, handler: c)
            } catch {
                closeFD(fd)
                continue
            }
            clients[c.id] = c
            if clients.count > ControlWorker.maxClients {
                c.closeAfterFlush(error: "too many control clients (\(ControlWorker.maxClients))")
                continue
            }
            if let why = refusal(fd) {
                logger.log(.warning, "control socket: refused a client: \(why)")
                c.closeAfterFlush(error: "permission denied: \(why)")
            }
        }
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
        let req: ControlRequest
        switch ControlRequest.decode(line) {
        case .success(let r): req = r
        case .failure(.message(let m, let id)):
            c.send(ControlAnswer.error(id, m))
            return
        }
        if req.cmd == "events" {
            subscribe(c, req)
            return
        }
        guard let target, let selfInbox else { return }
        c.pending += 1
        let clientID = c.id
        let me = Handoff(self)
        relayInbox.post { _ in
            let answer = target.value.execute(req)
            selfInbox.post { _ in me.value.answered(clientID, answer) }
        }
    }

    func answered(_ id: UInt64, _ answer: String) {
        guard let c = clients[id] else { return }
        c.pending -= 1
        c.send(answer)
    }

    private func subscribe(_ c: ControlClient, _ req: ControlRequest) {
        if req.follow == true {
            c.send(ControlAnswer.ok(req.id, [("follow", .bool(true))]))
            c.subscribed = true
            onSubscribersChanged?(clients.values.filter(\.subscribed).count)
            return
        }
        let lines = Array(recent[recentHead...] + recent[..<recentHead])
        c.send(ControlAnswer.ok(req.id, [("count", .int(Int64(lines.count)))]))
        for l in lines { c.send(l) }
    }

    func broadcast(_ line: String) {
        if recent.count < ControlWorker.recentEvents {
            recent.append(line)
        } else {
            recent[recentHead] = line
            recentHead = (recentHead + 1) % ControlWorker.recentEvents
        }
        for c in clients.values where c.subscribed {
            if c.backlog > ControlWorker.subscriberBacklog {
                logger.log(.warning, "control socket: events subscriber fell \(c.backlog) bytes behind: cut off")
                c.cutOff()
                continue
            }
            c.send(line)
        }
    }

    func drop(_ c: ControlClient) {
        guard clients.removeValue(forKey: c.id) != nil else { return }
        loop.unregister(c.fd)
        closeFD(c.fd)
        if c.subscribed { onSubscribersChanged?(clients.values.filter(\.subscribed).count) }
    }
}

private final class ControlClient: EventHandler {
    let id: UInt64
    let fd: Int32
    unowned let worker: ControlWorker
    var input: [UInt8] = []
    var output: [UInt8] = []
    var outputSent = 0
    var subscribed = false
    var pending = 0
    var closing = false
    var lastActivity: UInt64

    init(id: UInt64, fd: Int32, worker: ControlWorker) {
        self.id = id
        self.fd = fd
        self.worker = worker
        lastActivity = worker.loop.now
    }

    var backlog: Int { output.count - outputSent }

    func handleEvents(_ events: UInt32) {
        lastActivity = worker.loop.now
        if events & Events.write != 0 { flush() }
        if events & (Events.read | Events.hangup | Events.error) != 0 && !closing { readLines() }
    }

    private func readLines() {
        while true {
            switch UnixSocket.read(fd, appendingTo: &input, max: 65536) {
            case .moved:
                var start = 0
                while let nl = input[start...].firstIndex(of: 10) {
                    let line = Array(input[start..<nl])
                    start = nl + 1
                    if !line.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 9 }) { worker.request(self, line) }
                    if closing { return }
                }
                input.removeFirst(start)
                if input.count > ControlProtocol.maxLine {
                    input = []
                    closeAfterFlush(error: "request longer than \(ControlProtocol.maxLine) bytes")
                    return
                }
            case .wouldBlock:
                return
            case .endOfFile, .failed:
                if pending == 0 && backlog == 0 || subscribed { worker.drop(self) } else { closing = true; worker.loop.modify(fd, mask: Events.write) }
                return
            }
        }
    }

    func send(_ line: String) {
        output.append(contentsOf: line.utf8)
        output.append(10)
        flush()
    }

    func flush() {
        while outputSent < output.count {
            switch Socket.send(fd, output[outputSent...]) {
            case .moved(let n): outputSent += n
            case .wouldBlock:
                worker.loop.modify(fd, mask: (closing ? 0 : Events.read) | Events.write)
                return
            case .endOfFile, .failed:
                worker.drop(self)
                return
            }
        }
        output.removeAll(keepingCapacity: output.count < 65536)
        outputSent = 0
        if closing && pending == 0 {
            worker.drop(self)
        } else {
            worker.loop.modify(fd, mask: closing ? 0 : Events.read)
        }
    }

    /// Sends an error line, then closes once it is written.
    func closeAfterFlush(error: String) {
        closing = true
        send(ControlAnswer.error(nil, error))
    }

    /// A subscriber too far behind: its backlog is dropped, one error line is tried without
    /// waiting, and it is closed.
    func cutOff() {
        var line = Array(ControlAnswer.error(nil, "events subscriber too slow: cut off").utf8)
        line.append(10)
        _ = Socket.send(fd, line[...])
        worker.drop(self)
    }
}
