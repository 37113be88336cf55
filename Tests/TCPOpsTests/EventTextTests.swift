// The byte-level renderings of an event (journal fields, JSON line, numbers, addresses) say the
// same as the value-level ones they replace on the hot path.
import Glibc
import Testing
@testable import TCPOps
@testable import TCPOpsEvents
@testable import TCPOpsSystemd
@testable import TCPOpsMetrics
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsProtocol

@Suite struct EventTextTests {
    static func sample(tcp: TCPInfo?, peer: UInt64? = 8, v6: Bool = false, errno: Int32 = 0, listener: String = "sip-1") throws -> TCPEvent {
        var e = TCPEvent(kind: .reset, reason: .rst, conid: 7, peerConid: peer, side: .client, listener: listener,
                         local: try SocketAddress.parse(v6 ? "[::1]:5060" : "127.0.0.1:5060"),
                         remote: try SocketAddress.parse(v6 ? "[2001:db8::42]:40000" : "10.20.30.255:65535"),
                         durationMs: 1234, bytesIn: 0, bytesOut: UInt64.max)
        e.errno = errno
        e.tcp = tcp
        e.seq = 99
        e.unixMicros = 1_790_000_000_123_456
        return e
    }

    static let info = TCPInfo(rttMicros: 10, rttvarMicros: nil, retransmits: 0, unacked: 3, lost: 0, lastDataReceivedMs: 4_294_967_295,
                              lastAckReceivedMs: nil, pmtu: 65535, sendCwnd: 10)

    @Test func numbers() {
        for n: UInt64 in [0, 1, 9, 10, 99, 100, 65535, 1 << 32, UInt64.max] {
            var t = ByteText()
            t.put(n)
            #expect(t.string == String(n))
        }
    }

    @Test func jsonLineMatchesTheJSONValue() throws {
        for e in [try Self.sample(tcp: Self.info, errno: ECONNRESET), try Self.sample(tcp: nil, peer: nil, v6: true),
                  try Self.sample(tcp: Self.info, listener: "a\"b\\c\n\u{1}é")] {
            #expect(e.jsonLine() == e.json(seq: e.seq, unixMicros: e.unixMicros).text)
        }
    }

    @Test func journalFieldsMatchInOrder() throws {
        for e in [try Self.sample(tcp: Self.info, errno: ETIMEDOUT), try Self.sample(tcp: nil, peer: nil, v6: true)] {
            let made = byteFields(e)
            let expected = e.journalFields
            #expect(made.map(\.0) == expected.map(\.0))
            #expect(made.map(\.1) == expected.map(\.1))
            var m = ByteText()
            e.putMessage(&m)
            #expect(m.string == "tcp:reset on conid 7 (client \(e.remote!.description), reason rst)")
        }
    }

    @Test func metricsIndexEveryReasonAndSideApart() {
        var seen = Set<Int>()
        for r in CloseReason.allCases {
            for s in Side.allCases { seen.insert(ListenerMetrics.eventIndex(r, s)) }
        }
        #expect(seen.count == CloseReason.allCases.count * Side.allCases.count)
        #expect(seen.allSatisfy { $0 >= 0 && $0 < CloseReason.allCases.count * Side.allCases.count })
    }
}

@Suite struct RelayEndedTextTests {
    @Test func journalFieldsMatchTheValueRendering() throws {
        let samples = [
            RelayEnded(level: .info, clientConid: 41, upstreamConid: 42, listener: "sip-1", local: try SocketAddress.parse("127.0.0.1:5060"),
                       remote: try SocketAddress.parse("[2001:db8::42]:40000"), durationMs: 2001, bytesIn: 7, bytesOut: UInt64.max,
                       reason: .lifetime, clientReason: .lifetime, upstreamReason: .local, toUpstream: 7, toClient: 0,
                       why: "idle for 2.0 s"),
            RelayEnded(level: .debug, clientConid: 1, upstreamConid: nil, listener: "a", local: nil, remote: nil, durationMs: 0,
                       bytesIn: 0, bytesOut: 0, reason: .local, clientReason: .local, upstreamReason: .local, toUpstream: 0, toClient: 0,
                       why: "no valid PROXY header: bad signature"),
        ]
        for r in samples {
            let made = byteFields(r)
            #expect(made.map(\.0) == r.journalFields.map(\.0))
            #expect(made.map(\.1) == r.journalFields.map(\.1))
            var m = ByteText()
            r.putMessage(&m)
            #expect(m.string == r.message)
        }
    }
}

/// The (key, value) pairs an entry's byte rendering writes, in order.
func byteFields(_ e: some ByteRendered) -> [(String, String)] {
    var t = ByteText()
    var made: [(String, String)] = []
    var start = 0
    var key = ""
    e.forEachField(&t, { t, k in
        key = k.description
        start = t.bytes.count
    }, { t in made.append((key, String(decoding: t.bytes[start...], as: UTF8.self))) })
    return made
}
