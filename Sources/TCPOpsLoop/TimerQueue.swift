// The loop's timers: one binary min-heap of deadlines, its head epoll_wait's timeout. Its entries
// know their own place in it (TimerSlot.timerSlot), so that arming, moving and removing one
// allocates nothing and leaves nothing behind: a relay's phase deadline and every connection's
// idle lifetime are entries themselves (thousands of them, moved as data flows), and a closure
// timer is a small `Handle` entry.

/// Something with a deadline in a loop's timers.
public protocol TimerSlot: AnyObject {
    /// When it fires (set by `TimerQueue.arm`).
    var timerDeadline: UInt64 { get set }
    /// Its index in the heap; -1 when not armed (start with -1).
    var timerSlot: Int32 { get set }
    /// Its deadline came; it is no longer armed.
    func timerFired()
}

public final class TimerQueue {
    /// A one-off timer made of a closure (`schedule`); `cancel` it through this.
    public final class Handle: TimerSlot {
        public var timerDeadline: UInt64 = 0
        public var timerSlot: Int32 = -1
        fileprivate var callback: (() -> Void)?

        fileprivate init(_ callback: @escaping () -> Void) { self.callback = callback }

        public func timerFired() {
            let cb = callback
            callback = nil
            cb?()
        }
    }
    public typealias ID = Handle

    private var heap: [any TimerSlot] = []

    public init() {}

    /// Armed entries.
    public var count: Int { heap.count }

    /// Arms (or moves) `t` to `deadline`.
    public func arm(_ t: any TimerSlot, at deadline: UInt64) {
        t.timerDeadline = deadline
        if t.timerSlot >= 0 {
            let i = Int(t.timerSlot)
            siftUp(i)
            siftDown(Int(t.timerSlot))
        } else {
            t.timerSlot = Int32(heap.count)
            heap.append(t)
            siftUp(heap.count - 1)
        }
    }

    /// `t` no longer has a deadline (nothing happens if it had none).
    public func disarm(_ t: any TimerSlot) {
        guard t.timerSlot >= 0 else { return }
        let i = Int(t.timerSlot)
        t.timerSlot = -1
        let last = heap.removeLast()
        if i < heap.count {
            heap[i] = last
            last.timerSlot = Int32(i)
            siftUp(i)
            siftDown(Int(last.timerSlot))
        }
    }

    @discardableResult
    public func schedule(at deadline: UInt64, _ callback: @escaping () -> Void) -> Handle {
        let h = Handle(callback)
        arm(h, at: deadline)
        return h
    }

    public func cancel(_ h: Handle) {
        h.callback = nil
        disarm(h)
    }

    /// Forgets every timer (the loop is done).
    public func removeAll() {
        for t in heap { t.timerSlot = -1 }
        heap.removeAll()
    }

    /// -1 (wait forever) when nothing is armed, else ms until the earliest deadline, rounded up.
    public func millisecondsUntilNext(now: UInt64) -> Int32 {
        guard let top = heap.first else { return -1 }
        if top.timerDeadline <= now { return 0 }
        let ms = (top.timerDeadline - now + 999_999) / 1_000_000
        return Int32(min(ms, UInt64(Int32.max)))
    }

    /// Fires every entry whose deadline has passed, earliest first (an entry armed again by
    /// another's firing, for a time already passed, fires in the same call).
    public func fire(now: UInt64) {
        while let top = heap.first, top.timerDeadline <= now {
            disarm(top)
            top.timerFired()
        }
    }

    @inline(__always) private func less(_ a: Int, _ b: Int) -> Bool { heap[a].timerDeadline < heap[b].timerDeadline }

    private func swapAt(_ a: Int, _ b: Int) {
        heap.swapAt(a, b)
        heap[a].timerSlot = Int32(a)
        heap[b].timerSlot = Int32(b)
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
