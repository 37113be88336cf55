// The PROXY protocol: headers tcpopsd builds parse back to what went in; hand-made headers of both
// versions parse; truncated, oversized and malformed ones are told apart.
import Testing
@testable import TCPOps
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsProtocol

@Suite struct ProxyProtocolTests {
    let client4 = SocketAddress(family: .v4, bytes: [192, 0, 2, 7], port: 40112)
    let local4 = SocketAddress(family: .v4, bytes: [198, 51, 100, 2], port: 5060)
    let client6 = try! SocketAddress.parse("[2001:db8::7]:40112")
    let local6 = try! SocketAddress.parse("[2001:db8::1]:5060")

    func header(_ p: ProxyProtocol.Parse) -> ProxyProtocol.Header? {
        if case .header(let h) = p { return h }
        return nil
    }

    @Test func builtHeadersParseBack() {
        for (src, dst) in [(client4, local4), (client6, local6)] {
            for v in [ProxyProtocol.Version.v1, .v2] {
                let bytes = ProxyProtocol.header(v, source: src, destination: dst, conid: 4242)
                let h = header(ProxyProtocol.parse(bytes + Array("INVITE sip:x".utf8)))
                #expect(h?.source == src && h?.destination == dst && h?.length == bytes.count && h?.version == v)
                if v == .v2 {
                    #expect(h?.tlvs == [ProxyProtocol.TLV(type: 0xE0, value: Array("4242".utf8))])
                }
            }
        }
        #expect(ProxyProtocol.header(.v1, source: client4, destination: local4, conid: 1)
                == Array("PROXY TCP4 192.0.2.7 198.51.100.2 40112 5060\r\n".utf8))
    }

    @Test func everyPrefixOfAValidHeaderNeedsMore() {
        for v in [ProxyProtocol.Version.v1, .v2] {
            let bytes = ProxyProtocol.header(v, source: client6, destination: local6, conid: 9)
            for n in 0..<bytes.count {
                #expect(ProxyProtocol.parse(Array(bytes[0..<n])) == .needMore, "\(v) prefix of \(n)")
            }
        }
    }

    @Test func unknownAndLocalCarryNoAddresses() {
        let unknown = header(ProxyProtocol.parse(Array("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".utf8)))
        #expect(unknown != nil && unknown?.source == nil)
        let local = ProxyProtocol.signature + [0x20, 0x00, 0x00, 0x00]
        let h = header(ProxyProtocol.parse(local))
        #expect(h?.length == 16 && h?.source == nil)
    }

    @Test func malformedHeadersAreInvalid() {
        func invalid(_ b: [UInt8]) -> String? {
            if case .invalid(let why) = ProxyProtocol.parse(b) { return why }
            return nil
        }
        #expect(invalid(Array("GET / HTTP/1.1\r\n".utf8))?.contains("not a PROXY") == true)
        #expect(invalid(Array("PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n".utf8)) != nil)
        #expect(invalid(Array("PROXY TCP4 1.2.3.4 ::1 80 81\r\n".utf8))?.contains("IPv4") == true)
        #expect(invalid(Array("PROXY TCP4 1.2.3.4 5.6.7.8 080 81\r\n".utf8))?.contains("port") == true)
        #expect(invalid(Array("PROXY TCP4 1.2.3.4 5.6.7.8 80 65536\r\n".utf8))?.contains("port") == true)
        #expect(invalid(Array("PROXY TCP4 1.2.3.4 5.6.7.8 80 81\rX".utf8))?.contains("CRLF") == true)
        #expect(invalid(Array(("PROXY " + String(repeating: "x", count: 120)).utf8))?.contains("107") == true)
        var v2 = ProxyProtocol.header(.v2, source: client4, destination: local4, conid: 1)
        v2[12] = 0x31  // version 3
        #expect(invalid(v2)?.contains("version") == true)
        v2 = ProxyProtocol.header(.v2, source: client4, destination: local4, conid: 1)
        v2[14] = 0x02  // 16 + 512+ bytes
        #expect(invalid(v2)?.contains("536") == true)
        v2 = ProxyProtocol.header(.v2, source: client4, destination: local4, conid: 1)
        v2[13] = 0x12  // UDP
        #expect(invalid(v2)?.contains("other than TCP") == true)
        v2 = ProxyProtocol.header(.v2, source: client4, destination: local4, conid: 1)
        v2[16 + 12 + 2] = 0x40  // a TLV claiming more than there is
        #expect(invalid(v2)?.contains("TLV") == true)
        var sig = ProxyProtocol.header(.v2, source: client4, destination: local4, conid: 1)
        sig[5] = 0x0E
        #expect(invalid(sig)?.contains("not a PROXY") == true)
    }
}
