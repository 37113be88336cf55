// A thread that turns one event loop for one worker object (the hook runner, the control socket,
// the metrics endpoint): the worker lives on that thread only; other threads reach it through
// the loop's inbox. One lifecycle for all of them: set up, start, post jobs, stop and join.
import TCPOpsPosix

/// What a loop thread runs: an object that owns its event loop and is used on that thread only.
public protocol LoopWorker: AnyObject, SendableMetatype {
    var loop: EventLoop { get }
    /// On the thread, before the loop's first turn.
    func started()
    /// The loop failed (epoll itself): say so.
    func loopFailed(_ error: SystemError)
    /// After the loop stopped, on its thread; or, when the thread never ran, on the caller's:
    /// close what it holds and drop what refers back to it.
    func finish()
}

extension LoopWorker {
    public func started() {}
}

public final class LoopThread<Worker: LoopWorker>: Sendable {
    private let thread: PosixThread
    private let worker: Handoff<Worker>
    public let inbox: Inbox

    /// `name` is the thread's, as `top -H` shows it ("tcpops-hooks").
    public init(name: String, worker: Worker) {
        thread = PosixThread(name: name)
        self.worker = Handoff(worker)
        inbox = worker.loop.inbox
    }

    /// The worker, for its setup before `start` (nothing else may touch it from outside).
    public var unstartedWorker: Worker {
        precondition(!thread.isStarted, "the worker belongs to its thread once started")
        return worker.value
    }

    public func start() throws(SystemError) {
        let worker = self.worker
        try thread.start {
            let w = worker.value
            w.started()
            do throws(SystemError) {
                try w.loop.run()
            } catch {
                w.loopFailed(error)
            }
            w.finish()
        }
    }

    public var isStarted: Bool { thread.isStarted }

    /// Runs `job` with the worker on its thread (quietly: at the loop's next turn, without waking it).
    public func post(quietly: Bool = false, _ job: @escaping @Sendable (Worker) -> Void) {
        let worker = self.worker
        if quietly {
            inbox.postQuietly { _ in job(worker.value) }
        } else {
            inbox.post { _ in job(worker.value) }
        }
    }

    /// Asks the worker to stop (`stop` runs on its thread; by default the loop simply stops) and
    /// waits for the thread. A thread that never ran: the worker finishes here.
    public func shutdown(_ stop: @escaping @Sendable (Worker) -> Void = { $0.loop.stop() }) {
        if thread.isStarted {
            post(stop)
            thread.join()
        } else {
            worker.value.finish()
        }
    }
}
