// One event loop relaying: its thread, loop, relays, timers, pipe pool and event dispatcher.
// Nothing on the per-event path is shared with another worker (conids and the max_connections
// count are atomics in RelayShared). RelayWorker 0 runs on the main thread, beside the daemon's own
// work (signals, reload, status, the control target); the others each on a thread of their own.
// Every listening socket is registered in every worker's epoll with EPOLLEXCLUSIVE, so the kernel
// wakes one worker per new connection.
import Glibc
import Synchronization
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix

public final class RelayWorker {
    public let index: Int
    public let loop: EventLoop
    public let ctx: RelayContext
    public let dispatcher: EventDispatcher
    /// This worker's acceptor of each listening socket, by the socket's fd (own thread only).
    private var listeners: [Int32: Listener] = [:]
    private let thread: PosixThread
    /// The loop's clock at its last turn, for the watchdog (written by the worker's own timer).
    package let heartbeat = Atomic<UInt64>(0)
    /// More than one worker: listening sockets are shared and registered exclusively.
    package let exclusive: Bool

    package init(index: Int, count: Int, loop: EventLoop, logger: Logger, hooks: HookSink?, shared: RelayShared, generation: Generation,
         metrics: DaemonMetrics) {
        self.index = index
        thread = PosixThread(name: "tcpops-worker\(index)")
        self.loop = loop
        exclusive = count > 1
        dispatcher = EventDispatcher(logger: logger, hooks: hooks)
        ctx = RelayContext(loop: loop, logger: logger, events: dispatcher, shared: shared, generation: generation, metrics: metrics,
                           idlePipes: PipePool.idleShare(pools: count), growPipes: PipePool.growShare(pools: count))
        ctx.workerCount = count
        dispatcher.attach(loop)
    }

    /// Runs the loop on a thread of its own (not for worker 0, whose loop the main thread runs).
    package func start(logger: Logger) throws(SystemError) {
        precondition(index > 0)
        let me = Handoff(self)
        try thread.start {
            do {
                try me.value.loop.run()
            } catch {
                logger.log(.error, "worker \(me.value.index): event loop failed: \(error)")
            }
        }
    }

    /// Stops and joins the thread (its loop must have been told to stop), then frees what the
    /// loop holds. For worker 0, only the freeing.
    package func finish() {
        if index > 0 { thread.join() }
        for l in listeners.values { l.detach() }
        listeners.removeAll()
        dispatcher.turnEnded()
        ctx.shutdown()
        loop.close()
    }

    /// Runs `job` on this worker's thread.
    package func post(_ job: @escaping (RelayWorker) -> Void) {
        let h = Handoff((self, job))
        loop.inbox.post { _ in h.value.1(h.value.0) }
    }

    // MARK: listening sockets (on this worker's thread)

    package func attach(_ fd: Int32, _ settings: ListenerSettings) throws(SystemError) {
        guard listeners[fd] == nil else { return }
        listeners[fd] = try Listener(settings: settings, ctx: ctx, fd: fd, exclusive: exclusive)
    }

    /// A reload's generation, on this worker's thread: its acceptors take their listener's new
    /// settings (for new connections), and what the relays read follows it.
    package func apply(_ g: Generation) {
        ctx.apply(g)
        for l in listeners.values {
            if let s = g.listeners[l.settings.listen] { l.update(s) }
        }
    }

    /// Stops accepting on `fd` (the socket stays open: its group closes it).
    package func detach(_ fd: Int32) { listeners.removeValue(forKey: fd)?.detach() }

    /// Accepts and relays what waits on `fd`, then stops accepting on it. Returns how many.
    package func retire(_ fd: Int32) -> Int { listeners.removeValue(forKey: fd)?.retire() ?? 0 }

    /// Beats every `every` ns: the watchdog hears the daemon only while every loop turns.
    package func beat(every ns: UInt64) {
        heartbeat.store(loop.now, ordering: .relaxed)
        loop.timers.schedule(at: loop.now + ns) { [weak self] in self?.beat(every: ns) }
    }
}

/// Counts the workers that are done with a job, on the main thread.
private final class Countdown: @unchecked Sendable {
    // @unchecked: touched on the main thread only (ticks are posted there).
    private var left: Int
    private let done: () -> Void
    package init(_ n: Int, _ done: @escaping () -> Void) {
        left = n
        self.done = done
    }
    package func tick() {
        left -= 1
        if left == 0 { done() }
    }
}

/// Runs `job` on every worker's thread, then `done` on worker 0's (the main) thread. With one
/// worker everything runs at once, inside the call.
package func everyWorker(_ workers: [RelayWorker], _ job: @escaping (RelayWorker) -> Void, then done: @escaping () -> Void) {
    let countdown = Countdown(workers.count, done)
    let mainInbox = workers[0].loop.inbox
    let work = Handoff(job)
    for w in workers.dropFirst() {
        w.post { w in
            work.value(w)
            mainInbox.post { _ in countdown.tick() }
        }
    }
    job(workers[0])
    countdown.tick()
}

/// One listening socket and its acceptor in every worker. Lives on the main thread.
package final class ListenerGroup {
    package private(set) var settings: ListenerSettings
    package let fd: Int32
    private let workers: [RelayWorker]
    private var closed = false

    /// Binds (or takes `passed`, a socket systemd handed over) and starts accepting in every worker.
    package init(settings: ListenerSettings, workers: [RelayWorker], passed: Int32? = nil) throws(SystemError) {
        self.settings = settings
        self.workers = workers
        if let passed {
            fd = passed
        } else {
            fd = try Socket.listen(settings.listen)
        }
        // Accepted sockets inherit TCP_NODELAY from the listening one (a passed socket too): one
        // setsockopt per listener instead of one per connection.
        Socket.setNoDelay(fd)
        do {
            try workers[0].attach(fd, settings)
        } catch {
            closeFD(fd)
            throw error
        }
        let (fd, logger) = (fd, workers[0].ctx.logger)
        for w in workers.dropFirst() {
            w.post { w in
                do {
                    try w.attach(fd, settings)
                } catch {
                    logger.log(.error, "worker \(w.index): cannot accept on \(settings.listen): \(error)", id: .listener)
                }
            }
        }
    }

    /// New settings for the same address (a reload), as the main thread knows them; the workers'
    /// acceptors take them with the reload's generation. Relays already running keep theirs.
    package func update(_ s: ListenerSettings) { settings = s }

    /// The address is no longer wanted: the other workers stop accepting on it, then worker 0
    /// accepts and relays what still waits in the queue and closes it. `done` is told how many
    /// clients it took from the queue (at once, with one worker).
    package func retire(_ done: @escaping (Int) -> Void) {
        guard !closed else { return }
        closed = true
        let fd = fd
        everyWorker(workers, { w in if w.index > 0 { w.detach(fd) } }, then: { [workers] in
            let taken = workers[0].retire(fd)
            closeFD(fd)
            done(taken)
        })
    }

    /// Stops accepting everywhere and closes the socket (once every worker let go of it).
    package func close() {
        guard !closed else { return }
        closed = true
        let fd = fd
        everyWorker(workers, { $0.detach(fd) }, then: { closeFD(fd) })
    }
}
