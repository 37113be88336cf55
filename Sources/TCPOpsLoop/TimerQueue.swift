// The loop's timers: a binary min-heap of deadlines; its head is epoll_wait's timeout. Cancelling
// drops the callback and leaves the heap entry to be skipped when it comes up.

public final class TimerQueue {
    public typealias ID = UInt64
    private struct Entry {
        package let deadline: UInt64
        package let id: ID
    }

    private var heap: [Entry] = []
    private var callbacks: [ID: () -> Void] = [:]
    private var nextID: ID = 1

    public init() {}

    public var count: Int { callbacks.count }

    @discardableResult
    public func schedule(at deadline: UInt64, _ callback: @escaping () -> Void) -> ID {
        let id = nextID
        nextID += 1
        callbacks[id] = callback
        push(Entry(deadline: deadline, id: id))
        return id
    }

    /// Forgets every timer (the loop is done).
    public func removeAll() {
        heap.removeAll()
        callbacks.removeAll()
    }

    public func cancel(_ id: ID) {
        callbacks[id] = nil
        // Keep the heap from filling with cancelled entries.
        if heap.count > 64 && heap.count > callbacks.count * 4 {
            heap.removeAll { callbacks[$0.id] == nil }
            heapify()
        }
    }

    /// -1 (wait forever) when nothing is scheduled, else ms until the earliest deadline, rounded up.
    public func millisecondsUntilNext(now: UInt64) -> Int32 {
        while let top = heap.first, callbacks[top.id] == nil { _ = pop() }
        guard let top = heap.first else { return -1 }
        if top.deadline <= now { return 0 }
        let ms = (top.deadline - now + 999_999) / 1_000_000
        return Int32(min(ms, UInt64(Int32.max)))
    }

    /// Runs every callback whose deadline has passed, earliest first.
    public func fire(now: UInt64) {
        while let top = heap.first, top.deadline <= now {
            _ = pop()
            if let cb = callbacks.removeValue(forKey: top.id) { cb() }
        }
    }

    private func push(_ e: Entry) {
        heap.append(e)
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if heap[parent].deadline <= heap[i].deadline { break }
            heap.swapAt(parent, i)
            i = parent
        }
    }

    private func pop() -> Entry {
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            siftDown(0)
        }
        return top
    }

    private func siftDown(_ start: Int) {
        var i = start
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && heap[l].deadline < heap[m].deadline { m = l }
            if r < heap.count && heap[r].deadline < heap[m].deadline { m = r }
            if m == i { return }
            heap.swapAt(i, m)
            i = m
        }
    }

    private func heapify() {
        var i = heap.count / 2
        while i > 0 {
            i -= 1
            siftDown(i)
        }
    }
}
