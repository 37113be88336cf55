// The open-files limit: raised to the hard limit at start, as a daemon holding two fds per relay needs.
import Glibc

public enum FileLimit {
    /// Raises the soft RLIMIT_NOFILE to the hard one; returns the limit now in force.
    public static func raiseToHard() -> UInt64 {
        var lim = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return 1024 }
        if lim.rlim_cur < lim.rlim_max {
            var raised = lim
            raised.rlim_cur = lim.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(lim.rlim_cur)
    }
}
