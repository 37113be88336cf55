// The hook runner: its own thread and event loop. Events arrive through the loop's inbox; at most
// `max_running_hooks` children run at once, each killed at `hook_timeout`; what they print, how
// they end and every drop past `queue_limit` is logged. The relay's loop never waits on it.
import Glibc
import Synchronization
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix
import TCPOpsRelay

public final class HookRunner: HookSink {
    public typealias Settings = HookSettings

    struct Job: Sendable {
        let argv: [String]
        let environment: [String]
        let event: EventKind
        let conid: UInt64
    }

    public struct Counters: Sendable {
        public var started: UInt64 = 0
        public var failed: UInt64 = 0
        public var killed: UInt64 = 0
        public var dropped: UInt64 = 0
    }

    private let logger: Logger
    private let waiting = Atomic<Int>(0)
    private let counters = Locked(Counters())
    private let lastDropLog = Atomic<UInt64>(0)
    private let runner: LoopThread<Worker>

    private let metrics: HookMetrics?
    /// The crash keep's header, which counts hook runs queued and started (set before start, read
    /// by the workers and the runner's thread after).
    nonisolated(unsafe) var keepHeader: KeepHeader?

    public init(settings: Settings, logger: Logger, metrics: HookMetrics? = nil) throws(SystemError) {
        self.logger = logger
        self.metrics = metrics
        runner = LoopThread(name: "tcpops-hooks", worker: Worker(loop: try EventLoop(), logger: logger, settings: settings))
    }

    public func start() throws(SystemError) {
        runner.unstartedWorker.owner = self
        try runner.start()
    }

    /// A new generation's settings reach the runner's thread (max_running_hooks, hook_timeout);
    /// the relays submit with their own worker's generation.
    public func apply(_ g: Generation) {
        let s = g.hooks
        runner.post { $0.settings = s }
    }

    public var snapshot: Counters { counters.withLock { $0 } }

    /// Hook runs waiting for a slot now (at most queue_limit).
    public var queued: Int { waiting.load(ordering: .relaxed) }

    /// Hooks' PATH: the folder tcpopsd itself runs from first (tcpopsctl is installed beside it, or
    /// built beside it: a hook's `tcpopsctl lifetime "$TCPOPS_CONID" 30` finds it), then the system's.
    static let path: String = {
        let system = "/usr/sbin:/usr/bin:/sbin:/bin"
        guard let exe = Files.ownExecutable(), let slash = exe.lastIndex(of: "/") else { return "PATH=\(system)" }
        let dir = String(exe[..<slash])
        if dir.isEmpty || system.split(separator: ":").contains(Substring(dir)) { return "PATH=\(system)" }
        return "PATH=\(dir):\(system)"
    }()

    /// Queues the hooks of one event, as the settings `s` of the submitting worker's generation
    /// say. Called on the relay's loop; never blocks on a child.
    public func submit(_ event: TCPEvent, _ s: Settings) {
        let commands = s.commands(for: event.kind)
        guard !commands.isEmpty else { return }
        let env = event.hookEnvironment + [HookRunner.path, "TCPOPS_CONTROL_SOCKET=\(s.controlSocket)"]
        for argv in commands {
            if waiting.load(ordering: .relaxed) >= s.queueLimit {
                let total = counters.withLock { c -> UInt64 in
                    c.dropped += 1
                    return c.dropped
                }
                metrics?.dropped.increment()
                let now = Clock.monotonicNanoseconds()
                if now - lastDropLog.load(ordering: .relaxed) >= 1_000_000_000 || total == 1 {
                    lastDropLog.store(now, ordering: .relaxed)
                    logger.log(.warning, "hook queue full (queue_limit \(s.queueLimit)): event dropped", id: .hookDropped,
                               [("TCPOPS_HOOK_EVENT", event.kind.rawValue), ("TCPOPS_CONID", String(event.conid)),
                                ("TCPOPS_HOOKS_DROPPED", String(total))])
                }
                continue
            }
            waiting.add(1, ordering: .relaxed)
            keepHeader?.hookQueued()
            let job = Job(argv: argv, environment: env, event: event.kind, conid: event.conid)
            runner.post { $0.enqueue(job) }
        }
    }

