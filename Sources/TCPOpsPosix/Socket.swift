// TCP socket calls: listen, accept, non-blocking connect, options, addresses, shutdown and close.
import CShims
import Glibc

public struct KeepaliveSettings: Equatable, Sendable {
    public var idle: Int32
    public var count: Int32
    public var interval: Int32
    public init(idle: Int32, count: Int32, interval: Int32) {
        self.idle = idle
        self.count = count
        self.interval = interval
    }
}

/// A snapshot of TCP_INFO, as events report it (taken just before a socket is closed).
public struct TCPInfo: Sendable, Equatable {
    /// nil when the connection never got established (the kernel reports its initial guesses).
    public var rttMicros: UInt32?
    public var rttvarMicros: UInt32?
    /// Retransmitted segments over the connection's life.
    public var retransmits: UInt32
    /// Segments sent and not yet acknowledged.
    public var unacked: UInt32
    public var lost: UInt32
    /// Milliseconds since data last came in, and since the last acknowledgement; nil when the
    /// connection never got established (the kernel then counts from boot).
    public var lastDataReceivedMs: UInt32?
    public var lastAckReceivedMs: UInt32?
    public var pmtu: UInt32
    public var sendCwnd: UInt32

    /// A connect that failed (refused, unreachable, timed out) received nothing: the times since
    /// the last data and acknowledgement, and the round-trip estimates, mean nothing then.
    package mutating func neverEstablished() {
        rttMicros = nil
        rttvarMicros = nil
        lastDataReceivedMs = nil
        lastAckReceivedMs = nil
    }
}

