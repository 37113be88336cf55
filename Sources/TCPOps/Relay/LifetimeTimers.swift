// Idle lifetimes: every connection with one, in a min-heap by deadline whose entries know their
// own place (Connection.lifetimeSlot), so that arming, re-arming and removing one allocates
// nothing and leaves nothing behind; the loop has one timer, for the earliest deadline. A
// connection's lifetime is checked when its deadline comes, not moved on every packet: if data
// moved meanwhile, it is armed again from its last activity.
import TCPOpsLoop

final class LifetimeTimers {
    private var heap: [Connection] = []
    private unowned let loop: EventLoop
    /// The loop timer set for the earliest deadline, and when.
    private var timer: (at: UInt64, id: TimerQueue.ID)?
    /// Told of each connection whose deadline came (it is no longer armed then).
    var expired: (Connection) -> Void = { _ in }

    init(loop: EventLoop) { self.loop = loop }

    var count: Int { heap.count }

    /// Arms (or moves) `c`'s deadline.
    func arm(_ c: Connection, at deadline: UInt64) {
        c.lifetimeDeadline = deadline
        if c.lifetimeSlot >= 0 {
            let i = Int(c.lifetimeSlot)
            siftUp(i)
            siftDown(Int(c.lifetimeSlot))
        } else {
            c.lifetimeSlot = Int32(heap.count)
            heap.append(c)
            siftUp(heap.count - 1)
        }
        scheduleEarliest()
    }

    /// `c` no longer has a deadline (closed, or its lifetime removed).
    func disarm(_ c: Connection) {
        guard c.lifetimeSlot >= 0 else { return }
        let i = Int(c.lifetimeSlot)
        c.lifetimeSlot = -1
        let last = heap.removeLast()
        if i < heap.count {
            heap[i] = last
            last.lifetimeSlot = Int32(i)
            siftUp(i)
            siftDown(Int(last.lifetimeSlot))
        }
        // The loop timer stays: when it comes with nothing due, it is set for the next deadline.
    }

    /// Forgets every deadline (the loop is done).
    func removeAll() {
        for c in heap { c.lifetimeSlot = -1 }
        heap.removeAll()
        if let t = timer { loop.timers.cancel(t.id) }
        timer = nil
    }

    private func scheduleEarliest() {
        guard let first = heap.first else { return }
        if let t = timer {
            if t.at <= first.lifetimeDeadline { return }
            loop.timers.cancel(t.id)
        }
        let at = first.lifetimeDeadline
        timer = (at, loop.timers.schedule(at: at) { [weak self] in
            self?.timer = nil
            self?.fire()
        })
    }

    private func fire() {
        let now = loop.now
        while let first = heap.first, first.lifetimeDeadline <= now {
            disarm(first)
            expired(first)
        }
        scheduleEarliest()
    }

    private func less(_ a: Int, _ b: Int) -> Bool { heap[a].lifetimeDeadline < heap[b].lifetimeDeadline }

    private func swapAt(_ a: Int, _ b: Int) {
        heap.swapAt(a, b)
        heap[a].lifetimeSlot = Int32(a)
        heap[b].lifetimeSlot = Int32(b)
    }

    private func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let parent = (i - 1) / 2
            if !less(i, parent) { return }
            swapAt(i, parent)
            i = parent
        }
    }

    private func siftDown(_ start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && less(l, m) { m = l }
            if r < heap.count && less(r, m) { m = r }
            if m == i { return }
            swapAt(i, m)
            i = m
        }
    }
}
