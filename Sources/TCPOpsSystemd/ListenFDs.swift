// Socket activation: listening sockets passed by systemd (sd_listen_fds_with_names), with their
// FileDescriptorName and bound address, for matching to [[listener]] entries.
import CShims
import CSystemd
import Glibc
import TCPOpsPosix
import TCPOpsEvents

public struct PassedSocket {
    public let fd: Int32
    public let name: String
    public let address: SocketAddress?
}

public enum ListenFDs {
    /// Takes the fds systemd passed (and unsets LISTEN_FDS & co. so children do not see them).
    /// Fds that are not listening TCP sockets are closed and reported in `rejected`.
    public static func take() -> (sockets: [PassedSocket], rejected: [String]) {
        let all = takeAll()
        return (all.sockets, all.rejected)
    }

    /// Everything systemd passed: listening sockets, and the fds whose FDNAME `stored` claims
    /// (what a previous tcpopsd left in the fd store: this layer does not read those names).
    public static func takeAll(stored: (String) -> Bool = { _ in false }) -> (sockets: [PassedSocket], stored: [(fd: Int32, name: String)],
                                                                           rejected: [String]) {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let n = sd_listen_fds_with_names(1, &names)
        guard n > 0 else { return ([], [], []) }
        defer {
            if let names {
                for i in 0..<Int(n) { free(names[i]) }
                free(names)
            }
        }
        var sockets: [PassedSocket] = []
        var kept: [(fd: Int32, name: String)] = []
        var rejected: [String] = []
        for i in 0..<Int(n) {
            let fd = SD_LISTEN_FDS_START + Int32(i)
            let name = names?[i].map { String(cString: $0) } ?? "fd\(fd)"
            if stored(name) {
                kept.append((fd, name))
                continue
            }
            guard sd_is_socket_inet(fd, AF_UNSPEC, Int32(SOCK_STREAM.rawValue), 1, 0) > 0 else {
                rejected.append("\(name) (fd \(fd)): not a listening TCP socket")
                closeFD(fd)
                continue
            }
            Socket.adoptFD(fd)
            sockets.append(PassedSocket(fd: fd, name: name, address: Socket.localAddress(fd)))
        }
        return (sockets, kept, rejected)
    }
}
