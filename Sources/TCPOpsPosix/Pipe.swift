// Kernel pipes for splice(): one per direction while bytes are in flight, kept in a small pool.
//
// A pipe's size is never assumed: the kernel gives an unprivileged user whose pipes already hold
// more than fs.pipe-user-pages-soft pages (16,384 by default, shared by every process of the user)
// pipes of one or two pages, and refuses to grow them (F_SETPIPE_SZ: EPERM). The pool hands out
// only pipes that F_SETPIPE_SZ says hold at least `capacity` bytes, so `capacity` bounds what any
// of its pipes takes; when none can be had at that size (or at all: out of fds), `take` fails and
// the relay copies through memory instead, and for a moment no pipe is even tried (no syscalls
// spent on a budget that is spent). The pool's idle pipes are kept within a share of that budget.
import CShims
import Glibc

package final class PipePool {
    package struct Pipe {
        package let read: Int32
        package let write: Int32
    }

    private var idle: [Pipe] = []
    private let keepIdle: Int
    /// Bytes every pipe of the pool holds at least; a splice into one moves at most this much.
    package let capacity: Int
    /// After a failed `take`, none is tried before this (monotonic ns; 0: none failed lately).
    private var shortUntil: UInt64 = 0
    private var lastShortage: SystemError?
    /// How long a failed `take` keeps the pool from trying again.
    package static let shortageBackoff: UInt64 = 1_000_000_000

    package init(keepIdle: Int = 256, capacity: Int = 1 << 16) {
        self.keepIdle = keepIdle
        self.capacity = capacity
    }

    /// How many idle pipes one pool may keep so that the idle pipes of `pools` pools stay within a
    /// quarter of the user's pipe budget (`fs.pipe-user-pages-soft`; 0 there means no budget), and
    /// never more than `most`: what the budget leaves for pipes in flight (and for hooks, which run
    /// as the same user) stays the larger part.
    package static func idleShare(pools: Int, capacity: Int = 1 << 16, most: Int = 256) -> Int {
        guard let text = try? Files.read("/proc/sys/fs/pipe-user-pages-soft"),
              let pages = Int(String(decoding: text, as: UTF8.self).filter { $0.isNumber }), pages > 0 else { return most }
        let pagesPerPipe = max(1, capacity / Int(getpagesize()))
        return min(most, pages / 4 / pagesPerPipe / max(1, pools))
    }

    /// An empty pipe of at least `capacity` bytes: an idle one, or a new one.
    package func take() throws(SystemError) -> Pipe {
        if let p = idle.popLast() { return p }
        if shortUntil != 0 {
            if Clock.monotonicNanoseconds() < shortUntil, let e = lastShortage { throw e }
            shortUntil = 0
        }
        var fds: [Int32] = [0, 0]
        do {
            try sys("pipe2") { tcpops_pipe2(&fds) }
        } catch {
            throw short(error)
        }
        // F_SETPIPE_SZ answers with the size the pipe has now (at least the one asked for).
        let size: Int32
        do throws(SystemError) {
            size = try sys("F_SETPIPE_SZ") { tcpops_set_pipe_size(fds[1], Int32(capacity)) }
            if size < capacity { throw SystemError("F_SETPIPE_SZ", ENOBUFS) }
        } catch {
            closeFD(fds[0])
            closeFD(fds[1])
            throw short(error)
        }
        return Pipe(read: fds[0], write: fds[1])
    }

    private func short(_ e: SystemError) -> SystemError {
        lastShortage = e
        shortUntil = Clock.monotonicNanoseconds() + PipePool.shortageBackoff
        return e
    }

    /// Returns an empty pipe to the pool (a pipe still holding bytes must be closed instead: the
    /// next relay to take it would send them to its own peer).
    package func give(_ p: Pipe) {
        assert(bytesIn(p) == 0, "a pipe given back to the pool still holds bytes")
        if idle.count < keepIdle {
            idle.append(p)
        } else {
            close(p)
        }
    }

    /// Bytes waiting in `p` (FIONREAD), for checks.
    package func bytesIn(_ p: Pipe) -> Int {
        var n: Int32 = 0
        return ioctl(p.read, UInt(FIONREAD), &n) == 0 ? Int(n) : -1
    }

    package func close(_ p: Pipe) {
        closeFD(p.read)
        closeFD(p.write)
    }

    /// Copies bytes into an empty pipe; returns how many it took (all, unless the pipe's slots ran
    /// out first: the caller keeps the rest).
    package func load(_ p: Pipe, _ bytes: UnsafeRawBufferPointer) -> Int {
        var off = 0
        while off < bytes.count {
            // Full (EAGAIN) or failed: the caller keeps what the pipe did not take.
            guard let n = try? sysNonBlocking("write", { write(p.write, bytes.baseAddress! + off, bytes.count - off) }), n > 0 else { break }
            off += n
        }
        return off
    }

    package func drain() {
        for p in idle { close(p) }
        idle.removeAll()
    }

    package var idleCount: Int { idle.count }
}

/// What one non-blocking transfer step did.
package enum IOResult {
    case moved(Int)
    case wouldBlock
    case endOfFile
    case failed(Int32)
}

package enum Splice {

    /// One splice() step from `from` to `to`, at most `length` bytes.
    @inline(__always)
    package static func move(from: Int32, to: Int32, length: Int) -> IOResult {
        sysTransfer { tcpops_splice(from, to, length) }
    }
}
