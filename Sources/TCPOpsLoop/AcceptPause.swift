// Backing off a listening socket whose accept ran out of fds (EMFILE/ENFILE) or memory: epoll is
// level-triggered, so a listener left in the interest set would wake the loop at once, forever.
// Its interest is dropped for 100 ms at a time, and one report per 5 s counts the pauses. Used
// by the relay listeners, the control socket and the metrics endpoint alike.
import Glibc
import TCPOpsPosix

public final class AcceptPause {
    private unowned let loop: EventLoop
    private let fd: Int32
    /// Told, at most once per `logEvery`, what paused and how often: the caller logs it.
    private let report: (String) -> Void
    private let what: String
    /// The interest to restore after a pause.
    private let mask: UInt32
    public private(set) var paused = false
    private var closed = false
    private var lastLog: UInt64 = 0
    private var pausesSinceLog = 0
    public static let interval: UInt64 = 100_000_000
    public static let logEvery: UInt64 = 5_000_000_000

    /// `what` names the socket in the report ("accept on 127.0.0.1:5060").
    public init(loop: EventLoop, fd: Int32, what: String, mask: UInt32 = Events.read, report: @escaping (String) -> Void) {
        self.mask = mask
        self.loop = loop
        self.fd = fd
        self.what = what
        self.report = report
    }

    /// Whether an accept error is a shortage worth pausing for.
    public static func isShortage(_ e: Int32) -> Bool { [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(e) }

    /// Stops accepting for a moment; `resume` (if given) runs when reading is wanted again.
    public func pause(_ error: SystemError, resume: (() -> Void)? = nil) {
        guard !paused, !closed else { return }
        paused = true
        // Out of epoll (not MOD to 0: an EPOLLEXCLUSIVE registration cannot be modified).
        loop.park(fd)
        pausesSinceLog += 1
        let now = loop.now
        if lastLog == 0 || now - lastLog >= AcceptPause.logEvery {
            report("\(what) paused for 100 ms: \(error) (\(pausesSinceLog) pause(s) since the last report)")
            lastLog = now
            pausesSinceLog = 0
        }
        loop.timers.schedule(at: now + AcceptPause.interval) { [weak self] in
            guard let self, !self.closed else { return }
            self.paused = false
            self.loop.modify(self.fd, mask: self.mask)
            resume?()
        }
    }

    /// The socket is being closed: a pending resume must not touch its fd number.
    public func close() { closed = true }
}
