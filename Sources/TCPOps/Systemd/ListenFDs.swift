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

    /// What a previous tcpopsd left beside its relays: its conid counter (`tn.NEXT`) and, once it
    /// knew, how many relays it stored (`tn.NEXT.STORED`), each on a placeholder fd.
    public struct Marker: Sendable {
        public var nextConid: UInt64 = 0
        public var stored: Int?
        /// Every marker's FDNAME, to be removed from the store.
        public var names: [String] = []

        /// Reads one `tn.` name; false when it is not one.
        mutating func take(_ name: String) -> Bool {
            guard name.hasPrefix("tn.") else { return false }
            let parts = name.dropFirst(3).split(separator: ".", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), let next = UInt64(parts[0]) else { return false }
            if parts.count == 2 {
                guard let n = Int(parts[1]) else { return false }
                stored = max(stored ?? 0, n)
            }
            nextConid = max(nextConid, next)
            names.append(name)
            return true
        }
    }

    /// Everything systemd passed: listening sockets, relay sockets stored by a previous tcpopsd
    /// (FDNAME `tc.`/`tu.`/`tp.`), and the markers it left (nil: none).
    public static func takeAll() -> (sockets: [PassedSocket], carried: [(fd: Int32, side: CarriedSide)], marker: Marker?,
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
        var marker = Marker()
        var rejected: [String] = []
        for i in 0..<Int(n) {
            let fd = SD_LISTEN_FDS_START + Int32(i)
            let name = names?[i].map { String(cString: $0) } ?? "fd\(fd)"
            if let side = CarriedSide(name: name) {
                carried.append((fd, side))
                continue
            }
            if marker.take(name) {
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
        return (sockets, carried, marker.names.isEmpty ? nil : marker, rejected)
    }
}
