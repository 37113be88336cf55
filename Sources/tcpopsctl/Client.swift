// One connection to the control socket: send a request line, read answer lines.
import Glibc
import TCPOps

struct ControlClient {
    let fd: Int32
    var buffer: [UInt8] = []

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
            let n = line[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += n
        }
        return true
    }

    /// The next line, without its newline.
    mutating func readLine() -> Read {
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeFirst(nl + 1)
                return .line(line)
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return .timeout }
            if n <= 0 {
                if buffer.isEmpty { return .end }
                let line = String(decoding: buffer, as: UTF8.self)
                buffer = []
                return .line(line)
            }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}
