// IPv4/IPv6 socket addresses: parsing "a.b.c.d:port" and "[v6]:port", formatting, and sockaddr views.
import Glibc

public struct SocketAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    public enum Family: Sendable { case v4, v6 }
    public let family: Family
    /// Address bytes in network order (4 or 16).
    public let bytes: [UInt8]
    public let port: UInt16

    public init(family: Family, bytes: [UInt8], port: UInt16) {
        self.family = family
        self.bytes = bytes
        self.port = port
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case missingPort, badPort(String), badHost(String)
        public var description: String {
            switch self {
            case .missingPort: return "expected \"host:port\" (IPv6 as \"[addr]:port\")"
            case .badPort(let p): return "port \"\(p)\" is not a number from 1 to 65535"
            case .badHost(let h): return "\"\(h)\" is not an IPv4 or IPv6 address"
            }
        }
    }

    /// Parses "a.b.c.d:port" or "[v6]:port". `defaultPort` is used when the port is left out.
    public static func parse(_ text: String, defaultPort: UInt16? = nil) throws(ParseError) -> SocketAddress {
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw .badHost(text) }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") { portText = rest.dropFirst() } else if !rest.isEmpty { throw .badHost(text) }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { throw .badHost(text) }
        } else {
            host = Substring(text)
        }
        let port: UInt16
        if let portText {
            guard let p = Int(portText), p >= 1, p <= 65535 else { throw .badPort(String(portText)) }
            port = UInt16(p)
        } else if let defaultPort {
            port = defaultPort
        } else {
            throw .missingPort
        }
        var v4 = in_addr()
        if inet_pton(AF_INET, String(host), &v4) == 1 {
            let b = withUnsafeBytes(of: v4) { Array($0) }
            return SocketAddress(family: .v4, bytes: b, port: port)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, String(host), &v6) == 1 {
            let b = withUnsafeBytes(of: v6) { Array($0) }
            return SocketAddress(family: .v6, bytes: b, port: port)
        }
        throw .badHost(String(host))
    }

    /// The address without the port ("127.0.0.1", "::1").
    public var ip: String {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let af = family == .v4 ? AF_INET : AF_INET6
        bytes.withUnsafeBytes { src in
            _ = inet_ntop(af, src.baseAddress, &buf, socklen_t(buf.count))
        }
        let end = buf.firstIndex(of: 0) ?? buf.count
        return String(decoding: buf[..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// "ip:port", IPv6 in brackets.
    public var description: String { family == .v4 ? "\(ip):\(port)" : "[\(ip)]:\(port)" }

    /// 0.0.0.0 or ::
    public var isWildcard: Bool { bytes.allSatisfy { $0 == 0 } }

    var domain: Int32 { family == .v4 ? AF_INET : AF_INET6 }

    /// Calls `body` with this address as a sockaddr.
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        switch family {
        case .v4:
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin_addr) { $0.copyBytes(from: bytes) }
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6:
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: bytes) }
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
    }

    /// Reads an address out of a sockaddr_storage filled by the kernel.
    init?(storage: UnsafePointer<sockaddr_storage>) {
        switch Int32(storage.pointee.ss_family) {
        case AF_INET:
            let sa = UnsafeRawPointer(storage).load(as: sockaddr_in.self)
            self.init(family: .v4, bytes: withUnsafeBytes(of: sa.sin_addr) { Array($0) }, port: UInt16(bigEndian: sa.sin_port))
        case AF_INET6:
            let sa = UnsafeRawPointer(storage).load(as: sockaddr_in6.self)
            self.init(family: .v6, bytes: withUnsafeBytes(of: sa.sin6_addr) { Array($0) }, port: UInt16(bigEndian: sa.sin6_port))
        default:
            return nil
        }
    }
}
