// The event schema written out once by hand: what every sink gets for one event, field by field,
// as SPEC names it. The renderings are made from one table (EventSchema.swift); these pin the
// table itself, so that a field changed there shows up here as a contract change.
import Glibc
import Testing
@testable import TCPOps
@testable import TCPOpsEvents
@testable import TCPOpsConfig
@testable import TCPOpsPosix
@testable import TCPOpsProtocol

@Suite struct EventSchemaTests {
    static func event(tcp: TCPInfo?) throws -> TCPEvent {
        try EventTextTests.sample(tcp: tcp, errno: tcp == nil ? 0 : ECONNRESET)
    }

    @Test func theHookEnvironment() throws {
        #expect(try Self.event(tcp: EventTextTests.info).hookEnvironment == [
            "TCPOPS_EVENT=tcp:reset", "TCPOPS_REASON=rst", "TCPOPS_CONID=7", "TCPOPS_PEER_CONID=8", "TCPOPS_SIDE=client",
            "TCPOPS_LISTENER=sip-1", "TCPOPS_PROTO=tcp", "TCPOPS_LOCAL_IP=127.0.0.1", "TCPOPS_LOCAL_PORT=5060",
            "TCPOPS_REMOTE_IP=10.20.30.255", "TCPOPS_REMOTE_PORT=65535", "TCPOPS_DURATION_MS=1234", "TCPOPS_BYTES_IN=0",
            "TCPOPS_BYTES_OUT=18446744073709551615", "TCPOPS_ORIGIN=peer", "TCPOPS_ERRNO=ECONNRESET", "TCPOPS_LATE=",
            "TCPOPS_TCP_RTT_US=10", "TCPOPS_TCP_RTTVAR_US=", "TCPOPS_TCP_RETRANSMITS=0", "TCPOPS_TCP_UNACKED=3",
            "TCPOPS_TCP_LOST=0", "TCPOPS_TCP_LAST_DATA_RECV_MS=4294967295", "TCPOPS_TCP_LAST_ACK_RECV_MS=",
            "TCPOPS_TCP_PMTU=65535", "TCPOPS_TCP_SND_CWND=10",
        ])
        var e = try Self.event(tcp: nil)
        e.peerConid = nil
        e.local = nil
        let env = e.hookEnvironment
        #expect(env.contains("TCPOPS_PEER_CONID=") && env.contains("TCPOPS_LOCAL_IP=") && env.contains("TCPOPS_LOCAL_PORT="))
        #expect(env.contains("TCPOPS_ERRNO=") && env.contains("TCPOPS_TCP_RTT_US=") && env.count == 26)
        // A peer that closed while no tcpopsd ran (taken back after a crash): its event says so.
        e.late = true
        #expect(e.hookEnvironment.contains("TCPOPS_LATE=1"))
        #expect(e.journalFields.contains { $0.0 == "TCPOPS_LATE" && $0.1 == "1" })
        #expect(e.jsonLine().contains("\"late\":1,"))
    }

    @Test func theJournalEntry() throws {
        let f = try Self.event(tcp: nil).journalFields
        #expect(f.map { "\($0.0)=\($0.1)" } == [
            "TCPOPS_EVENT=tcp:reset", "TCPOPS_REASON=rst", "TCPOPS_CONID=7", "TCPOPS_PEER_CONID=8", "TCPOPS_SIDE=client",
            "TCPOPS_LISTENER=sip-1", "TCPOPS_LOCAL=127.0.0.1:5060", "TCPOPS_REMOTE=10.20.30.255:65535", "TCPOPS_DURATION_MS=1234",
            "TCPOPS_BYTES_IN=0", "TCPOPS_BYTES_OUT=18446744073709551615", "TCPOPS_ORIGIN=peer", "TCPOPS_ERRNO=",
            "TCPOPS_TCP_RTT_US=", "TCPOPS_TCP_RTTVAR_US=", "TCPOPS_TCP_RETRANSMITS=", "TCPOPS_TCP_UNACKED=", "TCPOPS_TCP_LOST=",
            "TCPOPS_TCP_LAST_DATA_RECV_MS=", "TCPOPS_TCP_LAST_ACK_RECV_MS=", "TCPOPS_TCP_PMTU=", "TCPOPS_TCP_SND_CWND=",
        ])
        // Unknown peer and addresses are left out of the journal (not written empty).
        var e = try Self.event(tcp: nil)
        e.peerConid = nil
        e.remote = nil
        #expect(!e.journalFields.contains { $0.0 == "TCPOPS_PEER_CONID" || $0.0 == "TCPOPS_REMOTE" })
    }

    @Test func theEventStreamLine() throws {
        #expect(try Self.event(tcp: EventTextTests.info).jsonLine() == "{\"seq\":99,\"time_us\":1790000000123456,\"event\":\"tcp:reset\","
            + "\"reason\":\"rst\",\"conid\":7,\"peer_conid\":8,\"side\":\"client\",\"listener\":\"sip-1\",\"local\":\"127.0.0.1:5060\","
            + "\"remote\":\"10.20.30.255:65535\",\"duration_ms\":1234,\"bytes_in\":0,\"bytes_out\":18446744073709551615,"
            + "\"origin\":\"peer\",\"errno\":\"ECONNRESET\",\"late\":null,\"tcp_rtt_us\":10,\"tcp_rttvar_us\":null,\"tcp_retransmits\":0,"
            + "\"tcp_unacked\":3,\"tcp_lost\":0,\"tcp_last_data_recv_ms\":4294967295,\"tcp_last_ack_recv_ms\":null,"
            + "\"tcp_pmtu\":65535,\"tcp_snd_cwnd\":10}")
    }

    @Test func theTerminalLine() throws {
        var t = ByteText()
        try Self.event(tcp: EventTextTests.info).putTerminalFields(&t)
        #expect(t.string == " peer_conid=8 listener=sip-1 duration_ms=1234 bytes_in=0 bytes_out=18446744073709551615 errno=ECONNRESET")
        t = ByteText()
        try Self.event(tcp: nil).putTerminalFields(&t)
        #expect(!t.string.contains("errno"))
    }

    @Test func theRelaysEnd() throws {
        let r = RelayEnded(level: .info, clientConid: 41, upstreamConid: 42, listener: "sip-1", local: nil,
                           remote: try SocketAddress.parse("[2001:db8::42]:40000"), durationMs: 2001, bytesIn: 7, bytesOut: 9,
                           reason: .lifetime, clientReason: .lifetime, upstreamReason: .local, toUpstream: 7, toClient: 0,
                           why: "idle for 2.0 s")
        #expect(r.journalFields.map { "\($0.0)=\($0.1)" } == [
            "TCPOPS_CONID=41", "TCPOPS_SIDE=client", "TCPOPS_LISTENER=sip-1", "TCPOPS_REMOTE=[2001:db8::42]:40000",
            "TCPOPS_DURATION_MS=2001", "TCPOPS_BYTES_IN=7", "TCPOPS_BYTES_OUT=9", "TCPOPS_PEER_CONID=42", "TCPOPS_REASON=lifetime",
            "TCPOPS_ORIGIN=timer", "TCPOPS_CLIENT_REASON=lifetime", "TCPOPS_UPSTREAM_REASON=local", "TCPOPS_BYTES_TO_UPSTREAM=7",
            "TCPOPS_BYTES_TO_CLIENT=0",
        ])
        #expect(r.terminalFields.map { "\($0.0)=\($0.1)" } == [
            "listener=sip-1", "remote=[2001:db8::42]:40000", "duration_ms=2001", "reason=lifetime", "origin=timer",
            "client_reason=lifetime", "upstream_reason=local", "bytes_to_upstream=7", "bytes_to_client=0",
        ])
    }
}
