// The daemon's parts that the black-box suite reaches only through a running tcpopsd: the ordered
// services and their one teardown, the listener reconciliation of a reload, and the hook queue.
import Glibc
import Testing
@testable import TCPOps
@testable import TCPOpsEvents
@testable import TCPOpsSystemd
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix

@Suite struct ServicesTests {
    final class Log { var lines: [String] = [] }

    @Test func stopsInReverseOrderOnceEachWithTheDeadline() throws {
        let log = Log()
        var services = Services()
        services.add("a") { log.lines.append("stop a \($0)") }
        try services.start("b", { () throws in log.lines.append("start b") }, stop: { log.lines.append("stop b \($0)") })
        services.add("c") { log.lines.append("stop c \($0)") }
        #expect(services.names == ["a", "b", "c"])
        services.stopAll(deadline: 7)
        #expect(log.lines == ["start b", "stop c 7", "stop b 7", "stop a 7"])
        services.stopAll(deadline: 8)  // nothing is stopped twice
        #expect(log.lines.count == 4)
        #expect(services.names.isEmpty)
    }

    struct Refused: Error {}

    @Test func aFailedStartStopsOnlyWhatStartedBefore() {
        let log = Log()
        var services = Services()
        services.add("first") { _ in log.lines.append("stop first") }
        #expect(throws: Refused.self) {
            try services.start("second", { throw Refused() }, stop: { _ in log.lines.append("stop second") })
        }
        #expect(services.names == ["first"])
        services.stopAll(deadline: 0)
        #expect(log.lines == ["stop first"])
    }
}

@Suite struct ListenerReconciliationTests {
    typealias Plan = ListenerReconciliation<String>

    func address(_ port: UInt16) -> SocketAddress { SocketAddress(family: .v4, bytes: [127, 0, 0, 1], port: port) }

    func settings(_ name: String, _ port: UInt16, upstream: UInt16 = 9000) -> ListenerSettings {
        ListenerSettings(name: name, listen: address(port), upstream: address(upstream))
    }

    /// The listeners now: each named group is "old:NAME".
    func current(_ list: [ListenerSettings]) -> [String: Plan.Current] {
        Dictionary(uniqueKeysWithValues: list.map { ($0.name, ("old:\($0.name)", $0)) })
    }

    struct BindFailed: Error, CustomStringConvertible {
        var description: String { "Address already in use" }
    }

    @Test func keepsWantedAddressesBindsNewOnesAndRetiresTheRestLast() {
        var bound: [String] = []
        let now = current([settings("a", 1000), settings("b", 1001), settings("gone", 1002)])
        let plan = Plan(current: now, wanted: [settings("a", 1000, upstream: 9001), settings("b", 1001), settings("c", 1003)]) { s in
            bound.append(s.name)
            return "new:\(s.name)"
        }
        #expect(bound == ["c"])
        #expect(plan.next.mapValues(\.group) == ["a": "old:a", "b": "old:b", "c": "new:c"])
        #expect(plan.next["a"]?.settings == settings("a", 1000, upstream: 9001))
        #expect(plan.retire.map(\.group) == ["old:gone"])
        #expect(plan.failures.isEmpty)
        let kinds = plan.steps.map { step -> String in
            switch step {
            case let .kept(s, changed): return "kept \(s.name) \(changed)"
            case let .bound(s): return "bound \(s.name)"
            case let .failed(name, _, _, _): return "failed \(name)"
            }
        }
        #expect(kinds == ["kept a true", "kept b false", "bound c"])
    }

    @Test func aRenameOnTheSameAddressKeepsTheSocket() {
        let plan = Plan(current: current([settings("old-name", 1000)]), wanted: [settings("new-name", 1000)]) { _ in
            Issue.record("nothing is bound: the address listens already")
            return "x"
        }
        #expect(plan.next.mapValues(\.group) == ["new-name": "old:old-name"])
        #expect(plan.retire.isEmpty)
    }