    /// Lets queued and running hooks finish until `deadline` (monotonic ns), kills what is left, joins.
    public func shutdown(deadline: UInt64) {
        runner.shutdown { $0.stop(deadline: deadline) }  // (a runner that never ran finishes here)
        let c = snapshot
        if c.dropped > 0 {
            logger.log(.warning, "hooks dropped in all: \(c.dropped)", id: .hookDropped, [("TCPOPS_HOOKS_DROPPED", String(c.dropped))])
        }
    }

    fileprivate func dequeued() {
        waiting.subtract(1, ordering: .relaxed)
        keepHeader?.hookStarted()
    }
    fileprivate enum Outcome { case started, failed, killed, dropped(UInt64) }

    /// Counts a hook's outcome, in the totals and in the metrics.
    fileprivate func record(_ o: Outcome) {
        counters.withLock { c in
            switch o {
            case .started: c.started += 1
            case .failed: c.failed += 1
            case .killed: c.killed += 1
            case .dropped(let n): c.dropped += n
            }
        }
        switch o {
        case .started: metrics?.run.increment()
        case .failed: metrics?.failed.increment()
        case .killed: metrics?.killed.increment()
        case .dropped(let n): metrics?.dropped.increment(by: Int64(n))
        }
    }

    fileprivate func ran(for ns: UInt64) { metrics?.duration.record(.nanoseconds(Int64(ns))) }
}

/// Lives on the runner's thread only.
private final class Worker: LoopWorker {
    let loop: EventLoop
    let logger: Logger
    var owner: HookRunner?
    /// max_running_hooks and hook_timeout of the newest generation.
    var settings: HookRunner.Settings
    var queue = HookQueue<HookRunner.Job>()
    var running: [Int32: RunningHook] = [:]  // by pidfd
    var stopDeadline: UInt64?
    /// A hook that cannot start would otherwise say so for every event.
    lazy var startFailureLog = LogLimiter(loop: loop, logger: logger)

    init(loop: EventLoop, logger: Logger, settings: HookRunner.Settings) {
        self.loop = loop
        self.logger = logger
        self.settings = settings
    }

    func loopFailed(_ error: SystemError) { logger.log(.error, "hook runner loop failed: \(error)") }

    /// Drops what refers back to this worker (its loop's handlers, timers and jobs).
    func finish() {
        owner = nil
        running.removeAll()
        loop.close()
    }

    func enqueue(_ job: HookRunner.Job) {
        queue.append(job)
        startWaiting()
    }

    func stop(deadline: UInt64) {
        stopDeadline = deadline
        loop.timers.schedule(at: deadline) { [self] in
            for hook in running.values { hook.kill(reason: "shutdown") }
            let left = queue.removeAll()
            if left > 0 {
                owner?.record(.dropped(UInt64(left)))
                logger.log(.warning, "\(left) queued hooks not run: shutdown", id: .hookDropped)
                for _ in 0..<left { owner?.dequeued() }
            }
            finishIfDone()
        }
        finishIfDone()
    }

    func finishIfDone() {
        if stopDeadline != nil && running.isEmpty && queue.isEmpty { loop.stop() }
    }

    func startWaiting() {
        guard let owner else { return }
        while running.count < settings.maxRunning, let job = queue.popFirst() {
            owner.dequeued()
            start(job, timeout: settings.timeout)
        }
        finishIfDone()
    }

    func start(_ job: HookRunner.Job, timeout: Double) {
        let child: Spawn.Child
        do {
            child = try Spawn.run(argv: job.argv, environment: job.environment)
        } catch {
            owner?.record(.failed)
            startFailureLog.log(.error, "hook could not start: \(error)", id: .hookFinished, fields(job))
            return
        }
        owner?.record(.started)
        let hook = RunningHook(job: job, child: child, worker: self)
        running[child.pidfd] = hook
        do {
            try loop.register(child.pidfd, mask: Events.read, handler: hook.exitHandler)
            try loop.register(child.output, mask: Events.read, handler: hook.outputHandler)
        } catch {
            logger.log(.error, "hook runner cannot watch a child: \(error)", id: .hookFinished, fields(job))
        }
        hook.timer = loop.timers.schedule(at: loop.now + timeout.nanoseconds) { [weak hook] in
            hook?.kill(reason: "hook_timeout \(timeout) s")
        }
    }

