// The PROXY protocol (HAProxy's, versions 1 and 2): the header a balancer puts before a client's
// bytes to say who the client really is, parsed strictly and within bounds (accept_proxy), and
// the header tcpopsd puts before the bytes it relays to an upstream (proxy_protocol).
import Glibc
import TCPOpsPosix

public enum ProxyProtocol {
    /// The most a header may take (v1 is at most 107 bytes; v2 is 16 plus its length).
    public static let maxHeader = 536
    /// v2's first 12 bytes.
    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// The TLV type (custom range) that carries the client's conid, in decimal ASCII.
    public static let conidTLV: UInt8 = 0xE0

    public enum Version: String, Sendable { case v1, v2 }

    public struct Header: Equatable, Sendable {
        /// Bytes the header took (what to consume before the client's own bytes).
        public let length: Int
        public let version: Version
        /// The client and the address it reached; nil for v1 UNKNOWN, v2 LOCAL (a balancer's own
        /// health check) or an address family other than TCP over IPv4/IPv6.
        public let source: SocketAddress?
        public let destination: SocketAddress?
        public let tlvs: [TLV]
    }

    public struct TLV: Equatable, Sendable {
        public let type: UInt8
        public let value: [UInt8]
    }

    public enum Parse: Equatable, Sendable {
        /// What came so far is the start of a header: wait for more.
        case needMore
        case invalid(String)
        case header(Header)
    }

    /// Parses the header at the start of `b` (the bytes received so far).
    public static func parse(_ b: [UInt8]) -> Parse {
        if b.isEmpty { return .needMore }
        if b[0] == 0x0D { return parseV2(b) }
        if b[0] == UInt8(ascii: "P") { return parseV1(b) }
        return .invalid("not a PROXY protocol header (it must come first)")
    }

    // MARK: version 1: "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"

    package static let v1Prefix = Array("PROXY ".utf8)
    package static let v1MaxLength = 107

    package static func parseV1(_ b: [UInt8]) -> Parse {
        let n = min(b.count, v1Prefix.count)
        guard Array(b[0..<n]) == Array(v1Prefix[0..<n]) else { return .invalid("not a PROXY protocol header (it must come first)") }
        guard let cr = b.prefix(v1MaxLength).firstIndex(of: 0x0D) else {
            return b.count >= v1MaxLength ? .invalid("a v1 header longer than \(v1MaxLength) bytes") : .needMore
        }
        guard cr + 1 < b.count else { return cr + 2 > v1MaxLength ? .invalid("a v1 header longer than \(v1MaxLength) bytes") : .needMore }
        guard b[cr + 1] == 0x0A else { return .invalid("a v1 header must end with CRLF") }
        guard cr + 2 <= v1MaxLength else { return .invalid("a v1 header longer than \(v1MaxLength) bytes") }
        let line = b[v1Prefix.count..<cr]
        guard line.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return .invalid("a v1 header holds a control or non-ASCII byte") }
        let fields = line.split(separator: 0x20, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        let length = cr + 2
        if fields.first == "UNKNOWN" {
            return .header(Header(length: length, version: .v1, source: nil, destination: nil, tlvs: []))
        }
        guard fields.count == 5, fields[0] == "TCP4" || fields[0] == "TCP6" else {
            return .invalid("a v1 header must be \"PROXY TCP4|TCP6 SRC DST SPORT DPORT\" or \"PROXY UNKNOWN\"")
        }
        let family = fields[0] == "TCP4" ? AF_INET : AF_INET6
        guard let sport = port(fields[3]), let dport = port(fields[4]) else { return .invalid("a v1 header with a bad port") }
        guard let src = address(fields[1], family: family, port: sport), let dst = address(fields[2], family: family, port: dport) else {
            return .invalid("a v1 header with an address that is not \(fields[0] == "TCP4" ? "IPv4" : "IPv6")")
        }
        return .header(Header(length: length, version: .v1, source: src, destination: dst, tlvs: []))
    }

    /// 0-65535 in decimal, without a sign or leading zeros.
    package static func port(_ s: String) -> UInt16? {
        guard !s.isEmpty, s.count <= 5, s.allSatisfy({ $0.isASCII && $0.isNumber }), s == "0" || !s.hasPrefix("0"),
              let v = Int(s), v <= 65535 else { return nil }
        return UInt16(v)
    }

    package static func address(_ s: String, family: Int32, port: UInt16) -> SocketAddress? {
        guard s.count <= 45 else { return nil }
        if family == AF_INET {
            var a = in_addr()
            guard inet_pton(AF_INET, s, &a) == 1 else { return nil }
            return SocketAddress(family: .v4, bytes: withUnsafeBytes(of: a) { Array($0) }, port: port)
        }
        var a = in6_addr()
        guard inet_pton(AF_INET6, s, &a) == 1 else { return nil }
        return SocketAddress(family: .v6, bytes: withUnsafeBytes(of: a) { Array($0) }, port: port)
    }

