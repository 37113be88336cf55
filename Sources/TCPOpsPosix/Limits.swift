// The open-files limit (raised to the hard limit at start, as a daemon holding two fds per relay needs; the
// most fds the process can have), and address space reserved without committing memory.
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

    /// The most fds this process can ever have open: the hard RLIMIT_NOFILE, which cannot exceed
    /// fs.nr_open (read when the limit says "infinity" or cannot be read).
    public static func most() -> Int {
        let text = (try? Files.read("/proc/sys/fs/nr_open")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let nrOpen = Int(text.filter(\.isNumber)) ?? (1 << 20)
        var lim = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0, lim.rlim_max <= UInt(Int32.max) else { return nrOpen }
        return max(Int(lim.rlim_max), nrOpen)
    }
}

public enum Memory {
    /// Address space for `bytes`, zeroed, of which only the pages touched cost memory (an anonymous
    /// MAP_NORESERVE mapping); nil when it cannot be had.
    public static func reserve(bytes: Int) -> UnsafeMutableRawPointer? {
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { return nil }
        return p
    }
}
