// Backing off a listening socket whose accept ran out of fds (EMFILE/ENFILE) or memory: epoll is
// level-triggered, so a listener left in the interest set would wake the loop at once, forever.
// Its interest is dropped for 100 ms at a time, and one warning per 5 s counts the pauses. Used
// by the relay listeners and the control socket alike.
import Glibc
import TCPOpsLoop
import TCPOpsPosix

final class AcceptPause {
    private unowned let loop: EventLoop
    private let fd: Int32
    private let logger: Logger
    private let what: String
    private let fields: [Logger.Field]
    /// The interest to restore after a pause.
    private let mask: UInt32
    private(set) var paused = false
    private var closed = false
    private var lastLog: UInt64 = 0
    private var pausesSinceLog = 0
    static let interval: UInt64 = 100_000_000
    static let logEvery: UInt64 = 5_000_000_000

    /// `what` names the socket in the warning ("accept on 127.0.0.1:5060").
    init(loop: EventLoop, fd: Int32, logger: Logger, what: String, fields: [Logger.Field] = [], mask: UInt32 = Events.read) {
        self.mask = mask
        self.loop = loop
        self.fd = fd
        self.logger = logger
        self.what = what
        self.fields = fields
    }

    /// Whether an accept error is a shortage worth pausing for.
    static func isShortage(_ e: Int32) -> Bool { [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(e) }

    /// Stops accepting for a moment; `resume` (if given) runs when reading is wanted again.
    func pause(_ error: SystemError, resume: (() -> Void)? = nil) {
        guard !paused, !closed else { return }
        paused = true
        // Out of epoll (not MOD to 0: an EPOLLEXCLUSIVE registration cannot be modified).
        loop.park(fd)
        pausesSinceLog += 1
        let now = loop.now
        if lastLog == 0 || now - lastLog >= AcceptPause.logEvery {
            logger.log(.warning, "\(what) paused for 100 ms: \(error) (\(pausesSinceLog) pause(s) since the last report)", id: .listener, fields)
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
    func close() { closed = true }
}
