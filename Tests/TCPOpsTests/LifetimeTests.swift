// Idle lifetimes and other deadlines as entries of the loop's one timer heap, on a loop with an
// injected clock: turned at chosen times, no waiting.
import CShims
import Testing
@testable import TCPOps
@testable import TCPOpsMetrics
@testable import TCPOpsSystemd
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsRelay
@testable import TCPOpsProtocol

/// An entry that records when it fired (a connection's lifetime, without a relay around it).
private final class Probe: TimerSlot {
    let conid: UInt64
    var timerDeadline: UInt64 = 0
    var timerSlot: Int32 = -1
    let fired: (Probe) -> Void
    init(_ conid: UInt64, _ fired: @escaping (Probe) -> Void) {
        self.conid = conid
        self.fired = fired
    }
    func timerFired() { fired(self) }
}

@Suite struct LifetimeTimersTests {
    @Test func firesEachArmedDeadlineOnceInOrderAndNeverEarly() throws {
        let loop = try EventLoop(clock: { 0 })
        let timers = loop.timers
        var fired: [(conid: UInt64, at: UInt64, deadline: UInt64)] = []
        var rng = SystemRandomNumberGenerator()
        var conns: [Probe] = []
        var deadline: [UInt64: UInt64] = [:]
        for i in 0..<2000 {
            let c = Probe(UInt64(i)) { c in fired.append((c.conid, loop.now, c.timerDeadline)) }
            let d = UInt64.random(in: 1...1_000, using: &rng) * 1_000_000
            timers.arm(c, at: d)
            deadline[c.conid] = d
            conns.append(c)
        }
        // A closure timer among them, and one cancelled: the same heap.
        var closureFired = 0
        timers.schedule(at: 500_000_000) { closureFired += 1 }
        let cancelled = timers.schedule(at: 400_000_000) { closureFired += 100 }
        timers.cancel(cancelled)
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
        #expect(timers.count == 2000 - gone.count + 1)
        var t: UInt64 = 0
        while t <= 2_100_000_000 {
            loop.turn(at: t)
            t += 7_000_000  // 7 ms turns: each fires what came due since the last
        }
        #expect(fired.count == 2000 - gone.count)
        #expect(closureFired == 1)
        #expect(Set(fired.map(\.conid)).count == fired.count)
        #expect(fired.allSatisfy { !gone.contains($0.conid) && $0.deadline == deadline[$0.conid] })
        #expect(fired.allSatisfy { $0.at >= $0.deadline && $0.at - $0.deadline < 7_000_000 })
        #expect(fired.map(\.deadline) == fired.map(\.deadline).sorted())
        #expect(timers.count == 0 && conns.allSatisfy { $0.timerSlot == -1 })
    }

    @Test func anEarlierDeadlineComesFirstAndAMovedOneOnlyAtItsNewTime() throws {
        let loop = try EventLoop(clock: { 0 })
        var fired: [UInt64] = []
        let late = Probe(1) { fired.append($0.conid) }, early = Probe(2) { fired.append($0.conid) }
        loop.timers.arm(late, at: 5_000_000_000)
        loop.timers.arm(early, at: 1_000_000_000)
        #expect(loop.timers.millisecondsUntilNext(now: 0) == 1000)
        loop.turn(at: 1_000_000_000)
        #expect(fired == [2])
        // Re-armed later (data moved): it does not fire at its old deadline.
        loop.timers.arm(late, at: 9_000_000_000)
        loop.turn(at: 5_000_000_000)
        #expect(fired == [2])
        loop.turn(at: 9_000_000_000)
        #expect(fired == [2, 1])
        #expect(loop.timers.millisecondsUntilNext(now: 9_000_000_000) == -1)
    }

    /// A connection is its own lifetime entry: armed and disarmed in place, nothing allocated.
    @Test func aConnectionIsItsOwnEntry() throws {
        let loop = try EventLoop(clock: { 0 })
        let c = Connection(conid: 7, side: .client, fd: -1, state: .ok, now: 0, eventsEnabled: true)
        loop.timers.arm(c, at: 3_000_000_000)
        #expect(c.timerSlot == 0 && c.timerDeadline == 3_000_000_000 && loop.timers.count == 1)
        loop.timers.disarm(c)
        #expect(c.timerSlot == -1 && loop.timers.count == 0)
        loop.timers.arm(c, at: 1)
        loop.turn(at: 2)  // no relay: firing does nothing but disarm it
        #expect(c.timerSlot == -1 && loop.timers.count == 0)
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
