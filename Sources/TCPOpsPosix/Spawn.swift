// posix_spawn of a hook: explicit argv and environment (no shell), stdin from /dev/null, stdout and
// stderr into a pipe, default signal dispositions and an empty mask, its own process group.
import CShims
import Glibc

public enum Spawn {
    public struct Child {
        public let pid: pid_t
        /// Read end of the child's stdout+stderr (non-blocking).
        public let output: Int32
        /// pidfd: readable once the child exits.
        public let pidfd: Int32
    }

    public static func run(argv: [String], environment: [String]) throws(SystemError) -> Child {
        var fds: [Int32] = [0, 0]
        try sys("pipe2") { tcpops_pipe2(&fds) }
        defer { closeFD(fds[1]) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        // Nothing of the daemon's beyond stdio, even an fd someone forgot to mark close-on-exec.
        _ = tcpops_spawn_closefrom(&actions, 3)

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        var cArgv: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var cEnv: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer {
            for p in cArgv { free(p) }
            for p in cEnv { free(p) }
        }
        var pid: pid_t = 0
        let r = posix_spawn(&pid, argv[0], &actions, &attr, &cArgv, &cEnv)
        if r != 0 {
            closeFD(fds[0])
            throw SystemError("posix_spawn(\(argv[0]))", r)
        }
        let pidfd: Int32
        do throws(SystemError) {
            pidfd = try sys("pidfd_open") { tcpops_pidfd_open(pid) }
        } catch {
            _ = kill(-pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
            closeFD(fds[0])
            throw error
        }
        _ = fcntl(pidfd, F_SETFD, FD_CLOEXEC)
        return Child(pid: pid, output: fds[0], pidfd: pidfd)
    }

    /// Reaps an exited child. Returns ("exited", code) or ("killed", signal), nil if still running.
    public static func reap(_ pid: pid_t) -> (exited: Bool, value: Int32)? {
        var status: Int32 = 0
        guard (try? sys("waitpid") { waitpid(pid, &status, WNOHANG) }) == pid else { return nil }
        var value: Int32 = 0
        let how = tcpops_wait_status(status, &value)
        return (how == 1, value)
    }

    /// Kills the child's whole process group (a shell hook's own children too).
    public static func killGroup(_ pid: pid_t) {
        _ = kill(-pid, SIGKILL)
    }

    /// Reads what is available without blocking, keeping at most `limit` bytes. False once the
    /// pipe reached end of file (or failed), true while it may still bring more.
    public static func readAvailable(_ fd: Int32, into out: inout [UInt8], limit: Int) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            do throws(SystemError) {
                guard let n = try sysNonBlocking("read", { buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }) else {
                    return true  // nothing more for now
                }
                if n == 0 { return false }
                if out.count < limit { out.append(contentsOf: buf[0..<min(n, limit - out.count)]) }
            } catch {
                return false
            }
        }
    }
}
