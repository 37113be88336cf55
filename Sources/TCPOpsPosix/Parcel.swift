// What the crash keep (TCPOpsRelay/RelayKeep.swift) stands on: fds parked in a unix socket's
// receive queue (SCM_RIGHTS: a file in flight stays open for as long as the message waits, whoever
// sent it), and a memory file that two processes, one after the other, map.
import CShims
import Glibc

package enum Parcel {
    /// The most fds one message carries (the kernel's SCM_MAX_FD).
    package static let maxFDs = 253

    /// A connected pair of SOCK_SEQPACKET sockets (messages kept whole and in order), close-on-exec;
    /// `send` is the first, the queue's reader the second.
    package static func pair() throws(SystemError) -> (send: Int32, receive: Int32) {
        var fds: [Int32] = [-1, -1]
        _ = try sys("socketpair") { socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (fds[0], fds[1])
    }

    /// Asks for the largest send buffer the kernel allows (net.core.wmem_max): what a queue of
    /// parked fds holds is bounded by its sender's buffer.
    package static func growSendBuffer(_ sock: Int32) {
        var size: Int32 = 64 << 20
        _ = setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sends `bytes` with `fds` (at most maxFDs) as one message, without waiting: 0, or the errno
    /// (EAGAIN: the sender's buffer is full; ETOOMANYREFS: more fds in flight than the fd limit).
    package static func send(_ sock: Int32, bytes: [UInt8], fds: [Int32]) -> Int32 {
        while true {
            let n = bytes.withUnsafeBytes { b in fds.withUnsafeBufferPointer { f in
                tcpops_send_fds(sock, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
            } }
            if n >= 0 { return 0 }
            if errno != EINTR { return errno }
        }
    }

    /// Receives the next message: its bytes (at most `capacity`) and its fds, installed here
    /// (`keepFDs` false: the kernel drops them unseen, closing what no one else holds). nil: the
    /// queue is empty (or every sender is gone and it is drained).
    package static func receive(_ sock: Int32, capacity: Int = 65536, keepFDs: Bool) -> (bytes: [UInt8], fds: [Int32])? {
        var buffer = [UInt8](repeating: 0, count: capacity)
        var fds = [Int32](repeating: -1, count: keepFDs ? maxFDs : 1)
        var count: Int32 = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { b in fds.withUnsafeMutableBufferPointer { f in
                tcpops_recv_fds(sock, b.baseAddress, b.count, f.baseAddress, keepFDs ? Int32(maxFDs) : 0, &count)
            } }
            if n > 0 || (n == 0 && count > 0) { return (Array(buffer.prefix(Int(n))), Array(fds.prefix(Int(count)))) }
            if n == 0 { return nil }
            if errno == EINTR { continue }
            return nil
        }
    }
}

/// A memory file (memfd) mapped shared: what a process writes there is in the kernel's page cache,
/// and the next process that maps the same file (kept in systemd's fd store) reads it, however the
/// writer died.
package final class SharedFile: @unchecked Sendable {
    package let fd: Int32
    package let base: UnsafeMutableRawPointer
    package let size: Int

    /// A new file of `size` bytes (zeroed; only the pages written cost memory).
    package init(name: String, size: Int) throws(SystemError) {
        let fd = try sys("memfd_create") { tcpops_memfd(name) }
        do {
            _ = try sys("ftruncate") { ftruncate(fd, off_t(size)) }
            self.base = try SharedFile.map(fd, size)
        } catch {
            closeFD(fd)
            throw error
        }
        self.fd = fd
        self.size = size
    }

    /// An existing file (passed back by systemd), mapped whole; it must be at least `minimum` bytes.
    package init(fd: Int32, minimum: Int) throws(SystemError) {
        var st = stat()
        _ = try sys("fstat") { fstat(fd, &st) }
        guard (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) >= minimum else { throw SystemError("fstat", EINVAL) }
        self.size = Int(st.st_size)
        self.base = try SharedFile.map(fd, Int(st.st_size))
        self.fd = fd
    }

    private static func map(_ fd: Int32, _ size: Int) throws(SystemError) -> UnsafeMutableRawPointer {
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else { throw SystemError("mmap", errno) }
        return p
    }

    /// Unmaps and closes (the file lives on while systemd's copy of the fd does).
    package func close() {
        munmap(base, size)
        closeFD(fd)
    }

    @inline(__always) package func u64(_ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (base + offset).assumingMemoryBound(to: UInt64.self)
    }
}

extension Socket {
    /// Aborts a TCP connection at once (an RST, or a connect stopped), however many processes hold
    /// the socket: close() does that only for its last holder.
    package static func abort(_ fd: Int32) { _ = tcpops_disconnect(fd) }

    /// Ends both directions with a FIN, however many processes hold the socket.
    package static func shutdownBoth(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

    /// What kind of file `fd` is: a socket, a FIFO (pipe), or something else (nil: closed).
    package static func kind(_ fd: Int32) -> mode_t? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return st.st_mode & S_IFMT
    }
}