    func fields(_ job: HookRunner.Job) -> [Logger.Field] {
        // TCPOPS_HOOK_EVENT, not TCPOPS_EVENT: `journalctl TCPOPS_EVENT=tcp:reset` finds the events
        // themselves, not also each hook's output and exit (TCPOPS_CONID=N still finds everything
        // about connection N, its hooks too).
        [("TCPOPS_HOOK", job.argv.joined(separator: " ")), ("TCPOPS_HOOK_EVENT", job.event.rawValue), ("TCPOPS_CONID", String(job.conid))]
    }

    func finished(_ hook: RunningHook) {
        guard let result = Spawn.reap(hook.child.pid) else { return }
        if let t = hook.timer { loop.timers.cancel(t) }
        hook.drainOutput()
        loop.unregister(hook.child.pidfd)
        loop.unregister(hook.child.output)
        closeFD(hook.child.pidfd)
        closeFD(hook.child.output)
        running[hook.child.pidfd] = nil

        var f = fields(hook.job)
        for line in hook.outputLines() {
            logger.log(.info, "hook output: \(line)", id: .hookFinished, f)
        }
        owner?.ran(for: loop.now - hook.startedAt)
        let durationMs = (loop.now - hook.startedAt) / 1_000_000
        f.append(("TCPOPS_HOOK_DURATION_MS", String(durationMs)))
        if let why = hook.killedFor {
            owner?.record(.killed)
            logger.log(.warning, "hook killed after \(durationMs) ms (\(why))", id: .hookKilled, f + [("TCPOPS_HOOK_SIGNAL", "SIGKILL")])
        } else if result.exited {
            f.append(("TCPOPS_HOOK_STATUS", String(result.value)))
            if result.value == 0 {
                logger.log(.info, "hook exited with status 0", id: .hookFinished, f)
            } else {
                owner?.record(.failed)
                logger.log(.warning, "hook exited with status \(result.value)", id: .hookFinished, f)
            }
        } else {
            owner?.record(.failed)
            logger.log(.warning, "hook killed by signal \(result.value)", id: .hookFinished, f + [("TCPOPS_HOOK_SIGNAL", String(result.value))])
        }
        startWaiting()
    }
}

private final class RunningHook {
    let job: HookRunner.Job
    let child: Spawn.Child
    unowned let worker: Worker
    let startedAt: UInt64
    var output: [UInt8] = []
    var outputOpen = true
    var killedFor: String?
    var timer: TimerQueue.ID?
    var exitHandler: Handler!
    var outputHandler: Handler!

    static let outputLimit = 8192

    final class Handler: EventHandler {
        let body: (UInt32) -> Void
        init(_ body: @escaping (UInt32) -> Void) { self.body = body }
        override func handleEvents(_ events: UInt32) { body(events) }
    }

    init(job: HookRunner.Job, child: Spawn.Child, worker: Worker) {
        self.job = job
        self.child = child
        self.worker = worker
        startedAt = worker.loop.now
        exitHandler = Handler { [unowned self] _ in self.worker.finished(self) }
        outputHandler = Handler { [unowned self] _ in self.drainOutput() }
    }

    func drainOutput() {
        guard outputOpen else { return }
        if !Spawn.readAvailable(child.output, into: &output, limit: RunningHook.outputLimit) {
            outputOpen = false
            worker.loop.unregister(child.output)
        }
    }

    func kill(reason: String) {
        guard killedFor == nil else { return }
        killedFor = reason
        Spawn.killGroup(child.pid)
    }

    func outputLines() -> [String] {
        guard !output.isEmpty else { return [] }
        var lines = String(decoding: output, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        if output.count >= RunningHook.outputLimit { lines.append("[output truncated at \(RunningHook.outputLimit) bytes]") }
        return lines
    }
}

/// The hook runner's waiting jobs, first in, first out: popped in O(1), the array's front given
/// back once more than half of it was popped (a burst does not keep its memory, nor shift the rest
/// at every pop). queue_limit is applied before, when an event is submitted.
struct HookQueue<Job> {
    private var items: [Job] = []
    private var head = 0

    var count: Int { items.count - head }
    var isEmpty: Bool { head == items.count }
    /// What the array holds now, popped slots included (for the tests of its compaction).
    var storage: Int { items.count }

    mutating func append(_ job: Job) { items.append(job) }

    mutating func popFirst() -> Job? {
        guard head < items.count else { return nil }
        let job = items[head]
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: items.count <= 1024)
            head = 0
        } else if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        return job
    }

    /// Empties the queue; returns how many jobs it held.
    mutating func removeAll() -> Int {
        let n = count
        items.removeAll()
        head = 0
        return n
    }
}
