// Kernel pipes for splice(): one per direction while bytes are in flight, kept in a small pool.
import CShims
import Glibc

package final class PipePool {
    package struct Pipe {
        package let read: Int32
        package let write: Int32
    }

    private var idle: [Pipe] = []
    private let keepIdle: Int
    /// Bytes a pipe holds; splice moves at most this much per step.
    package let capacity: Int

    package init(keepIdle: Int = 256, capacity: Int = 1 << 16) {
        self.keepIdle = keepIdle
        self.capacity = capacity
    }

    package func take() throws(SystemError) -> Pipe {
        if let p = idle.popLast() { return p }
        var fds: [Int32] = [0, 0]
        try sys("pipe2") { tcpops_pipe2(&fds) }
        _ = tcpops_set_pipe_size(fds[1], Int32(capacity))
        return Pipe(read: fds[0], write: fds[1])
    }

    /// Returns an empty pipe to the pool (a pipe still holding bytes must be closed instead).
    package func give(_ p: Pipe) {
        if idle.count < keepIdle {
            idle.append(p)
        } else {
            close(p)
        }
    }

    package func close(_ p: Pipe) {
        closeFD(p.read)
        closeFD(p.write)
    }

    /// Copies bytes into an empty pipe (they always fit: the pipe holds more than one read).
    package func load(_ p: Pipe, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = write(p.write, bytes.baseAddress! + off, bytes.count - off)
            if n > 0 {
                off += n
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return false
            }
        }
        return true
    }

    package func drain() {
        for p in idle { close(p) }
        idle.removeAll()
    }
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
        while true {
            let n = tcpops_splice(from, to, length)
            if n > 0 { return .moved(n) }
            if n == 0 { return .endOfFile }
            let e = Glibc.errno
            if e == EINTR { continue }
            if e == EAGAIN { return .wouldBlock }
            return .failed(e)
        }
    }
}
