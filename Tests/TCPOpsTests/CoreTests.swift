// Addresses, close classification, event policy and the timer queue.
import Glibc
import Testing
@testable import TCPOps
@testable import TCPOpsEvents
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsRelay
@testable import TCPOpsProtocol

@Suite struct AddressTests {
    @Test func parsesAndFormats() throws {
        #expect(try SocketAddress.parse("127.0.0.1:80").description == "127.0.0.1:80")
        #expect(try SocketAddress.parse("[::1]:5060").description == "[::1]:5060")
        #expect(try SocketAddress.parse("10.0.0.1", defaultPort: 5060).port == 5060)
        #expect(try SocketAddress.parse("[fe80::1]:1").ip == "fe80::1")
    }

    @Test func rejects() {
        #expect(throws: SocketAddress.ParseError.self) { try SocketAddress.parse("127.0.0.1") }
        #expect(throws: SocketAddress.ParseError.self) { try SocketAddress.parse("127.0.0.1:0") }
        #expect(throws: SocketAddress.ParseError.self) { try SocketAddress.parse("127.0.0.1:65536") }
        #expect(throws: SocketAddress.ParseError.self) { try SocketAddress.parse("::1:80") }
        #expect(throws: SocketAddress.ParseError.self) { try SocketAddress.parse("host.example:80") }
    }
}

@Suite struct ClassificationTests {
    @Test func errnoToReason() {
        #expect(CloseReason.classify(errno: ECONNRESET) == .rst)
        #expect(CloseReason.classify(errno: EPIPE) == .rst)
        #expect(CloseReason.classify(errno: ECONNREFUSED, connecting: true) == .refused)
        #expect(CloseReason.classify(errno: ETIMEDOUT) == .keepalive)
        #expect(CloseReason.classify(errno: ETIMEDOUT, connecting: true) == .connectTimeout)
        #expect(CloseReason.classify(errno: EHOSTUNREACH) == .unreachable)
    }

    /// An error of our own calls, or of this host, is nobody's reset: no reason, and the log says whose.
    @Test func errorsThatAreNotThePeersHaveNoReason() {
        for e in [EBADF, EFAULT, EINVAL, ENOTSOCK] {
            #expect(CloseReason.classify(errno: e) == nil)
            #expect(CloseReason.classify(errno: e, connecting: true) == nil)
            #expect(SocketErrorOrigin(errno: e) == .bug)
            #expect(SocketErrorOrigin(errno: e).describe(e).contains("a bug in tcpopsd"))
        }
        for e in [EADDRNOTAVAIL, EPERM, ENOBUFS, ENOMEM] {
            #expect(CloseReason.classify(errno: e, connecting: true) == nil)
            #expect(SocketErrorOrigin(errno: e) == .host)
        }
    }

    @Test func reasonToEvent() {
        #expect(CloseReason.fin.event == .closed)
        #expect(CloseReason.refused.event == .reset)
        #expect(CloseReason.lifetime.event == .timeout)
        #expect(CloseReason.connectTimeout.rawValue == "connect-timeout")
        #expect(CloseReason.local.event == nil)
    }

    @Test func policy() {
        #expect(!EventPolicy.raises(mode: 0, enabled: true, side: .client, sides: [.client]))
        #expect(EventPolicy.raises(mode: 1, enabled: false, side: .client, sides: [.client, .upstream]))
        #expect(!EventPolicy.raises(mode: 2, enabled: false, side: .client, sides: [.client]))
        #expect(EventPolicy.raises(mode: 2, enabled: true, side: .upstream, sides: [.upstream]))
        #expect(!EventPolicy.raises(mode: 1, enabled: true, side: .upstream, sides: [.client]))
    }
}

@Suite struct TimerQueueTests {
    @Test func firesInOrderAndSkipsCancelled() {
        let q = TimerQueue()
        var fired: [Int] = []
        q.schedule(at: 300) { fired.append(3) }
        let c = q.schedule(at: 100) { fired.append(99) }
        q.schedule(at: 200) { fired.append(2) }
        q.schedule(at: 50) { fired.append(1) }
        q.cancel(c)
        #expect(q.millisecondsUntilNext(now: 0) == 1)  // 50 ns rounds up to 1 ms
        q.fire(now: 250)
        #expect(fired == [1, 2])
        #expect(q.millisecondsUntilNext(now: 250) == 1)
        q.fire(now: 1000)
        #expect(fired == [1, 2, 3])
        #expect(q.millisecondsUntilNext(now: 1000) == -1)
    }

    @Test func manyTimersStayOrdered() {
        let q = TimerQueue()
        var out: [UInt64] = []
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<5000 {
            let d = UInt64.random(in: 1...1_000_000, using: &rng)
            q.schedule(at: d) { out.append(d) }
        }
        q.fire(now: 2_000_000)
        #expect(out.count == 5000 && out == out.sorted())
    }
}

@Suite struct HandoverNameTests {
    @Test func roundTrip() {
        let c = CarriedSide(side: .upstream, clientConid: 41, upstreamConid: 42, lifetimeMs: 120_000, idleMs: 5, events: true, listener: "sip.v2")
        #expect(c.name == "tu.41.42.120000.5.1.sip.v2")
        #expect(CarriedSide(name: c.name) == c)
        // A client side behind a balancer carries the addresses its PROXY header gave (IPv4, IPv6).
        let v4 = CarriedSide(side: .client, clientConid: 41, upstreamConid: 42, lifetimeMs: 0, idleMs: 7, events: false, listener: "via.lb",
                             proxied: (try! SocketAddress.parse("203.0.113.9:41000"), try! SocketAddress.parse("198.51.100.2:5060")))
        #expect(v4.name == "tp.41.42.0.7.0.cb007109a028.c633640213c4.via.lb")
        #expect(CarriedSide(name: v4.name) == v4)
        #expect(CarriedSide(name: v4.name)?.proxied?.remote.description == "203.0.113.9:41000")
        let v6 = CarriedSide(side: .client, clientConid: 1, upstreamConid: 2, lifetimeMs: 3, idleMs: 4, events: true, listener: "x",
                             proxied: (try! SocketAddress.parse("[2001:db8::9]:5060"), try! SocketAddress.parse("[2001:db8::1]:5061")))
        #expect(CarriedSide(name: v6.name) == v6 && !v6.name.contains(":") && v6.name.count < 255)
        #expect(CarriedSide(name: "tp.1.2.3.4.0.zz.c633640213c4.x") == nil)
        #expect(CarriedSide(name: "tp.1.2.3.4.0.cb007109a028.x") == nil)
        #expect(!c.name.contains(":"))  // FDNAME may not contain ':'
    }

    @Test func rejectsOthers() {
        #expect(CarriedSide(name: "demo") == nil)
        #expect(CarriedSide(name: "tc.1.2.3.4.0.") == nil)
        #expect(CarriedSide(name: "tx.1.2.3.4.0.a") == nil)
        #expect(CarriedSide(name: "tc.a.2.3.4.0.a") == nil)
        #expect(CarriedSide(name: "tc.1.2.3.4.7.a") == nil)
    }
}