    @Test func aMoveThatCannotBindKeepsTheOldSocketAndSettings() {
        let before = settings("a", 1000)
        let plan = Plan(current: current([before]), wanted: [settings("a", 1001)]) { _ in throw BindFailed() }
        #expect(plan.next["a"]?.group == "old:a")
        #expect(plan.next["a"]?.settings == before)
        #expect(plan.retire.isEmpty)  // it still listens: not retired
        #expect(plan.failures == ["listener \"a\": cannot listen on 127.0.0.1:1001: Address already in use; "
                                  + "it keeps listening on 127.0.0.1:1000 with its previous settings"])
    }

    @Test func aNewListenerThatCannotBindIsNotListening() {
        let plan = Plan(current: [:], wanted: [settings("n", 1000)]) { _ in throw BindFailed() }
        #expect(plan.next.isEmpty)
        #expect(plan.failures == ["listener \"n\": cannot listen on 127.0.0.1:1000: Address already in use; it is not listening"])
    }

    @Test func anUnusableListenerKeepsItsPreviousSettingsUnlessItsAddressWasTaken() {
        // "a" cannot be applied (no upstream address): it keeps its socket and settings.
        var plan = Plan(current: current([settings("a", 1000), settings("b", 1001)]), wanted: [settings("a", 1005), settings("b", 1001)],
                        unusable: ["a": "no address for upstream x.invalid"]) { _ in "new" }
        #expect(plan.next["a"]?.group == "old:a" && plan.next["a"]?.settings == settings("a", 1000))
        #expect(plan.retire.isEmpty)
        #expect(plan.failures == ["listener \"a\": no address for upstream x.invalid; it keeps its previous settings on 127.0.0.1:1000"])
        // Another listener took a's address first: a cannot fall back to it.
        plan = Plan(current: current([settings("a", 1000)]), wanted: [settings("b", 1000), settings("a", 1005)],
                    unusable: ["a": "no address"]) { _ in "new" }
        #expect(plan.next.mapValues(\.group) == ["b": "old:a"])
        #expect(plan.failures == ["listener \"a\": no address; it is not listening"])
    }

    @Test func swappedAddressesKeepBothSockets() {
        let plan = Plan(current: current([settings("a", 1000), settings("b", 1001)]), wanted: [settings("a", 1001), settings("b", 1000)]) { _ in
            Issue.record("both addresses listen already")
            return "x"
        }
        #expect(plan.next.mapValues(\.group) == ["a": "old:b", "b": "old:a"])
        #expect(plan.retire.isEmpty)
    }
}

@Suite struct HookQueueTests {
    @Test func firstInFirstOutAcrossCompactions() {
        var q = HookQueue<Int>()
        var popped: [Int] = []
        var next = 0
        // Pushes outpace pops for a while (the front is given back as it goes), then it empties.
        for round in 0..<40 {
            for _ in 0..<(round < 20 ? 200 : 10) {
                q.append(next)
                next += 1
            }
            for _ in 0..<150 {
                guard let j = q.popFirst() else { break }
                popped.append(j)
            }
            // At most 1,024 popped slots, or as many as wait: never the whole history.
            #expect(q.storage <= max(2 * q.count, q.count + 1024), "popped slots are given back")
        }
        while let j = q.popFirst() { popped.append(j) }
        #expect(popped == Array(0..<next))
        #expect(q.isEmpty && q.count == 0)
    }

    @Test func removeAllCountsWhatWaited() {
        var q = HookQueue<String>()
        for s in ["a", "b", "c"] { q.append(s) }
        #expect(q.popFirst() == "a")
        #expect(q.removeAll() == 2)
        #expect(q.popFirst() == nil)
    }

    /// The runner's admission, for real: with queue_limit 3, a runner that never gets to run its
    /// jobs holds 3 and drops (and counts) the rest; events of a kind without a hook are not queued.
    static func event(_ kind: EventKind, _ conid: UInt64) -> TCPEvent {
        TCPEvent(kind: kind, reason: kind == .reset ? .rst : .fin, conid: conid, peerConid: nil, side: .client, listener: "l",
                 local: nil, remote: nil, durationMs: 0, bytesIn: 0, bytesOut: 0)
    }

    @Test func submitsPastTheQueueLimitAreDroppedAndCounted() throws {
        var events = EventSettings()
        events.callback = ["/bin/true"]
        events.queueLimit = 3
        let runner = try HookRunner(settings: HookRunner.Settings(events, controlSocket: "/nonexistent"),
                                    logger: Logger(target: .stderr, level: .error))
        defer { runner.shutdown(deadline: 0) }
        let settings = HookRunner.Settings(events, controlSocket: "/nonexistent")
        for conid in 1...5 as ClosedRange<UInt64> {
            runner.submit(HookQueueTests.event(.closed, conid), settings)
        }
        #expect(runner.queued == 3)
        #expect(runner.snapshot.dropped == 2)
        var none = EventSettings()
        none.queueLimit = 3
        runner.submit(HookQueueTests.event(.reset, 9), HookRunner.Settings(none, controlSocket: ""))
        #expect(runner.queued == 3 && runner.snapshot.dropped == 2)
    }
}
