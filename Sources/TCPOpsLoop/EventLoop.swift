// The epoll reactor: one per thread. Owns its epoll fd, its fds' registrations (slots of the
// process-wide FDTable, with a generation packed beside the fd in each epoll event to drop stale
// events), its timers and its inbox.
import CShims
import Glibc
import TCPOpsPosix

/// What a registered fd's events go to. A class rather than a protocol so that a registration holds
/// it as one pointer (a protocol value is two): the fd-indexed table is 16 bytes a slot, in every
/// worker.
open class EventHandler {
    public init() {}

    /// Called on the loop's thread with the epoll event mask for this handler's fd.
    open func handleEvents(_ events: UInt32) {}
}

/// Told once at the end of the loop turn in which it asked (`EventLoop.atTurnEnd`): work that is
/// cheaper in a batch (events crossing to other threads) is gathered during a turn and sent then.
public protocol TurnEndHandler: AnyObject {
    func turnEnded()
}

public enum Events {
    public static let read = EPOLLIN.rawValue
    public static let write = EPOLLOUT.rawValue
    public static let readHangup = EPOLLRDHUP.rawValue
    public static let hangup = EPOLLHUP.rawValue
    public static let error = EPOLLERR.rawValue
    /// Wake only one of the loops waiting on a shared fd (registration only; never modified).
    public static let exclusive = EPOLLEXCLUSIVE.rawValue
    /// Edge-triggered: an fd is reported when its state changes (bytes came, room came, it hung
    /// up), not for as long as it stays so. Its owner must read until the socket says EAGAIN (or
    /// remember that it did not), and needs no epoll_ctl to stop watching what it cannot use now.
    public static let edge = EPOLLET.rawValue
}

public final class EventLoop {
    /// A slot's bits: the interest mask, with the parked flag in bit 30 (EPOLLONESHOT, which
    /// tcpopsd never asks for).
    private static let parkedBit: UInt32 = EPOLLONESHOT.rawValue

    private let epfd: Int32
    private let table = FDTable.shared
    /// Which fds this loop registered in the table (a bit each): what `close` gives back.
    private var owned: [UInt64] = []
    /// Registrations of an fd that other loops watch too (EPOLLEXCLUSIVE: a listening socket every
    /// worker accepts on): this loop's own, kept here (few), their generations marked by the top bit.
    private struct Shared {
        let handler: EventHandler
        let generation: UInt32
        var bits: UInt32
    }
    private var shared: [Int32: Shared] = [:]
    private static let sharedBit: UInt32 = 1 << 31
    private var events: [epoll_event]
    private var stopped = false
    public private(set) var now: UInt64
    public let timers = TimerQueue()
    public let inbox: Inbox
    private var turnEnd: [TurnEndHandler] = []
    private var turnEndRunning: [TurnEndHandler] = []

    /// The loop's clock (monotonic ns): injectable, so that timer behaviour can be tested by
    /// turning the loop at chosen times (`turn(at:)`) instead of waiting.
    private let clock: () -> UInt64

    public init(maxEventsPerWait: Int = 256, clock: @escaping () -> UInt64 = Clock.monotonicNanoseconds) throws(SystemError) {
        epfd = try sys("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        events = [epoll_event](repeating: epoll_event(), count: maxEventsPerWait)
        self.clock = clock
        now = clock()
        inbox = try Inbox()
        try register(inbox.fd, mask: Events.read, handler: InboxHandler(self))
    }

    deinit {
        closeFD(epfd)
    }

    /// Watches `fd` for `mask`. With `Events.exclusive` the fd may be watched by other loops too.
    public func register(_ fd: Int32, mask: UInt32, handler: EventHandler) throws(SystemError) {
        let index = Int(fd)
        let isShared = mask & Events.exclusive != 0
        guard isShared || table.slot(index) != nil else { throw SystemError("epoll_ctl(ADD)", EMFILE) }
        let gen = table.newGeneration() | (isShared ? EventLoop.sharedBit : 0)
        var ev = epoll_event()
        ev.events = mask
        ev.data.u64 = UInt64(gen) << 32 | UInt64(UInt32(bitPattern: fd))
        try sys("epoll_ctl(ADD)") { epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) }
        if isShared {
            shared[fd] = Shared(handler: handler, generation: gen, bits: mask & ~EventLoop.parkedBit)
        } else {
            table.fill(index, handler: handler, generation: gen, bits: mask & ~EventLoop.parkedBit)
            setOwned(index, true)
        }
    }

    /// The interest bits of `fd`'s registration in this loop (nil: none), and their update.
    private func bits(_ fd: Int32) -> UInt32? {
        if let s = ownSlot(fd) { return s.pointee.bits }
        return shared.isEmpty ? nil : shared[fd]?.bits
    }

    private func setBits(_ fd: Int32, _ bits: UInt32) {
        if let s = ownSlot(fd) {
            s.pointee.bits = bits
        } else {
            shared[fd]?.bits = bits
        }
    }

    private func generation(_ fd: Int32) -> UInt32 {
        if let s = ownSlot(fd) { return s.pointee.generation }
        return shared[fd]?.generation ?? 0
    }

    /// Whether `fd` is registered in this loop.
    public func isRegistered(_ fd: Int32) -> Bool { bits(fd) != nil }

    /// Drops `fd`'s registration in this loop (not epoll's).
    private func drop(_ fd: Int32) {
        if isOwned(Int(fd)) {
            table.clear(Int(fd))
            setOwned(Int(fd), false)
        } else {
            shared[fd] = nil
        }
    }

