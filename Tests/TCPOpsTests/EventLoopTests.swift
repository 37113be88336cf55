// The loop's fd registrations live in one process-wide table (FDTable): a stale event for an fd
// that another loop registered meanwhile must be dropped, not handed to that loop's handler.
import Glibc
import Testing
@testable import TCPOpsLoop
@testable import TCPOpsPosix

private final class Counting: EventHandler {
    var calls = 0
    var onCall: () -> Void = {}
    override func handleEvents(_ events: UInt32) {
        calls += 1
        onCall()
    }
}

private func readablePipe() throws -> (read: Int32, write: Int32) {
    var p: [Int32] = [0, 0]
    try #require(pipe(&p) == 0)
    var b: UInt8 = 1
    try #require(write(p[1], &b, 1) == 1)
    return (p[0], p[1])
}

@Suite struct EventLoopTests {
    /// Loop A's batch holds events for two fds; handling the first closes the second, and loop B
    /// registers that fd number anew. A must drop its stale event (neither its old handler nor
    /// B's is called), and B's registration must be untouched.
    @Test func aStaleEventForAnFdAnotherLoopTookIsDropped() throws {
        let a = try EventLoop()
        let b = try EventLoop()
        defer {
            a.close()
            b.close()
        }
        let first = try readablePipe()
        let second = try readablePipe()
        let replacement = try readablePipe()
        defer { for fd in [first.read, first.write, second.write, replacement.write, second.read] { close(fd) } }
        let h1 = Counting(), h2 = Counting(), h3 = Counting()
        h1.onCall = {
            a.forget(second.read)
            // The number second.read now names another pipe, registered by loop B.
            _ = dup2(replacement.read, second.read)
            close(replacement.read)
            try? b.register(second.read, mask: Events.read, handler: h3)
            a.stop()
        }
        try a.register(first.read, mask: Events.read, handler: h1)
        try a.register(second.read, mask: Events.read, handler: h2)
        try a.run()  // one turn: both were ready before it
        #expect(h1.calls == 1)
        #expect(h2.calls == 0 && h3.calls == 0)
        h3.onCall = { b.stop() }
        try b.run()
        #expect(h3.calls == 1)
    }

    /// An fd every worker watches (a listening socket, EPOLLEXCLUSIVE) has a registration in each
    /// loop: each loop's events go to its own handler.
    @Test func anFdWatchedByTwoLoopsReachesEachLoopsHandler() throws {
        let a = try EventLoop()
        let b = try EventLoop()
        defer {
            a.close()
            b.close()
        }
        let p = try readablePipe()
        defer { for fd in [p.read, p.write] { close(fd) } }
        let ha = Counting(), hb = Counting()
        ha.onCall = { a.stop() }
        hb.onCall = { b.stop() }
        try a.register(p.read, mask: Events.read | Events.exclusive, handler: ha)
        try b.register(p.read, mask: Events.read | Events.exclusive, handler: hb)
        // (a loop that never hears of its fd stops after a second instead of hanging the test)
        a.timers.schedule(at: a.now + 1_000_000_000) { a.stop() }
        b.timers.schedule(at: b.now + 1_000_000_000) { b.stop() }
        try a.run()
        try b.run()
        #expect(ha.calls >= 1 && hb.calls >= 1)
        a.unregister(p.read)
        #expect(b.isRegistered(p.read))
    }
}
