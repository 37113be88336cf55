// A thread that does one kind of blocking write (a notify datagram, a journal entry, a line on
// stderr) for the event loops, so that none of them ever waits on a receiver that stopped reading.
// Loops queue items without blocking; the queue is bounded (by a cost per item: one each, or the
// bytes an item holds) and what it cannot take is counted.
import CShims
import Glibc

public final class SideChannel<Item: Sendable>: Sendable {
    private struct State {
        package var items: [Item] = []
        /// The writer is (about to be) asleep on `wake`.
        package var idle = false
        /// The writer is writing a batch it took.
        package var busy = false
        package var dropped: UInt64 = 0
        /// The cost of the items queued and of the batch being written (it is memory until written).
        package var queued = 0
        package var writing = 0
        /// stop() was called: the writer ends once the queue is empty.
        package var stopping = false
    }

    private let state = Locked(State())
    /// A blocking eventfd the writer sleeps on; written only when it is idle.
    private let wake: Int32
    private let limit: Int
    private let cost: @Sendable (Item) -> Int
    private let thread: PosixThread

    /// `write` runs on the channel's own thread, one item at a time, in order. `dropped` is told
    /// (on that thread) how many items were dropped since it was last told, whenever some were.
    /// What is queued and not yet written costs at most `limit`, each item `cost(item)` (1 by default:
    /// a count).
    public init(name: String, limit: Int, cost: @escaping @Sendable (Item) -> Int = { _ in 1 }, write: @escaping @Sendable (Item) -> Void,
                dropped: @escaping @Sendable (UInt64) -> Void = { _ in }) throws(SystemError) {
        self.limit = limit
        self.cost = cost
        thread = PosixThread(name: name)
        wake = try sys("eventfd") { eventfd(0, Int32(EFD_CLOEXEC)) }
        // The writer holds the channel until stop() lets it end (the owner's deinit calls it).
        let me = Unmanaged.passRetained(self)
        do {
            try thread.start {
                let channel = me.takeRetainedValue()
                channel.run(write: write, dropped: dropped)
            }
        } catch {
            me.release()
            closeFD(wake)
            throw error
        }
        // Never joined: stop() lets it end, and a writer blocked on a stuck receiver must not hold
        // up the exit (flush has its deadline).
        thread.detach()
    }

    deinit { closeFD(wake) }

    /// Lets the writer end once what is queued is written.
    public func stop() {
        let signal = state.withLock { s -> Bool in
            s.stopping = true
            let wasIdle = s.idle
            s.idle = false
            return wasIdle
        }
        if signal {
            var one: UInt64 = 1
            _ = Glibc.write(wake, &one, 8)
        }
    }

    /// Queues `item`; never blocks on the writer. `replaces` says whether the last queued item is
    /// made redundant by this one (a newer STATUS=, say) and is replaced in place; `essential`
    /// items are kept even past the limit.
    @discardableResult
    public func submit(_ item: Item, essential: Bool = false, replaces: ((Item) -> Bool)? = nil) -> Bool {
        let c = cost(item)
        let (taken, signal) = state.withLock { s -> (Bool, Bool) in
            if let replaces, let last = s.items.last, replaces(last) {
                s.queued += c - cost(last)
                s.items[s.items.count - 1] = item
                return (true, false)
            }
            guard essential || s.queued + c <= limit else {
                s.dropped += 1
                return (false, false)
            }
            s.queued += c
            s.items.append(item)
            let signal = s.idle
            s.idle = false
            return (true, signal)
        }
        if signal {
            var one: UInt64 = 1
            _ = Glibc.write(wake, &one, 8)
        }
        return taken
    }

    /// Queues several items under one lock and with at most one wake-up; what is past the limit
    /// is dropped and counted. Returns how many were taken.
    @discardableResult
    public func submit(contentsOf items: [Item]) -> Int {
        let costs = items.map(cost)
        let (taken, signal) = state.withLock { s -> (Int, Bool) in
            var taken = 0
            while taken < items.count && s.queued + costs[taken] <= limit {
                s.queued += costs[taken]
                taken += 1
            }
            if taken == items.count { s.items.append(contentsOf: items) } else { s.items.append(contentsOf: items[..<taken]) }
            s.dropped += UInt64(items.count - taken)
            let signal = taken > 0 && s.idle
            if signal { s.idle = false }
            return (taken, signal)
        }
        if signal {
            var one: UInt64 = 1
            _ = Glibc.write(wake, &one, 8)
        }
        return taken
    }

    /// Waits (sleeping 1 ms at a time) until everything queued was written, or the deadline
    /// (monotonic ns) passed. For the end of the process.
    @discardableResult
    public func flush(deadline: UInt64) -> Bool {
        while true {
            if state.withLock({ $0.items.isEmpty && !$0.busy }) { return true }
            if Clock.monotonicNanoseconds() >= deadline { return false }
            usleep(1000)
        }
    }

    private func run(write: (Item) -> Void, dropped: (UInt64) -> Void) {
        while true {
            let (batch, lost) = state.withLock { s -> ([Item], UInt64) in
                let lost = s.dropped
                s.dropped = 0
                // The batch just written is no longer held.
                s.queued -= s.writing
                s.writing = s.queued
                if s.items.isEmpty {
                    s.busy = false
                    s.idle = !s.stopping
                    return ([], lost)
                }
                s.busy = true
                defer { s.items = [] }
                return (s.items, lost)
            }
            if lost > 0 { dropped(lost) }
            if batch.isEmpty {
                if state.withLock({ $0.stopping }) { return }
                var value: UInt64 = 0
                _ = Glibc.read(wake, &value, 8)
                continue
            }
            for item in batch { write(item) }
        }
    }
}
