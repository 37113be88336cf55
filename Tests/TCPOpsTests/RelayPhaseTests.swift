// The relay's phase machine driven by hand: real loopback sockets, but epoll's readiness is given
// to the relay directly (`handle`) and time passes only when the test turns the loop's injected
// clock (`turn(at:)`). Each phase, and each way a relay ends, without waiting for anything.
import Glibc
import Testing
@testable import TCPOps
@testable import TCPOpsEvents
@testable import TCPOpsMetrics
@testable import TCPOpsSystemd
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsRelay
@testable import TCPOpsProtocol

/// One worker's relay context on a loop whose clock the test sets, and the events it raised.
private final class Rig {
    final class Clock: @unchecked Sendable { var now: UInt64 = 1_000_000_000 }
    let clock = Clock()
    let loop: EventLoop
    let ctx: RelayContext
    var events: [TCPEvent] = []
    /// Where the relays' clients come from (the test's side of each client is `connect`ed to it).
    let front: Int32
    let frontAddress: SocketAddress
    private var open: [Int32] = []

    init() throws {
        let clock = self.clock
        loop = try EventLoop(clock: { clock.now })
        let logger = Logger(target: .stderr, level: .error)
        let dispatcher = EventDispatcher(logger: logger, hooks: nil)
        ctx = RelayContext(loop: loop, logger: logger, events: dispatcher, closedEventMode: 1, maxConnections: 100)
        (front, frontAddress) = try Rig.listener()
        open.append(front)
        dispatcher.observers.append { [unowned self] batch in self.events += batch }
        loop.turn(at: clock.now)
    }

    deinit {
        ctx.closeAll(why: "the test is over")
        ctx.shutdown()
        loop.close()
        for fd in open { closeFD(fd) }
    }

    /// A listening socket on 127.0.0.1 (backlog `backlog`) and its address.
    static func listener(backlog: Int32 = 16) throws -> (Int32, SocketAddress) {
        let fd = try Socket.listen(SocketAddress(family: .v4, bytes: [127, 0, 0, 1], port: 0), backlog: backlog)
        return (fd, Socket.localAddress(fd)!)
    }

    func keep(_ fd: Int32) -> Int32 {
        open.append(fd)
        return fd
    }

    /// The test closes `fd` itself.
    func forget(_ fd: Int32) { open.removeAll { $0 == fd } }

    func advance(_ ns: UInt64) {
        clock.now += ns
        loop.turn(at: clock.now)
    }

    /// A client connects; its accepted socket starts a relay. Returns the test's end and the relay.
    func start(_ settings: ListenerSettings) throws -> (client: Int32, relay: Relay) {
        let (fd, _) = try Socket.connect(frontAddress)
        let peer = try #require(try waitAccept(front))
        Relay.start(ctx: ctx, listener: settings, metrics: ctx.metrics.listener(settings.name), clientFD: peer,
                    local: frontAddress, remote: Socket.localAddress(fd))
        return (keep(fd), try #require(ctx.liveRelays.last))
    }

    func settings(_ upstreams: [SocketAddress], _ change: (inout ListenerSettings) -> Void = { _ in }) -> ListenerSettings {
        var s = ListenerSettings(name: "rig", listen: frontAddress, upstreams: upstreams.map { Upstream(address: $0) })
        change(&s)
        return s
    }

    func events(of conid: UInt64) -> [TCPEvent] { events.filter { $0.conid == conid } }

    /// A relay through to a fresh upstream listener, connected (epoll said writable): the test's
    /// ends of the client and of the upstream's accepted socket.
    func established(_ change: (inout ListenerSettings) -> Void = { _ in }) throws
        -> (client: Int32, relay: Relay, upstream: Connection, server: Int32, settings: ListenerSettings) {
        let (up, upAddress) = try Rig.listener()
        _ = keep(up)
        let settings = self.settings([upAddress], change)
        let (client, relay) = try start(settings)
        #expect(relay.phase == .connecting)
        let upstream = try #require(relay.upstream)
        let server = keep(try #require(try waitAccept(up)))
        relay.handle(upstream, Events.write)
        #expect(relay.phase == .relaying)
        return (client, relay, upstream, server, settings)
    }
}

/// Accepts one connection, waiting up to a second for the kernel's handshake.
private func waitAccept(_ fd: Int32) throws -> Int32? {
    for _ in 0..<1000 {
        if let (c, _) = try Socket.accept(fd) { return c }
        usleep(1000)
    }
    return nil
}

/// Waits until `fd` is readable (the kernel moved what the relay wrote), up to a second.
private func readable(_ fd: Int32) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&p, 1, 1000) == 1
}