    // MARK: version 2: signature, version/command, family/transport, length, addresses, TLVs

    package static func parseV2(_ b: [UInt8]) -> Parse {
        let n = min(b.count, signature.count)
        guard Array(b[0..<n]) == Array(signature[0..<n]) else { return .invalid("not a PROXY protocol header (it must come first)") }
        guard b.count >= 16 else { return .needMore }
        guard b[12] >> 4 == 2 else { return .invalid("a v2 header with version \(b[12] >> 4)") }
        let command = b[12] & 0x0F
        guard command <= 1 else { return .invalid("a v2 header with command \(command) (only LOCAL and PROXY exist)") }
        let bodyLength = Int(b[14]) << 8 | Int(b[15])
        let length = 16 + bodyLength
        guard length <= maxHeader else { return .invalid("a v2 header of \(length) bytes (at most \(maxHeader))") }
        guard b.count >= length else { return .needMore }
        let body = Array(b[16..<length])
        let family = b[13] >> 4, transport = b[13] & 0x0F
        var src: SocketAddress?
        var dst: SocketAddress?
        var offset = 0
        switch (family, transport) {
        case (0x1, 0x1):
            guard body.count >= 12 else { return .invalid("a v2 TCP/IPv4 header shorter than its addresses") }
            src = SocketAddress(family: .v4, bytes: Array(body[0..<4]), port: UInt16(body[8]) << 8 | UInt16(body[9]))
            dst = SocketAddress(family: .v4, bytes: Array(body[4..<8]), port: UInt16(body[10]) << 8 | UInt16(body[11]))
            offset = 12
        case (0x2, 0x1):
            guard body.count >= 36 else { return .invalid("a v2 TCP/IPv6 header shorter than its addresses") }
            src = SocketAddress(family: .v6, bytes: Array(body[0..<16]), port: UInt16(body[32]) << 8 | UInt16(body[33]))
            dst = SocketAddress(family: .v6, bytes: Array(body[16..<32]), port: UInt16(body[34]) << 8 | UInt16(body[35]))
            offset = 36
        case (0x3, _):
            guard body.count >= 216 else { return .invalid("a v2 UNIX header shorter than its addresses") }
            offset = 216  // a client of the balancer's UNIX socket: no IP address to report
        case (0x0, _):
            offset = 0  // UNSPEC
        default:
            if command == 1 { return .invalid("a v2 header for a transport other than TCP (family \(family), transport \(transport))") }
        }
        if command == 0 { src = nil; dst = nil }  // LOCAL: the balancer speaking for itself
        var tlvs: [TLV] = []
        while offset < body.count {
            guard offset + 3 <= body.count else { return .invalid("a v2 header with a truncated TLV") }
            let t = body[offset], len = Int(body[offset + 1]) << 8 | Int(body[offset + 2])
            guard offset + 3 + len <= body.count else { return .invalid("a v2 TLV longer than the header") }
            tlvs.append(TLV(type: t, value: Array(body[offset + 3..<offset + 3 + len])))
            offset += 3 + len
        }
        return .header(Header(length: length, version: .v2, source: src, destination: dst, tlvs: tlvs))
    }

    // MARK: building

    /// The header for an upstream: `source` is the client, `destination` the address it reached.
    /// A v2 header carries the client's conid in TLV 0xE0.
    public static func header(_ version: Version, source: SocketAddress?, destination: SocketAddress?, conid: UInt64) -> [UInt8] {
        guard let source, let destination, source.family == destination.family else {
            return version == .v1 ? Array("PROXY UNKNOWN\r\n".utf8) : v2(command: 0, family: 0, addresses: [], conid: conid)
        }
        switch version {
        case .v1:
            let proto = source.family == .v4 ? "TCP4" : "TCP6"
            return Array("PROXY \(proto) \(source.ip) \(destination.ip) \(source.port) \(destination.port)\r\n".utf8)
        case .v2:
            let addresses = source.bytes + destination.bytes + [UInt8(source.port >> 8), UInt8(source.port & 0xFF),
                                                                   UInt8(destination.port >> 8), UInt8(destination.port & 0xFF)]
            return v2(command: 1, family: source.family == .v4 ? 0x11 : 0x21, addresses: addresses, conid: conid)
        }
    }

    package static func v2(command: UInt8, family: UInt8, addresses: [UInt8], conid: UInt64) -> [UInt8] {
        let id = Array(String(conid).utf8)
        let tlv = [conidTLV, UInt8(id.count >> 8), UInt8(id.count & 0xFF)] + id
        let length = addresses.count + tlv.count
        return signature + [0x20 | command, family, UInt8(length >> 8), UInt8(length & 0xFF)] + addresses + tlv
    }
}
