// IPv4/IPv6 socket addresses: parsing "a.b.c.d:port" and "[v6]:port", formatting, and sockaddr views.
import Glibc

public struct SocketAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    public enum Family: Sendable { case v4, v6 }
    /// The address bytes in network order (4 or 16; an IPv4 address in the first 4, the rest 0),
    /// held inline: a connection's addresses cost no allocation. (Widest first: 19 bytes.)
    private let head: UInt64
    private let tail: UInt64
    public let port: UInt16
    public let family: Family

    public init(family: Family, bytes: [UInt8], port: UInt16) {
        self = bytes.withUnsafeBytes { SocketAddress(family: family, raw: $0, port: port) }
    }

    /// `raw`: 4 (v4) or 16 (v6) address bytes in network order.
    package init(family: Family, raw: UnsafeRawBufferPointer, port: UInt16) {
        var h: UInt64 = 0, t: UInt64 = 0
        let n = min(raw.count, family == .v4 ? 4 : 16)
        withUnsafeMutableBytes(of: &h) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw.prefix(min(n, 8)))) }
        if n > 8 { withUnsafeMutableBytes(of: &t) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[8..<n])) } }
        self.family = family
        self.port = port
        head = h
        tail = t
    }

    /// The address bytes in network order (4 or 16), without an allocation.
    public func withAddressBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(of: (head, tail)) { try body(UnsafeRawBufferPointer(rebasing: $0.prefix(family == .v4 ? 4 : 16))) }
    }

    /// The address bytes in network order (4 or 16).
    public var bytes: [UInt8] { withAddressBytes { Array($0) } }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case missingPort, badPort(String), badHost(String)
        /// "::1:5060": an IPv6 address with a port needs brackets; the suggestion has them.
        case unbracketed(suggestion: String)
        public var description: String {
            switch self {
            case .missingPort: return "expected \"host:port\" (IPv6 as \"[addr]:port\")"
            case .badPort(let p): return "port \"\(p)\" is not a number from 1 to 65535"
            case .badHost(let h): return "\"\(h)\" is not an IPv4 or IPv6 address"
            case .unbracketed(let s): return "an IPv6 address with a port is written in brackets: \"\(s)\""
            }
        }
    }

    /// Whether `text` is an IPv6 address (which needs brackets before a port).
    public static func isIPv6Text(_ text: String) -> Bool {
        var v6 = in6_addr()
        return inet_pton(AF_INET6, text, &v6) == 1
    }

    /// Parses a host with an optional port, as `tcpopsctl conid` takes it: "a.b.c.d", "a.b.c.d:port",
    /// "v6" (bare, no port), "[v6]" or "[v6]:port". The port is nil when left out.
    public static func parseHost(_ text: String) throws(ParseError) -> (family: Family, bytes: [UInt8], port: UInt16?) {
        if !text.hasPrefix("["), text.filter({ $0 == ":" }).count > 1 {
            var v6 = in6_addr()
            guard inet_pton(AF_INET6, text, &v6) == 1 else { throw .badHost(text) }
            return (.v6, withUnsafeBytes(of: v6) { Array($0) }, nil)
        }
        let hasPort = text.hasPrefix("[") ? text.contains("]:") : text.contains(":")
        let a = try parse(text, defaultPort: hasPort ? nil : 1)
        return (a.family, a.bytes, hasPort ? a.port : nil)
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
            let after = text[text.index(after: colon)...]
            portText = after
            if host.contains(":") {
                var v6 = in6_addr()
                if inet_pton(AF_INET6, String(host), &v6) == 1, Int(after) != nil { throw .unbracketed(suggestion: "[\(host)]:\(after)") }
                throw .badHost(text)
            }
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
        withAddressBytes { src in
            _ = inet_ntop(af, src.baseAddress, &buf, socklen_t(buf.count))
        }
        let end = buf.firstIndex(of: 0) ?? buf.count
        return String(decoding: buf[..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// "ip:port", IPv6 in brackets.
    public var description: String { family == .v4 ? "\(ip):\(port)" : "[\(ip)]:\(port)" }

    /// 0.0.0.0 or ::
    public var isWildcard: Bool { head == 0 && tail == 0 }

    /// 127.0.0.0/8 or ::1
    public var isLoopback: Bool { family == .v4 ? bytes.first == 127 : bytes == [UInt8](repeating: 0, count: 15) + [1] }

    package var domain: Int32 { family == .v4 ? AF_INET : AF_INET6 }

    /// Calls `body` with this address as a sockaddr.
    package func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        switch family {
        case .v4:
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin_addr) { dst in withAddressBytes { dst.copyMemory(from: $0) } }
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6:
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin6_addr) { dst in withAddressBytes { dst.copyMemory(from: $0) } }
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
    }

    /// Reads an address out of a sockaddr_storage filled by the kernel.
    package init?(storage: UnsafePointer<sockaddr_storage>) {
        switch Int32(storage.pointee.ss_family) {
        case AF_INET:
            let sa = UnsafeRawPointer(storage).load(as: sockaddr_in.self)
            self = withUnsafeBytes(of: sa.sin_addr) { SocketAddress(family: .v4, raw: $0, port: UInt16(bigEndian: sa.sin_port)) }
        case AF_INET6:
            let sa = UnsafeRawPointer(storage).load(as: sockaddr_in6.self)
            self = withUnsafeBytes(of: sa.sin6_addr) { SocketAddress(family: .v6, raw: $0, port: UInt16(bigEndian: sa.sin6_port)) }
        default:
            return nil
        }
    }
}

/// The addresses of this host's interfaces (getifaddrs), as address bytes.
public enum LocalAddresses {
    public static func current() -> [[UInt8]] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var out: [[UInt8]] = []
        var p = list
        while let ifa = p {
            if let sa = ifa.pointee.ifa_addr {
                switch Int32(sa.pointee.sa_family) {
                case AF_INET:
                    let v = UnsafeRawPointer(sa).load(as: sockaddr_in.self)
                    out.append(withUnsafeBytes(of: v.sin_addr) { Array($0) })
                case AF_INET6:
                    let v = UnsafeRawPointer(sa).load(as: sockaddr_in6.self)
                    out.append(withUnsafeBytes(of: v.sin6_addr) { Array($0) })
                default:
                    break
                }
            }
            p = ifa.pointee.ifa_next
        }
        return out
    }
}