private func write(_ fd: Int32, _ s: String) {
    var b = Array(s.utf8)
    _ = b.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

/// What `fd` has now ("" at its end of file), after waiting for it to be readable.
private func read(_ fd: Int32) -> String? {
    guard readable(fd) else { return nil }
    var b = [UInt8](repeating: 0, count: 4096)
    let n = b.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
    return n < 0 ? nil : String(decoding: b[0..<n], as: UTF8.self)
}

private func resetClose(_ fd: Int32) {
    var l = linger(l_onoff: 1, l_linger: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    close(fd)
}

@Suite(.serialized) struct RelayPhaseTests {
    /// connecting → relaying; the client's FIN, then the upstream's: two tcp:closed, one end.
    @Test func finFromEachSideEndsTheRelayOnce() throws {
        let rig = try Rig()
        let (client, relay, upstream, server, _) = try rig.established()
        write(client, "hello")
        #expect(readable(relay.client.fd))
        relay.handle(relay.client, Events.read)
        #expect(read(server) == "hello")
        shutdown(client, Int32(SHUT_WR))
        #expect(readable(relay.client.fd))
        relay.handle(relay.client, Events.read)
        #expect(read(server) == "")  // the FIN passed on
        #expect(rig.events(of: relay.client.conid).map(\.reason) == [.fin])
        #expect(relay.phase == .relaying)
        write(server, "bye")
        shutdown(server, Int32(SHUT_WR))
        // The data, then the FIN: as epoll would, the relay is told again while the socket is
        // readable (a pump moves what one turn allows).
        for _ in 0..<4 where relay.phase != .ended && readable(upstream.fd) {
            relay.handle(upstream, Events.read)
        }
        #expect(relay.phase == .ended)
        #expect(read(client) == "bye")
        #expect(rig.events.map(\.kind) == [.closed, .closed] && rig.events(of: upstream.conid).map(\.reason) == [.fin])
        #expect(rig.ctx.relays == 0 && !relay.client.fdOpen && !upstream.fdOpen)
        #expect(rig.loop.timers.count == 0)
    }

    /// Edge-triggered: the client's last bytes and its FIN come as one edge while the upstream
    /// still connects. No later edge tells of the FIN, and none is needed: the upstream gets the
    /// bytes, then the FIN.
    @Test func bytesAndTheirFINInOneEdgeWhileTheUpstreamConnects() throws {
        let rig = try Rig()
        let (up, upAddress) = try Rig.listener()
        _ = rig.keep(up)
        let (client, relay) = try rig.start(rig.settings([upAddress]))
        write(client, "last words")
        shutdown(client, Int32(SHUT_WR))
        #expect(readable(relay.client.fd))
        relay.handle(relay.client, Events.read | Events.readHangup)
        #expect(relay.phase == .connecting)
        let upstream = try #require(relay.upstream)
        let server = rig.keep(try #require(try waitAccept(up)))
        relay.handle(upstream, Events.write)
        #expect(read(server) == "last words")
        #expect(read(server) == "")
        #expect(rig.events(of: relay.client.conid).map(\.reason) == [.fin])
    }

    /// Edge-triggered: the client resets while its bytes wait for an upstream that does not read
    /// (the relay cannot read the client now). The error edge is the only one: it is taken now.
    @Test func anErrorEdgeWhileTheDestinationIsFullIsTakenAtOnce() throws {
        let rig = try Rig()
        let (client, relay, _, _, _) = try rig.established()
        relay.toUpstream.blocked = true  // the upstream's buffer is full: the client is not read
        write(client, "more")
        rig.forget(client)
        resetClose(client)
        #expect(readable(relay.client.fd))
        relay.handle(relay.client, Events.read | Events.readHangup | Events.error | Events.hangup)
        #expect(rig.events(of: relay.client.conid).map(\.kind) == [.reset])
    }

    /// The upstream resets with nothing held for the client: the relay ends at once, the upstream
    /// raises tcp:reset, the client is closed by tcpopsd (no event).
    @Test func aResetEndsTheRelay() throws {
        let rig = try Rig()
        let (client, relay, upstream, server, _) = try rig.established()
        rig.forget(server)
        resetClose(server)
        #expect(readable(upstream.fd))
        relay.handle(upstream, Events.read | Events.error | Events.hangup)
        #expect(relay.phase == .ended)
        #expect(rig.events.count == 1 && rig.events[0].kind == .reset && rig.events[0].conid == upstream.conid)
        #expect(relay.client.closeReason == .local)
        #expect(read(client) == "")
    }

    /// An idle client past its lifetime: tcp:timeout, reason lifetime, when the clock says so.
    @Test func theLifetimeEndsAnIdleRelayOnTime() throws {
        let rig = try Rig()
        let (_, relay, _, _, _) = try rig.established { $0.lifetime = 2 }
        rig.advance(1_900_000_000)
        #expect(relay.phase == .relaying)
        rig.advance(200_000_000)
        #expect(relay.phase == .ended)
        #expect(rig.events.map(\.reason) == [.lifetime] && rig.events[0].conid == relay.client.conid)
    }

    /// The first upstream refuses (its attempt raises tcp:reset refused under its own conid), the
    /// second answers: the relay goes on under attempt 1.
    @Test func aRefusedAttemptFailsOverToTheNext() throws {
        let rig = try Rig()
        let (closed, closedAddress) = try Rig.listener()
        closeFD(closed)  // nothing listens there now
        let (up, upAddress) = try Rig.listener()
        _ = rig.keep(up)
        let (_, relay) = try rig.start(rig.settings([closedAddress, upAddress]))
        if relay.attempt == 0, let first = relay.upstream {
            // Refused after the call (the kernel's RST comes a moment later): epoll would say EPOLLERR.
            usleep(20_000)
            relay.handle(first, Events.error | Events.hangup)
        }
        #expect(relay.attempt == 1 && relay.phase == .connecting)
        let refused = try #require(rig.events.first)
        #expect(refused.kind == .reset && refused.reason == .refused && refused.side == .upstream)
        #expect(refused.conid != relay.upstream?.conid)
        _ = rig.keep(try #require(try waitAccept(up)))
        relay.handle(try #require(relay.upstream), Events.write)
        #expect(relay.phase == .relaying && rig.events.count == 1)
    }

    /// An upstream that never answers (its accept queue is full: the SYN is dropped): the connect
    /// times out when the clock passes connect_timeout, and with no other address the relay ends.
    @Test func aConnectTimeoutPerAttempt() throws {
        let rig = try Rig()
        let (full, fullAddress) = try Rig.listener(backlog: 0)
        _ = rig.keep(full)
        var fillers: [Int32] = []
        for _ in 0..<3 { fillers.append(rig.keep(try Socket.connect(fullAddress).fd)) }
        usleep(50_000)
        let (_, relay) = try rig.start(rig.settings([fullAddress]) { $0.connectTimeout = 1 })
        let upstream = try #require(relay.upstream)
        #expect(relay.phase == .connecting && upstream.state == .connecting)
        rig.advance(900_000_000)
        #expect(relay.phase == .connecting)
        rig.advance(200_000_000)
        #expect(relay.phase == .ended)
        #expect(rig.events.map(\.reason) == [.connectTimeout] && rig.events[0].conid == upstream.conid)
    }

    /// accept_proxy: no header within proxy_header_timeout closes the client, no relay made, no event.
    @Test func aProxyHeaderThatNeverComes() throws {
        let rig = try Rig()
        let (client, relay) = try rig.start(rig.settings([try SocketAddress.parse("127.0.0.1:9")]) {
            $0.acceptProxy = true
            $0.proxyHeaderTimeout = 3
        })
        #expect(relay.phase == .awaitingHeader && relay.upstream == nil)
        write(client, "PROX")
        #expect(readable(relay.client.fd))
        relay.handle(relay.client, Events.read)
        #expect(relay.phase == .awaitingHeader && relay.proxyInput.count == 4)
        rig.advance(3_100_000_000)
        #expect(relay.phase == .ended && relay.upstream == nil)
        #expect(rig.events.isEmpty && rig.ctx.relays == 0)
        #expect(read(client) == "")
    }

    /// A handover while the upstream still connects: quiet at once, ready to be carried once the
    /// connect completes (it stays quiet: nothing more is read).
    @Test func aHandoverMidConnect() throws {
        let rig = try Rig()
        let (up, upAddress) = try Rig.listener()
        _ = rig.keep(up)
        let (_, relay) = try rig.start(rig.settings([upAddress]))
        let upstream = try #require(relay.upstream)
        try #require(upstream.state == .connecting)
        #expect(relay.quiet())
        #expect(relay.phase == .quieting && !relay.readyToCarry)
        _ = rig.keep(try #require(try waitAccept(up)))
        relay.handle(upstream, Events.write)
        #expect(relay.phase == .quieting && relay.readyToCarry)
        #expect(relay.carried.count == 2)
        relay.handedOver()
        #expect(relay.phase == .ended && rig.ctx.relays == 0 && rig.events.isEmpty)
    }

    /// Carried across a restart: the next process adopts the two sockets (here, copies of them
    /// taken before the handover), and the adopted relay relays and ends like any other.
    @Test func anAdoptedRelayRelaysAndEnds() throws {
        let rig = try Rig()
        let (client, relay, upstream, server, settings) = try rig.established()
        #expect(relay.quiet() && relay.readyToCarry)
        let sides = relay.carried.map { (fd: dup($0.fd), side: CarriedSide(name: $0.name)!) }
        relay.handedOver()
        Relay.adopt(ctx: rig.ctx, listener: settings, client: sides[0], upstream: sides[1])
        let adopted = try #require(rig.ctx.liveRelays.last)
        #expect(adopted.phase == .relaying && adopted.client.conid == relay.client.conid)
        let adoptedUpstream = try #require(adopted.upstream)
        #expect(adoptedUpstream.conid == upstream.conid)
        write(client, "again")
        #expect(readable(adopted.client.fd))
        adopted.handle(adopted.client, Events.read)
        #expect(read(server) == "again")
        shutdown(client, Int32(SHUT_WR))
        shutdown(server, Int32(SHUT_WR))
        for _ in 0..<4 where adopted.phase != .ended {
            if readable(adopted.client.fd) { adopted.handle(adopted.client, Events.read) }
            if adopted.phase != .ended && readable(adoptedUpstream.fd) { adopted.handle(adoptedUpstream, Events.read) }
        }
        #expect(adopted.phase == .ended)
        #expect(rig.events.map(\.reason) == [.fin, .fin] && rig.ctx.relays == 0)
    }
}
