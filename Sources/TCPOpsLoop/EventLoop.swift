// The epoll reactor: one per thread. Owns its epoll fd, the fd registrations (a flat array indexed
// by fd, with a generation packed beside the fd to drop stale events), its timers and its inbox.
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
    /// 16 bytes: the handler, its generation, and the interest mask with the parked flag in its
    /// bit 30 (EPOLLONESHOT, which tcpopsd never asks for).
    private struct Registration {
        package let handler: EventHandler
        package let generation: UInt32
        private var bits: UInt32
        private static let parkedBit: UInt32 = EPOLLONESHOT.rawValue

        package init(handler: EventHandler, generation: UInt32, mask: UInt32) {
            self.handler = handler
            self.generation = generation
            bits = mask & ~Registration.parkedBit
        }

        package var mask: UInt32 {
            get { bits & ~Registration.parkedBit }
            set { bits = newValue & ~Registration.parkedBit | bits & Registration.parkedBit }
        }

        /// Taken out of epoll while nothing is wanted from it (see park).
        package var parked: Bool {
            get { bits & Registration.parkedBit != 0 }
            set { bits = newValue ? bits | Registration.parkedBit : bits & ~Registration.parkedBit }
        }
    }

    private let epfd: Int32
    private var registrations: [Registration?] = []
    private var nextGeneration: UInt32 = 1
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

    public func register(_ fd: Int32, mask: UInt32, handler: EventHandler) throws(SystemError) {
        let index = Int(fd)
        if index >= registrations.count {
            registrations.append(contentsOf: repeatElement(nil, count: max(index + 1 - registrations.count, registrations.count)))
        }
        let gen = nextGeneration
        nextGeneration &+= 1
        var ev = epoll_event()
        ev.events = mask
        ev.data.u64 = UInt64(gen) << 32 | UInt64(UInt32(bitPattern: fd))
        try sys("epoll_ctl(ADD)") { epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) }
        registrations[index] = Registration(handler: handler, generation: gen, mask: mask)
    }

    /// Changes the interest mask; a no-op when it is unchanged. A parked fd goes back into epoll.
    /// (With `Events.edge`, a mask that gains an event already pending reports it at the next wait.)
    public func modify(_ fd: Int32, mask: UInt32) {
        let index = Int(fd)
        guard index < registrations.count, var reg = registrations[index], reg.mask != mask || reg.parked else { return }
        var ev = epoll_event()
        ev.events = mask
        ev.data.u64 = UInt64(reg.generation) << 32 | UInt64(UInt32(bitPattern: fd))
        // Only fails for an fd that is not registered, which would be our bug; the next
        // dispatch then finds no registration and nothing is lost.
        _ = epoll_ctl(epfd, reg.parked ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev)
        reg.mask = mask
        reg.parked = false
        registrations[index] = reg
    }

    /// Takes an fd out of epoll but keeps its registration (a level-triggered listening socket
    /// that cannot be served for a while would wake the loop at once, forever, and an
    /// EPOLLEXCLUSIVE registration cannot be modified). `modify` puts it back.
    public func park(_ fd: Int32) {
        let index = Int(fd)
        guard index < registrations.count, var reg = registrations[index], !reg.parked else { return }
        var ev = epoll_event()
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev)
        reg.mask = 0
        reg.parked = true
        registrations[index] = reg
    }

    /// Forgets an fd that is about to be closed, without epoll_ctl(DEL): closing the fd's only
    /// reference removes it from epoll, and a stale event already in this batch is dropped by
    /// its generation. Only for fds never shared with another process (all ours are CLOEXEC).
    public func forget(_ fd: Int32) {
        let index = Int(fd)
        guard index < registrations.count else { return }
        registrations[index] = nil
    }

    /// Forgets an fd. Call before closing it.
    public func unregister(_ fd: Int32) {
        let index = Int(fd)
        guard index < registrations.count, registrations[index] != nil else { return }
        var ev = epoll_event()
        _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev)
        registrations[index] = nil
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
        registrations.removeAll()
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
                guard fd < registrations.count, let reg = registrations[fd], reg.generation == gen else { continue }
                reg.handler.handleEvents(events[i].events)
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
