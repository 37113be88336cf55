// One connection to the control socket: send a request line, read answer lines.
import Glibc
import TCPOpsPosix
import TCPOpsProtocol

struct ControlClient {
    let fd: Int32
    /// What was read and not yet returned starts at `start` (lines are taken from the front
    /// without moving the rest: a follower reading a long backlog stays linear).
    var buffer: [UInt8] = []
    var start = 0

    enum Read {
        case line(String)
        case end
        /// Nothing came within the timeout.
        case timeout
    }

    init(socket: String, timeout: Double) throws(SystemError) {
        fd = try UnixSocket.connect(path: socket, timeout: timeout)
    }

    /// From now on reads wait as long as it takes (an event stream).
    func waitForever() {
        try? UnixSocket.setTimeout(fd, SO_RCVTIMEO, 0)
    }

    func send(_ r: ControlRequest) -> Bool {
        let line = r.line()
        var off = 0
        while off < line.count {
            guard let n = try? sys("send", { line[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } })
            else { return false }
            off += n
        }
        return true
    }

    /// The next line, without its newline. (memchr and memcpy: a debug build keeps up with a busy
    /// event stream too.)
    mutating func readLine() -> Read {
        while true {
            let (from, count) = (start, buffer.count)
            let nl: Int? = buffer.withUnsafeBytes { b in
                guard count > from, let p = memchr(b.baseAddress! + from, 10, count - from) else { return nil }
                return UnsafeRawPointer(p) - b.baseAddress!
            }
            if let nl {
                let line = String(decoding: buffer[start..<nl], as: UTF8.self)
                start = nl + 1
                return .line(line)
            }
            // No whole line left: drop what was returned, then read more after the rest.
            buffer.removeFirst(start)
            start = 0
            // nil: the receive timeout passed (EAGAIN); -1: the read failed.
            let n: Int? = withUnsafeTemporaryAllocation(byteCount: 65536, alignment: 1) { chunk -> Int? in
                do throws(SystemError) {
                    guard let n = try sysNonBlocking("read", { read(fd, chunk.baseAddress, chunk.count) }) else { return nil }
                    if n > 0 { buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<n])) }
                    return n
                } catch {
                    return -1
                }
            }
            guard let n else { return .timeout }
            if n <= 0 {
                if buffer.isEmpty { return .end }
                let line = String(decoding: buffer, as: UTF8.self)
                buffer = []
                return .line(line)
            }
        }
    }
}
