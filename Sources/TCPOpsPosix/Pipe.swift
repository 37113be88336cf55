// Kernel pipes for splice(): one per direction while bytes are in flight, kept in a small pool.
//
// A pipe's size is never assumed: the kernel gives an unprivileged user whose pipes already hold
// more than fs.pipe-user-pages-soft pages (16,384 by default, shared by every process of the user)
// pipes of one or two pages, and refuses to grow them (F_SETPIPE_SZ: EPERM). The pool hands out
// only pipes that F_SETPIPE_SZ says hold at least `capacity` bytes, so `capacity` bounds what any
// of its pipes takes; when none can be had at that size (or at all: out of fds), `take` fails and
// the relay copies through memory instead, and for a moment no pipe is even tried (no syscalls
// spent on a budget that is spent). The pool's idle pipes are kept within a share of that budget.
//
// A direction that streams may grow its pipe to `bulkCapacity` (a bigger pipe moves more per
// splice: fewer syscalls a byte). Back in the pool, a few grown pipes are kept for the next
// streaming direction (`keepGrownIdle`: a stream that empties its pipe at every pump takes the same
// one again, without a syscall); the others are shrunk to `capacity`. Grown pipes, idle or in use,
// are bounded per pool (`growLimit`, another share of the budget), and a refusal by the kernel
// stops growing for a moment, as a failed `take` does.
import CShims
import Glibc

package final class PipePool {
    package struct Pipe {
        package let read: Int32
        package let write: Int32
        package init(read: Int32, write: Int32) {
            self.read = read
            self.write = write
        }
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
    /// Bytes a streaming direction's pipe grows to.
    package let bulkCapacity: Int
    /// Pipes of this pool grown now (in use or idle), and how many may be.
    package private(set) var grownCount = 0
    private let growLimit: Int
    /// Grown pipes back in the pool, kept for the next streaming direction.
    private var idleGrown: [Pipe] = []
    private let keepGrownIdle: Int
    /// After the kernel refused to grow a pipe, none is grown before this.
    private var growUntil: UInt64 = 0
    /// Told of every pipe the pool makes and closes (the crash keep parks them).
    package var made: ((Pipe) -> Void)?
    package var closed: ((Pipe) -> Void)?

    package init(keepIdle: Int = 256, capacity: Int = 1 << 16, bulkCapacity: Int = 1 << 18, growLimit: Int = 32, keepGrownIdle: Int = 4) {
        self.keepIdle = keepIdle
        self.capacity = capacity
        self.bulkCapacity = max(capacity, bulkCapacity)
        self.growLimit = bulkCapacity > capacity ? growLimit : 0
        self.keepGrownIdle = keepGrownIdle
    }

    /// An idle grown pipe, for a direction that streams (nil: none kept).
    package func takeGrown() -> Pipe? { idleGrown.popLast() }

    /// Grown pipes waiting in the pool.
    package var idleGrownCount: Int { idleGrown.count }

    /// How many pipes one pool may grow to `bulk` bytes so that the grown pipes of `pools` pools
    /// stay within a quarter of the user's pipe budget (beside the quarter for idle pipes), and
    /// never more than `most`.
    package static func growShare(pools: Int, bulk: Int = 1 << 18, most: Int = 64) -> Int {
        guard let text = try? Files.read("/proc/sys/fs/pipe-user-pages-soft"),
              let pages = Int(String(decoding: text, as: UTF8.self).filter { $0.isNumber }), pages > 0 else { return most }
        return min(most, pages / 4 / max(1, bulk / Int(getpagesize())) / max(1, pools))
    }

    /// Grows `p` (in use by a streaming direction) to `bulkCapacity`; false when this pool's share
    /// of grown pipes is taken, or the kernel refused (the user's budget: then none is tried for a
    /// moment).
    package func grow(_ p: Pipe) -> Bool {
        guard grownCount < growLimit else { return false }
        if growUntil != 0 {
            if Clock.monotonicNanoseconds() < growUntil { return false }
            growUntil = 0
        }
        guard let size = try? sys("F_SETPIPE_SZ", { tcpops_set_pipe_size(p.write, Int32(bulkCapacity)) }), size >= bulkCapacity else {
            growUntil = Clock.monotonicNanoseconds() + PipePool.shortageBackoff
            return false
        }
        grownCount += 1
        return true
    }

    /// Gives back a pipe `grow` grew (empty): kept grown for the next stream while fewer than
    /// `keepGrownIdle` wait, else shrunk to `capacity` (closed when the kernel will not shrink it).
    package func give(grown p: Pipe) {
        assert(bytesIn(p) == 0, "a pipe given back to the pool still holds bytes")
        if idleGrown.count < keepGrownIdle {
            idleGrown.append(p)
            return
        }
        grownCount -= 1
        guard let size = try? sys("F_SETPIPE_SZ", { tcpops_set_pipe_size(p.write, Int32(capacity)) }), size < bulkCapacity else {
            close(p)
            return
        }
        give(p)
    }

    /// Closes a pipe `grow` grew (it still held bytes).
    package func close(grown p: Pipe) {
        grownCount -= 1
        close(p)
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
        let p = Pipe(read: fds[0], write: fds[1])
        made?(p)
        return p
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
        closed?(p)
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

    /// The pool's idle pipes (plain and grown).
    package var idlePipes: [Pipe] { idle + idleGrown }

    package func drain() {
        for p in idle + idleGrown { close(p) }
        grownCount -= idleGrown.count
        idle.removeAll()
        idleGrown.removeAll()
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
