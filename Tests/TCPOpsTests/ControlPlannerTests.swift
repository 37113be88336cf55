// The control planner on the control thread's side: a request is checked before any worker is
// asked, each worker is asked once through its own inbox (worker 0 like the rest), the answer is
// made when the last part is back, and a worker that does not answer within the deadline is named
// in an error (its late part changes nothing). The workers' loops and the control loop are turned
// by hand here, so every ordering is the test's choice.
import Testing
@testable import TCPOps
@testable import TCPOpsMetrics
@testable import TCPOpsSystemd
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsRelay
@testable import TCPOpsProtocol

private final class Planner {
    final class Clock: @unchecked Sendable { var now: UInt64 = 1_000_000_000 }
    let clock = Clock()
    let control: EventLoop
    let workers: [RelayWorker]
    let target: ControlTarget
    var answers: [String] = []

    init(workers count: Int, listeners: [ListenerSettings] = []) throws {
        let clock = self.clock
        control = try EventLoop(clock: { clock.now })
        let logger = Logger(target: .stderr, level: .error)
        let generation = Generation(number: 1, maxConnections: 100, closedEventMode: 1, listeners: listeners)
        let shared = RelayShared()
        let metrics = DaemonMetrics()
        workers = try (0..<count).map {
            RelayWorker(index: $0, count: count, loop: try EventLoop(), logger: logger, hooks: nil, shared: shared, generation: generation,
                        metrics: metrics)
        }
        target = ControlTarget(workers: workers, hooks: nil, subscriberCount: { 0 }, loop: control, generation: generation)
        control.turn(at: clock.now)
    }

    deinit {
        for w in workers { w.finish() }
        control.close()
    }

    func ask(_ json: String) {
        guard case .success(let r) = ControlRequest.decode(Array(json.utf8)) else {
            Issue.record("the test's request does not decode: \(json)")
            return
        }
        target.execute(r) { [unowned self] in answers.append($0) }
    }

    /// Worker `i` runs what was posted to it.
    func turnWorker(_ i: Int) { workers[i].loop.inbox.drain(workers[i].loop) }

    /// The control thread takes what came back, at the time `after` ns from now.
    func turnControl(after ns: UInt64 = 0) {
        clock.now += ns
        control.inbox.drain(control)
        control.turn(at: clock.now)
    }
}

@Suite struct ControlPlannerTests {
    @Test func aBadRequestIsAnsweredAtOnceWithoutAskingAWorker() throws {
        let p = try Planner(workers: 2)
        p.ask(#"{"id":1,"cmd":"alive"}"#)
        p.ask(#"{"id":2,"cmd":"keepalive-enable","conid":5,"idle":0,"count":3,"interval":10}"#)
        p.ask(#"{"id":3,"cmd":"send","conid":5,"data":"!!"}"#)
        p.ask(#"{"id":4,"cmd":"no-such-thing"}"#)
        #expect(p.answers.count == 4)
        #expect(p.answers[0].contains(#""ok":false"#) && p.answers[0].contains("missing 'conid'"))
        #expect(p.answers[1].contains("keepalive values out of range"))
        #expect(p.answers[2].contains("'data' must be base64"))
        #expect(p.answers[3].contains(#"unknown command \"no-such-thing\""#))
        // Nothing reached a worker: their inboxes are empty (a drain runs nothing, answers nothing).
        p.turnWorker(0)
        p.turnWorker(1)
        p.turnControl()
        #expect(p.answers.count == 4)
    }

    @Test func theAnswerWaitsForEveryWorkerIncludingWorkerZero() throws {
        let p = try Planner(workers: 3)
        p.ask(#"{"id":7,"cmd":"stats"}"#)
        #expect(p.answers.isEmpty)
        p.turnWorker(2)
        p.turnWorker(1)
        p.turnControl()
        #expect(p.answers.isEmpty, "worker 0 has not answered yet")
        p.turnWorker(0)
        #expect(p.answers.isEmpty, "a part is made into the answer on the control thread only")
        p.turnControl()
        #expect(p.answers.count == 1)
        #expect(p.answers[0].contains(#""id":7,"ok":true"#) && p.answers[0].contains(#""workers":3"#))
    }

    @Test func aStuckWorkerIsNamedAndItsLatePartChangesNothing() throws {
        let p = try Planner(workers: 2)
        p.ask(#"{"id":8,"cmd":"alive","conid":42}"#)
        p.turnWorker(0)
        p.turnControl(after: ControlTarget.workerDeadline - 1_000_000)
        #expect(p.answers.isEmpty)
        p.turnControl(after: 2_000_000)
        #expect(p.answers.count == 1)
        #expect(p.answers[0].contains("worker(s) 1 did not answer within 5 s"))
        p.turnWorker(1)
        p.turnControl()
        #expect(p.answers.count == 1)
    }

    @Test func aConnectionNobodyHasIsGoneAndListenersAreTheGenerations() throws {
        let l = ListenerSettings(name: "sip", listen: SocketAddress(family: .v4, bytes: [127, 0, 0, 1], port: 5060),
                                 upstream: SocketAddress(family: .v4, bytes: [127, 0, 0, 1], port: 5080))
        let p = try Planner(workers: 2, listeners: [l])
        p.ask(#"{"id":1,"cmd":"alive","conid":42}"#)
        p.ask(#"{"id":2,"cmd":"list","listener":"sip"}"#)
        p.ask(#"{"id":3,"cmd":"list","listener":"nope"}"#)
        p.turnWorker(0)
        p.turnWorker(1)
        p.turnControl()
        #expect(p.answers.count == 3)
        #expect(p.answers.contains(#"{"id":1,"ok":true,"result":-1}"#))
        #expect(p.answers.contains(#"{"id":2,"ok":true,"result":[]}"#))
        #expect(p.answers.contains { $0.contains(#""id":3,"ok":false"#) && $0.contains(#"no listener named \"nope\""#) })
        // A reload's generation names other listeners.
        p.target.generation = Generation(number: 2, maxConnections: 100, closedEventMode: 1)
        p.ask(#"{"id":4,"cmd":"list","listener":"sip"}"#)
        p.turnWorker(0)
        p.turnWorker(1)
        p.turnControl()
        #expect(p.answers.last?.contains(#"no listener named \"sip\""#) == true)
    }
}