    private func setOwned(_ fd: Int, _ on: Bool) {
        let word = fd >> 6
        if word >= owned.count {
            guard on else { return }
            owned.append(contentsOf: repeatElement(0, count: max(word + 1 - owned.count, owned.count)))
        }
        if on { owned[word] |= 1 << UInt64(fd & 63) } else { owned[word] &= ~(1 << UInt64(fd & 63)) }
    }

    private func isOwned(_ fd: Int) -> Bool {
        let word = fd >> 6
        return fd >= 0 && word < owned.count && owned[word] & (1 << UInt64(fd & 63)) != 0
    }

    /// The slot of an fd this loop registered.
    private func ownSlot(_ fd: Int32) -> UnsafeMutablePointer<FDTable.Slot>? {
        isOwned(Int(fd)) ? table.slot(Int(fd)) : nil
    }

    /// Changes the interest mask; a no-op when it is unchanged. A parked fd goes back into epoll.
    /// (With `Events.edge`, a mask that gains an event already pending reports it at the next wait.)
    public func modify(_ fd: Int32, mask: UInt32) {
        guard let old = bits(fd), old != mask else { return }  // (a parked fd's bits differ from any mask)
        let parked = old & EventLoop.parkedBit != 0
        var ev = epoll_event()
        ev.events = mask
        ev.data.u64 = UInt64(generation(fd)) << 32 | UInt64(UInt32(bitPattern: fd))
        // Only fails for an fd that is not registered, which would be our bug; the next
        // dispatch then finds no registration and nothing is lost.
        _ = epoll_ctl(epfd, parked ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev)
        setBits(fd, mask & ~EventLoop.parkedBit)
    }

    /// Takes an fd out of epoll but keeps its registration (a level-triggered listening socket
    /// that cannot be served for a while would wake the loop at once, forever, and an
    /// EPOLLEXCLUSIVE registration cannot be modified). `modify` puts it back.
    public func park(_ fd: Int32) {
        guard let old = bits(fd), old & EventLoop.parkedBit == 0 else { return }
        var ev = epoll_event()
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev)
        setBits(fd, EventLoop.parkedBit)
    }

    /// Forgets an fd that is about to be closed, without epoll_ctl(DEL): closing the fd's only
    /// reference removes it from epoll, and a stale event already in this batch is dropped by
    /// its generation. Only for fds never shared with another process (all ours are CLOEXEC).
    public func forget(_ fd: Int32) {
        drop(fd)
    }

    /// Forgets an fd. Call before closing it.
    public func unregister(_ fd: Int32) {
        guard let old = bits(fd) else { return }
        if old & EventLoop.parkedBit == 0 {
            var ev = epoll_event()
            _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev)
        }
        drop(fd)
    }

    public func stop() { stopped = true }

    /// `h.turnEnded()` runs once after the events and timers of this turn (ask once per turn).
    public func atTurnEnd(_ h: TurnEndHandler) { turnEnd.append(h) }

    /// Runs what asked for the end of this turn (also after the loop stopped, for the last turn).
    public func endTurn() {
        while !turnEnd.isEmpty {
            swap(&turnEnd, &turnEndRunning)
            for h in turnEndRunning { h.turnEnded() }
            turnEndRunning.removeAll(keepingCapacity: true)
        }
    }

    /// After the last run: drops every registration, timer and queued job, so that handlers and
    /// closures that refer back to their owners (through the loop) are freed with them.
    public func close() {
        endTurn()
        turnEnd.removeAll()
        for (w, word) in owned.enumerated() where word != 0 {
            for bit in 0..<64 where word & (1 << UInt64(bit)) != 0 { table.clear(w << 6 | bit) }
        }
        owned.removeAll()
        shared.removeAll()
        timers.removeAll()
        inbox.discard()
    }

    /// One turn without epoll, at `now` (for tests with an injected clock): the timers due then
    /// fire, and the turn ends.
    public func turn(at now: UInt64) {
        self.now = now
        timers.fire(now: now)
        endTurn()
    }

    /// Runs until `stop()`. Only loop-integrity failures (epoll_wait itself failing) throw.
    public func run() throws(SystemError) {
        stopped = false
        endTurn()  // what was asked before the loop ran (adopted relays' interest, say)
        while !stopped {
            now = clock()
            let timeout = timers.millisecondsUntilNext(now: now)
            let n = try events.withUnsafeMutableBufferPointer { buf throws(SystemError) in
                try sys("epoll_wait") { epoll_wait(epfd, buf.baseAddress, Int32(buf.count), timeout) }
            }
            now = clock()
            inbox.drainQuiet(self)
            for i in 0..<Int(n) {
                let data = events[i].data.u64
                let fd = Int(UInt32(truncatingIfNeeded: data))
                let gen = UInt32(truncatingIfNeeded: data >> 32)
                let handler: EventHandler
                if gen & EventLoop.sharedBit != 0 {
                    guard let r = shared[Int32(fd)], r.generation == gen else { continue }
                    handler = r.handler
                } else {
                    // The generation first: a stale event's fd may be another loop's by now.
                    guard table.generation(fd) == gen, let p = table.slot(fd)?.pointee.handler else { continue }
                    handler = Unmanaged<EventHandler>.fromOpaque(p).takeUnretainedValue()
                }
                // (kept alive through its call: it may unregister itself)
                let mask = events[i].events
                withExtendedLifetime(handler) { handler.handleEvents(mask) }
            }
            timers.fire(now: now)
            endTurn()
        }
    }
}

/// Drains the inbox when its eventfd fires.
private final class InboxHandler: EventHandler {
    package unowned let loop: EventLoop
    package init(_ loop: EventLoop) { self.loop = loop }
    package override func handleEvents(_ events: UInt32) { loop.inbox.drain(loop) }
}
