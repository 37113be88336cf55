// Socket activation: listening sockets passed by systemd (sd_listen_fds_with_names), with their
// FileDescriptorName and bound address, for matching to [[listener]] entries.
import CShims
import CSystemd
import Glibc
import TCPOpsPosix

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

    /// Everything systemd passed: listening sockets, relay sockets stored by a previous tcpopsd
    /// (FDNAME `tc.`/`tu.`), and the conid counter it left (`tn.NEXT`, on a placeholder fd).
    public static func takeAll() -> (sockets: [PassedSocket], carried: [(fd: Int32, side: CarriedSide)], nextConid: UInt64?,
                                     rejected: [String]) {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let n = sd_listen_fds_with_names(1, &names)
        guard n > 0 else { return ([], [], nil, []) }
        defer {
            if let names {
                for i in 0..<Int(n) { free(names[i]) }
                free(names)
            }
        }
        var sockets: [PassedSocket] = []
        var carried: [(fd: Int32, side: CarriedSide)] = []
        var nextConid: UInt64?
        var rejected: [String] = []
        for i in 0..<Int(n) {
            let fd = SD_LISTEN_FDS_START + Int32(i)
            let name = names?[i].map { String(cString: $0) } ?? "fd\(fd)"
            if let side = CarriedSide(name: name) {
                carried.append((fd, side))
                continue
            }
            if name.hasPrefix("tn."), let next = UInt64(name.dropFirst(3)) {
                nextConid = max(nextConid ?? 0, next)
                closeFD(fd)
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
        return (sockets, carried, nextConid, rejected)
    }
}
