// The only way into a loop from another thread: a locked queue of jobs and an eventfd that wakes
// epoll_wait. Jobs run on the loop's thread, in the order they were posted, and get the loop as
// their argument. The eventfd is written only when the queue is not already signalled (one
// write per wake-up, however many jobs come meanwhile); a quiet post does not wake the loop at
// all until `quietLimit` jobs wait: its jobs run at the start of the loop's next turn, whatever
// wakes it (for work nobody waits for, such as keeping the control socket's recent events).
import CShims
import Glibc
import Synchronization
import TCPOpsPosix

public final class Inbox: Sendable {
    public typealias Job = @Sendable (EventLoop) -> Void
    package let fd: Int32
    private struct Queue {
        package var jobs: [Job] = []
        /// The eventfd was written and not yet read by a drain.
        package var signalled = false
    }
    private let queue = Locked(Queue())
    /// Jobs were posted quietly and wait for the loop's next turn.
    private let quiet = Atomic<Bool>(false)
    package static let quietLimit = 64

    package init() throws(SystemError) {
        fd = try sys("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) }
    }

    deinit { closeFD(fd) }

    /// Callable from any thread: the loop wakes up for `job`.
    public func post(_ job: @escaping Job) {
        let wake = queue.withLock { q -> Bool in
            q.jobs.append(job)
            defer { q.signalled = true }
            return !q.signalled
        }
        if wake { signal() }
    }

    /// Callable from any thread: `job` runs at the loop's next turn, which it does not cause
    /// unless `quietLimit` jobs are waiting.
    public func postQuietly(_ job: @escaping Job) {
        let wake = queue.withLock { q -> Bool in
            q.jobs.append(job)
            guard !q.signalled, q.jobs.count >= Inbox.quietLimit else { return false }
            q.signalled = true
            return true
        }
        quiet.store(true, ordering: .releasing)
        if wake { signal() }
    }

    private func signal() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Drops jobs nobody will run (the loop is done).
    package func discard() {
        queue.withLock { $0.jobs.removeAll() }
    }

    /// The eventfd fired: runs every waiting job.
    package func drain(_ loop: EventLoop) {
        // Read before taking the jobs: a post after the read either finds the queue signalled
        // (and its job is taken below) or writes again (and wakes the next turn).
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
        run(loop, resetSignal: true)
    }

    /// At the start of a turn: runs quietly posted jobs (and any others waiting with them).
    package func drainQuiet(_ loop: EventLoop) {
        guard quiet.load(ordering: .acquiring) else { return }
        quiet.store(false, ordering: .relaxed)
        run(loop, resetSignal: false)
    }

    private func run(_ loop: EventLoop, resetSignal: Bool) {
        var jobs: [Job] = []
        queue.withLock { q in
            swap(&jobs, &q.jobs)
            if resetSignal { q.signalled = false }
        }
        for job in jobs { job(loop) }
    }
}
