// Signals through a signalfd, read in the loop like any other fd.
import CShims
import Glibc
import TCPOpsPosix

public final class SignalReader: EventHandler {
    package let fd: Int32
    private let onSignal: (Int32) -> Void

    /// Blocks `signals` for the calling thread (threads started later inherit the mask) and
    /// watches them on `loop`. SIGPIPE is ignored: splice() to a reset socket must fail with
    /// EPIPE, not kill the daemon.
    public init(_ signals: [Int32], loop: EventLoop, onSignal: @escaping (Int32) -> Void) throws(SystemError) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        let r = pthread_sigmask(SIG_BLOCK, &set, nil)
        if r != 0 { throw SystemError("pthread_sigmask", r) }
        signal(SIGPIPE, SIG_IGN)
        fd = try sys("signalfd") { signalfd(-1, &set, Int32(SFD_NONBLOCK | SFD_CLOEXEC)) }
        self.onSignal = onSignal
        super.init()
        try loop.register(fd, mask: Events.read, handler: self)
    }

    /// Blocks the daemon's signals and ignores SIGPIPE, before anything else runs (the fallback of
    /// tcpopsd's .preinit_array entry in CEarly).
    public static func blockEarly() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        if let v = getenv("TCPOPSD_DEBUG_STALL"), String(cString: v) == "1" { sigaddset(&set, SIGUSR2) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    public override func handleEvents(_ events: UInt32) {
        var info = signalfd_siginfo()
        while read(fd, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
            onSignal(Int32(info.ssi_signo))
        }
    }
}
