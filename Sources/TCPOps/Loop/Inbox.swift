// The only way into a loop from another thread: a locked queue of jobs and an eventfd that wakes
// epoll_wait. Jobs run on the loop's thread and get the loop as their argument.
import CShims
import Glibc

public final class Inbox: Sendable {
    public typealias Job = @Sendable (EventLoop) -> Void
    let fd: Int32
    private let queue = Locked<[Job]>([])

    init() throws(SystemError) {
        fd = try sys("eventfd") { eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) }
    }

    deinit { closeFD(fd) }

    /// Callable from any thread.
    public func post(_ job: @escaping Job) {
        queue.withLock { $0.append(job) }
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Drops jobs nobody will run (the loop is done).
    func discard() {
        queue.withLock { $0.removeAll() }
    }

    func drain(_ loop: EventLoop) {
        var value: UInt64 = 0
        _ = read(fd, &value, 8)
        var jobs: [Job] = []
        queue.withLock { swap(&jobs, &$0) }
        for job in jobs { job(loop) }
    }
}
