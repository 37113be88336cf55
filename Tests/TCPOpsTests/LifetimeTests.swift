// Idle lifetimes on a loop with an injected clock: turned at chosen times, no waiting.
import CShims
import Testing
@testable import TCPOps
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsProtocol

@Suite struct LifetimeTimersTests {
    private func connection(_ conid: UInt64) -> Connection {
        Connection(conid: conid, side: .client, fd: -1, state: .ok, now: 0, eventsEnabled: true)
    }

    @Test func firesEachArmedDeadlineOnceInOrderAndNeverEarly() throws {
        let loop = try EventLoop(clock: { 0 })
        let timers = LifetimeTimers(loop: loop)
        var fired: [(conid: UInt64, at: UInt64, deadline: UInt64)] = []
        timers.expired = { c in fired.append((c.conid, loop.now, c.lifetimeDeadline)) }
        var rng = SystemRandomNumberGenerator()
        var conns: [Connection] = []
        var deadline: [UInt64: UInt64] = [:]
        for i in 0..<2000 {
            let c = connection(UInt64(i))
            let d = UInt64.random(in: 1...1_000, using: &rng) * 1_000_000
            timers.arm(c, at: d)
            deadline[c.conid] = d
            conns.append(c)
        }
        // Disarmed ones never fire; re-armed ones fire at their new deadline only.
        var gone = Set<UInt64>()
        for c in conns where c.conid % 3 == 0 {
            timers.disarm(c)
            gone.insert(c.conid)
        }
        for c in conns where c.conid % 3 == 1 {
            let d = UInt64.random(in: 1...2_000, using: &rng) * 1_000_000
            timers.arm(c, at: d)
            deadline[c.conid] = d
        }
        #expect(timers.count == 2000 - gone.count)
        var t: UInt64 = 0
        while t <= 2_100_000_000 {
            loop.turn(at: t)
            t += 7_000_000  // 7 ms turns: each fires what came due since the last
        }
        #expect(fired.count == 2000 - gone.count)
        #expect(Set(fired.map(\.conid)).count == fired.count)
        #expect(fired.allSatisfy { !gone.contains($0.conid) && $0.deadline == deadline[$0.conid] })
        #expect(fired.allSatisfy { $0.at >= $0.deadline && $0.at - $0.deadline < 7_000_000 })
        #expect(fired.map(\.deadline) == fired.map(\.deadline).sorted())
        #expect(timers.count == 0 && conns.allSatisfy { $0.lifetimeSlot == -1 })
        #expect(loop.timers.count <= 1)
    }

    @Test func anEarlierDeadlineMovesTheLoopTimer() throws {
        let loop = try EventLoop(clock: { 0 })
        let timers = LifetimeTimers(loop: loop)
        var fired: [UInt64] = []
        timers.expired = { fired.append($0.conid) }
        let late = connection(1), early = connection(2)
        timers.arm(late, at: 5_000_000_000)
        timers.arm(early, at: 1_000_000_000)
        loop.turn(at: 1_000_000_000)
        #expect(fired == [2])
        // Re-armed later (data moved): it does not fire at its old deadline.
        timers.arm(late, at: 9_000_000_000)
        loop.turn(at: 5_000_000_000)
        #expect(fired == [2])
        loop.turn(at: 9_000_000_000)
        #expect(fired == [2, 1])
    }
}

@Suite struct FootprintTests {
    /// What each relay holds: kept small on purpose (docs/benchmarks.md, userspace per idle relay).
    @Test func perRelayObjectsStaySmall() throws {
        #expect(MemoryLayout<SocketAddress?>.size == 19)
        // The block malloc gave the object (glibc: the request rounded up to 16, plus 8).
        let c = Connection(conid: 1, side: .client, fd: -1, state: .ok, now: 0, eventsEnabled: true)
        #expect(tcpops_malloc_usable_size(Unmanaged.passUnretained(c).toOpaque()) <= 136)
        // A relay holds its two directions inline.
        #expect(MemoryLayout<Direction>.size <= 32)
        let loop = try EventLoop()
        defer { loop.close() }
        let logger = Logger(target: .stderr, level: .error)
        let ctx = RelayContext(loop: loop, logger: logger, events: EventDispatcher(logger: logger, hooks: nil),
                               closedEventMode: 1, maxConnections: 10)
        let settings = ListenerSettings(name: "a", listen: try SocketAddress.parse("127.0.0.1:1"),
                                        upstreams: [Upstream(address: try SocketAddress.parse("127.0.0.1:2"))])
        let r = Relay(ctx: ctx, listener: settings, client: c, metrics: ctx.metrics.listener("a"))
        // Its directions inline, one phase timer, the drain and PROXY state out of line: 152 bytes (was 248 and two
        // 72-byte direction objects).
        #expect(tcpops_malloc_usable_size(Unmanaged.passUnretained(r).toOpaque()) <= 152)
    }
}