package enum Socket {
    package static func setInt(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ what: String) throws(SystemError) {
        var v = value
        try sys("setsockopt(\(what))") { setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) }
    }

    package static func getInt(_ fd: Int32, _ level: Int32, _ name: Int32, _ what: String) throws(SystemError) -> Int32 {
        var v: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        try sys("getsockopt(\(what))") { getsockopt(fd, level, name, &v, &len) }
        return v
    }

    /// A bound, listening, non-blocking socket.
    package static func listen(_ address: SocketAddress, backlog: Int32 = 4096) throws(SystemError) -> Int32 {
        let fd = try sys("socket") { socket(address.domain, Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0) }
        do {
            try setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR")
            if address.family == .v6 { try setInt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1, "IPV6_V6ONLY") }
            try sys("bind") { address.withSockaddr { Glibc.bind(fd, $0, $1) } }
            try sys("listen") { Glibc.listen(fd, backlog) }
        } catch {
            closeFD(fd)
            throw error
        }
        return fd
    }

    /// Accepts one connection (non-blocking, close-on-exec) with its peer's address; nil when
    /// none is waiting.
    package static func accept(_ fd: Int32) throws(SystemError) -> (fd: Int32, peer: SocketAddress?)? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let client = try withUnsafeMutablePointer(to: &ss) { p throws(SystemError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemError) in
                try sysNonBlocking("accept4") { tcpops_accept4(fd, sa, &len) }
            }
        }
        guard let client else { return nil }
        return (client, withUnsafePointer(to: &ss) { SocketAddress(storage: $0) })
    }

    /// `accept`, and the new socket parked at once in the crash keep (`park`: a shard's sending end;
    /// `slot`: the record its relay will write). `parked` false: accepted, but not parked.
    package static func accept(_ fd: Int32, parkingIn park: Int32, slot: UInt32) throws(SystemError)
        -> (fd: Int32, peer: SocketAddress?, parked: Bool)? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        var parked: Int32 = 0
        let client = try withUnsafeMutablePointer(to: &ss) { p throws(SystemError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa throws(SystemError) in
                try sysNonBlocking("accept4") { tcpops_accept_parked(fd, sa, &len, park, slot, &parked) }
            }
        }
        guard let client else { return nil }
        return (client, withUnsafePointer(to: &ss) { SocketAddress(storage: $0) }, parked == 1)
    }

    /// Starts a non-blocking connect. Returns the fd and whether it is already connected.
    /// A refusal that the kernel reports at once comes back as the thrown error.
    package static func connect(_ address: SocketAddress) throws(SystemError) -> (fd: Int32, connected: Bool) {
        let fd = try sys("socket") { socket(address.domain, Int32(SOCK_STREAM.rawValue | SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0) }
        do throws(SystemError) {
            try sys("connect") { address.withSockaddr { Glibc.connect(fd, $0, $1) } }
            return (fd, true)
        } catch where error.errno == EINPROGRESS {
            return (fd, false)
        } catch {
            closeFD(fd)
            throw error
        }
    }

    /// Reads and clears the socket's pending error (0 if none); if asking fails, the errno of that
    /// failure (our call's: never taken for the peer's).
    package static func pendingError(_ fd: Int32) -> Int32 {
        do { return try getInt(fd, SOL_SOCKET, SO_ERROR, "SO_ERROR") } catch { return error.errno }
    }

    /// Sets keepalive, or turns it off (nil); `fresh`: a new socket, already off, needs no call for nil.
    package static func setKeepalive(_ fd: Int32, _ k: KeepaliveSettings?, fresh: Bool = false) throws(SystemError) {
        guard let k else {
            if fresh { return }
            try setInt(fd, SOL_SOCKET, SO_KEEPALIVE, 0, "SO_KEEPALIVE")
            return
        }
        try setInt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, k.idle, "TCP_KEEPIDLE")
        try setInt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, k.count, "TCP_KEEPCNT")
        try setInt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, k.interval, "TCP_KEEPINTVL")
        try setInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE")
    }

    /// TCP_USER_TIMEOUT in milliseconds (0 = kernel default).
    package static func setUserTimeout(_ fd: Int32, milliseconds: UInt32) throws(SystemError) {
        try setInt(fd, Int32(IPPROTO_TCP), Int32(TCP_USER_TIMEOUT), Int32(bitPattern: milliseconds), "TCP_USER_TIMEOUT")
    }

    /// Keepalive (nil when SO_KEEPALIVE is off) and TCP_USER_TIMEOUT in ms, read from the socket.
    package static func options(_ fd: Int32) throws(SystemError) -> (keepalive: KeepaliveSettings?, userTimeoutMs: UInt32) {
        let on = try getInt(fd, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE") != 0
        let ut = UInt32(bitPattern: try getInt(fd, Int32(IPPROTO_TCP), Int32(TCP_USER_TIMEOUT), "TCP_USER_TIMEOUT"))
        guard on else { return (nil, ut) }
        let k = KeepaliveSettings(idle: try getInt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, "TCP_KEEPIDLE"),
                                  count: try getInt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, "TCP_KEEPCNT"),
                                  interval: try getInt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, "TCP_KEEPINTVL"))
        return (k, ut)
    }

    /// The connection's TCP state now (TCP_INFO), or nil when it cannot be read.
    package static func tcpInfo(_ fd: Int32) -> TCPInfo? {
        var t = tcpops_tcp_info()
        guard fd >= 0, tcpops_tcp_info(fd, &t) == 0 else { return nil }
        return TCPInfo(rttMicros: t.rtt_us, rttvarMicros: t.rttvar_us, retransmits: t.total_retrans, unacked: t.unacked, lost: t.lost,
                       lastDataReceivedMs: t.last_data_recv_ms, lastAckReceivedMs: t.last_ack_recv_ms, pmtu: t.pmtu, sendCwnd: t.snd_cwnd)
    }

    package static func setNoDelay(_ fd: Int32) {
        try? setInt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY")
    }

    package static func localAddress(_ fd: Int32) -> SocketAddress? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard r == 0 else { return nil }
        return withUnsafePointer(to: &ss) { SocketAddress(storage: $0) }
    }

    /// One non-blocking send() of `bytes` (never SIGPIPE).
    package static func send(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> IOResult {
        bytes.withUnsafeBytes { send(fd, $0) }
    }

    package static func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> IOResult {
        sysTransfer(zeroIsEnd: false) { Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) }
    }

    /// One non-blocking recv() into `buffer`.
    package static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        sysTransfer { recv(fd, buffer.baseAddress, buffer.count, 0) }
    }

    package static func peerAddress(_ fd: Int32) -> SocketAddress? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        guard r == 0 else { return nil }
        return withUnsafePointer(to: &ss) { SocketAddress(storage: $0) }
    }

    /// shutdown(SHUT_WR): passes a FIN on. Errors mean the connection is already gone, which the
    /// next read or write reports with its cause.
    package static func shutdownWrite(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    /// Closes with an RST instead of a FIN (SO_LINGER 0).
    package static func closeWithReset(_ fd: Int32) {
        resetOnClose(fd)
        closeFD(fd)
    }

    /// SO_LINGER 0: the coming close() sends an RST.
    package static func resetOnClose(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    /// Makes an fd we were handed (by systemd) non-blocking and close-on-exec, as our own are.
    package static func adoptFD(_ fd: Int32) {
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// An fd that refers to nothing in particular (/dev/null), to carry a name through the fd store.
    package static func placeholder() -> Int32 { open("/dev/null", O_RDONLY | O_CLOEXEC) }
}
