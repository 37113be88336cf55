// A block of addresses written "a.b.c.d/n" or "v6/n" (a bare address is /32 or /128): the sources
// a listener trusts to send a PROXY header (accept_proxy_from). An IPv4 client that reaches an
// IPv6 socket as ::ffff:a.b.c.d matches IPv4 blocks.
import Glibc

public struct AddressRange: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let family: SocketAddress.Family
    public let bytes: [UInt8]
    public let prefix: Int

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case badAddress(String), badPrefix(String), hostBits(String)
        public var description: String {
            switch self {
            case .badAddress(let a): return "\"\(a)\" is not an IPv4 or IPv6 address"
            case .badPrefix(let p): return "prefix length \"\(p)\" must be 0-32 for IPv4, 0-128 for IPv6"
            case .hostBits(let s): return "bits are set past the prefix length (did you mean \(s)?)"
            }
        }
    }

    /// Parses "a.b.c.d/n", "v6/n", or a bare address. Bits past the prefix must be 0, as in
    /// a routing table: "10.1.2.3/8" is more likely a typo than a wish.
    public static func parse(_ text: String) throws(ParseError) -> AddressRange {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let host = String(parts[0])
        var family: SocketAddress.Family
        var bytes: [UInt8]
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            family = .v4
            bytes = withUnsafeBytes(of: v4) { Array($0) }
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            family = .v6
            bytes = withUnsafeBytes(of: v6) { Array($0) }
        } else {
            throw .badAddress(host)
        }
        let most = bytes.count * 8
        var prefix = most
        if parts.count == 2 {
            guard let p = Int(parts[1]), (0...most).contains(p), parts[1].allSatisfy(\.isNumber) else { throw .badPrefix(String(parts[1])) }
            prefix = p
        }
        let range = AddressRange(family: family, bytes: bytes, prefix: prefix)
        if range.masked != bytes {
            let fixed = AddressRange(family: family, bytes: range.masked, prefix: prefix)
            throw .hostBits(fixed.description)
        }
        return range
    }

    public init(family: SocketAddress.Family, bytes: [UInt8], prefix: Int) {
        self.family = family
        self.bytes = bytes
        self.prefix = prefix
    }

    private var masked: [UInt8] { AddressRange.mask(bytes, prefix) }

    private static func mask(_ b: [UInt8], _ prefix: Int) -> [UInt8] {
        var out = b
        for i in 0..<out.count {
            let keep = max(0, min(8, prefix - i * 8))
            out[i] &= keep == 8 ? 0xff : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
        }
        return out
    }

    /// Whether `a` lies in this block.
    public func contains(_ a: SocketAddress) -> Bool {
        var family = a.family
        var b = a.bytes
        if family == .v6 && self.family == .v4 && b.count == 16 && b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff {
            family = .v4
            b = Array(b[12...])
        }
        guard family == self.family, b.count == bytes.count else { return false }
        return AddressRange.mask(b, prefix) == bytes
    }

    public var description: String {
        let ip = SocketAddress(family: family, bytes: bytes, port: 0).ip
        return "\(ip)/\(prefix)"
    }
}
