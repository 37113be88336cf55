// The control socket's Unix-domain calls: listen on a path (refusing to take over a live one),
// peer credentials, group membership, plain reads.
import CShims
import Glibc

public enum UnixSocket {
    public struct Credentials: Sendable {
        public let pid: Int32
        public let uid: UInt32
        public let gid: UInt32
    }

    /// The longest path a Unix socket address holds (sun_path's 108 bytes, one for the NUL).
    public static let maxPath = 107

    /// Callers check the length first (`connect` and `listen` do): a longer path is never cut.
    package static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var sa = sockaddr_un()
        sa.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8.prefix(maxPath))
        withUnsafeMutableBytes(of: &sa.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// Listens on `path` with `mode` and group `gid`. A stale socket file is replaced; one that a
    /// live process still answers on is not (EADDRINUSE).
    public static func listen(path: String, mode: UInt32, gid: UInt32?) throws(SystemError) -> Int32 {
        guard path.utf8.count <= maxPath else { throw SystemError("bind(\(path))", ENAMETOOLONG) }
        let dir = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !dir.isEmpty && access(dir, F_OK) != 0 {
            try sys("mkdir(\(dir))") { mkdir(dir, 0o755) }
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else { throw SystemError("bind(\(path)): exists and is not a socket", EEXIST) }
            let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
            let live = withAddress(path) { Glibc.connect(probe, $0, $1) } == 0
            closeFD(probe)
            if live { throw SystemError("bind(\(path)): another process is serving it", EADDRINUSE) }
            unlink(path)
        }
        let fd = try sys("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0) }
        do {
            try sys("bind(\(path))") { withAddress(path) { Glibc.bind(fd, $0, $1) } }
            try sys("chmod(\(path))") { chmod(path, mode_t(mode)) }
            if let gid { try sys("chown(\(path))") { chown(path, uid_t.max, gid) } }
            try sys("listen(\(path))") { Glibc.listen(fd, 128) }
        } catch {
            closeFD(fd)
            throw error
        }
        return fd
    }

    /// Connects (blocking) to a control socket. With a `timeout` (seconds, 0 = none), connect, send
    /// and every read give up after it with EAGAIN (a full backlog, a daemon that does not answer).
    public static func connect(path: String, timeout: Double = 0) throws(SystemError) -> Int32 {
        guard path.utf8.count <= maxPath else { throw SystemError("connect(\(path))", ENAMETOOLONG) }
        let fd = try sys("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0) }
        do {
            if timeout > 0 {
                try setTimeout(fd, SO_SNDTIMEO, timeout)
                try setTimeout(fd, SO_RCVTIMEO, timeout)
            }
            try sys("connect(\(path))") { withAddress(path) { Glibc.connect(fd, $0, $1) } }
        } catch {
            closeFD(fd)
            throw error
        }
        return fd
    }

    /// SO_RCVTIMEO / SO_SNDTIMEO in seconds (0 = wait forever).
    public static func setTimeout(_ fd: Int32, _ option: Int32, _ seconds: Double) throws(SystemError) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - seconds.rounded(.down)) * 1_000_000))
        try sys("setsockopt(timeout)") { setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size)) }
    }

    public static func credentials(_ fd: Int32) -> Credentials? {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        guard tcpops_peercred(fd, &pid, &uid, &gid) == 0 else { return nil }
        return Credentials(pid: pid, uid: uid, gid: gid)
    }

    /// The gid of a group name.
    public static func groupID(_ name: String) -> UInt32? {
        guard let g = getgrnam(name) else { return nil }
        return g.pointee.gr_gid
    }

    /// Whether `uid` (with primary `gid`) belongs to group `group`, by the user database.
    public static func isMember(uid: UInt32, gid: UInt32, of group: UInt32) -> Bool {
        if gid == group { return true }
        guard let pw = getpwuid(uid) else { return false }
        if pw.pointee.pw_gid == group { return true }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(pw.pointee.pw_name, pw.pointee.pw_gid, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
            _ = getgrouplist(pw.pointee.pw_name, pw.pointee.pw_gid, &groups, &count)
        }
        return groups.prefix(Int(max(count, 0))).contains(group)
    }

    /// One non-blocking read into `buffer`'s end.
    package static func read(_ fd: Int32, appendingTo buffer: inout [UInt8], max: Int) -> IOResult {
        var chunk = [UInt8](repeating: 0, count: max)
        do throws(SystemError) {
            guard let n = try sysNonBlocking("read", { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }) else {
                return .wouldBlock
            }
            if n == 0 { return .endOfFile }
            buffer.append(contentsOf: chunk[0..<n])
            return .moved(n)
        } catch {
            return .failed(error.errno)
        }
    }
}
