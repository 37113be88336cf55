// What every relay on one loop shares: the loop, the pipe pool, the connection table, where
// events go, and the counters. Lives on the loop's thread (one per worker); what the workers
// share is in `RelayShared` (atomics only: conids, the connection count max_connections bounds).
import Synchronization
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix

/// Shared by every worker: conids (unique and increasing across workers and restarts) and the
/// connections tracked by all of them (for max_connections). Counters only: the settings a reload
/// changes reach each worker as a `Generation`.
public final class RelayShared: Sendable {
    package let nextConid = Atomic<UInt64>(1)
    package let connections = Atomic<Int>(0)
    /// Of `connections`, those still awaiting their PROXY header: they count against no
    /// max_connections (proxy_header_max_pending bounds them, per listener) until it came.
    package let awaitingHeader = Atomic<Int>(0)

    public init() {}

    /// Conids up to `last` were handed out by a previous process: never again.
    public func adopted(last: UInt64) {
        var current = nextConid.load(ordering: .relaxed)
        while current <= last {
            let (done, now) = nextConid.compareExchange(expected: current, desired: last + 1, ordering: .relaxed)
            if done { return }
            current = now
        }
    }

    public var peekNextConid: UInt64 { nextConid.load(ordering: .relaxed) }
    public var connectionsNow: Int { connections.load(ordering: .relaxed) }

    /// With a crash keep, conids are reserved in blocks in its header before they are handed out:
    /// after any death the next process starts past every conid this one may have given.
    package let reservedTo = Atomic<UInt64>(UInt64.max)
    private let reserving = Locked<KeepHeader?>(nil)
    package static let conidBlock: UInt64 = 4096

    /// Conids continue from what `header` says was reserved, and are reserved there from now on.
    public func keepConids(in header: KeepHeader) {
        adopted(last: max(header.conidsReserved, 1) - 1)
        reserving.withLock { $0 = header }
        reserve(through: peekNextConid)
    }

    package func reserve(through id: UInt64) {
        reserving.withLock { header in
            guard let header else { return }
            let current = reservedTo.load(ordering: .relaxed)
            guard current == .max || id >= current else { return }
            let to = id &+ RelayShared.conidBlock
            header.conidsReserved = to
            reservedTo.store(to, ordering: .relaxed)
        }
    }
}

/// One worker's counters, written by its loop only and readable from any thread (status, stats).
public final class WorkerCounters: Sendable {
    package let relays = Atomic<Int>(0)
    package let connections = Atomic<Int>(0)
    package let accepted = Atomic<UInt64>(0)
    package let rejected = Atomic<UInt64>(0)
    package let relayedBytes = Atomic<UInt64>(0)

    public init() {}

    public var relaysNow: Int { relays.load(ordering: .relaxed) }
    public var connectionsNow: Int { connections.load(ordering: .relaxed) }
    public var acceptedTotal: UInt64 { accepted.load(ordering: .relaxed) }
    public var rejectedTotal: UInt64 { rejected.load(ordering: .relaxed) }
    public var relayedBytesTotal: UInt64 { relayedBytes.load(ordering: .relaxed) }
}

public final class RelayContext {
    public let loop: EventLoop
    package let pipes: PipePool
    public let logger: Logger
    public let events: EventDispatcher
    public let shared: RelayShared
    public let counters = WorkerCounters()
    /// The settings of the configuration generation this worker runs (replaced by a reload,
    /// through `apply`; each relay keeps its listener's settings from when it started).
    public private(set) var generation: Generation
    /// [events] closed_event: 0, 1 or 2.
    public var closedEventMode: Int { generation.closedEventMode }
    public var maxConnections: Int { generation.maxConnections }
    /// Every relay of this worker, in no order (a relay knows its slot: added and removed in O(1)).
    /// Its tracked connections are the client and, once an attempt started, the upstream (a failed
    /// attempt leaves before its relay does). No dictionary by conid: it cost ~60 bytes a relay and
    /// two hash updates a connection, for lookups that only control requests make (a scan of one
    /// worker's relays: microseconds at thousands, `find` and `list` scan anyway).
    private var relayList: [Relay] = []
    /// Connections tracked now (both sides of every relay, less failed attempts).
    public private(set) var trackedCount = 0
    public var relays: Int { relayList.count }
    public var accepted: UInt64 {
        get { counters.accepted.load(ordering: .relaxed) }
        set { counters.accepted.store(newValue, ordering: .relaxed) }
    }
    public var rejected: UInt64 {
        get { counters.rejected.load(ordering: .relaxed) }
        set { counters.rejected.store(newValue, ordering: .relaxed) }
    }
    /// Kept here and published to `counters` at the end of each loop turn that changed it.
    public var relayedBytes: UInt64 = 0 {
        didSet { counters.relayedBytes.store(relayedBytes, ordering: .relaxed) }
    }
    /// accept_proxy connections closed for a missing or bad PROXY header, and when one was last logged.
    public var proxyRejected: UInt64 = 0
    /// Lines a peer could repeat per connection, one each per 5 s (with the count).
    package lazy var proxyRejectLog = LogLimiter(loop: loop, logger: logger)
    package lazy var upstreamAttemptLog = LogLimiter(loop: loop, logger: logger)
    package lazy var socketOptionsLog = LogLimiter(loop: loop, logger: logger)
    package lazy var controlLog = LogLimiter(loop: loop, logger: logger)
    /// Socket errors that are not a peer's (our bug, or this host).
    package lazy var ownErrorLog = LogLimiter(loop: loop, logger: logger)
    /// Reads that wanted a splice pipe and copied instead, for want of fds.
    public private(set) var pipeShortages: UInt64 = 0
    private var lastPipeShortageLog: UInt64 = 0

    /// One buffer for the copy path of small reads (the loop is single-threaded).
    package let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Direction.copyLimit, alignment: 16)

    /// Where the relays count what they do.
    public let metrics: DaemonMetrics

    /// `idlePipes`: how many empty pipes this worker keeps for reuse (PipePool.idleShare).
    public init(loop: EventLoop, logger: Logger, events: EventDispatcher, shared: RelayShared, generation: Generation,
                metrics: DaemonMetrics = DaemonMetrics(), idlePipes: Int = 256, growPipes: Int = 32) {
        self.metrics = metrics
        self.loop = loop
        self.logger = logger
        self.events = events
        self.shared = shared
        self.generation = generation
        self.pipes = PipePool(keepIdle: idlePipes, growLimit: growPipes)
        events.generation = generation
    }

    public convenience init(loop: EventLoop, logger: Logger, events: EventDispatcher, closedEventMode: Int, maxConnections: Int,
                            metrics: DaemonMetrics = DaemonMetrics()) {
        self.init(loop: loop, logger: logger, events: events, shared: RelayShared(),
                  generation: Generation(number: 1, maxConnections: maxConnections, closedEventMode: closedEventMode), metrics: metrics)
    }

    /// A new generation (a reload), on this worker's thread: new connections and events follow it.
    package func apply(_ g: Generation) {
        generation = g
        events.generation = g
    }

    deinit { scratch.deallocate() }

    /// Conids carried over from the previous process are never handed out again.
    package func adopted(conids: [UInt64]) {
        if let m = conids.max() { shared.adopted(last: m) }
    }

    /// Every live relay, once each (a copy: ending one changes the list).
    package var liveRelays: [Relay] { relayList }

    /// Every tracked connection.
    public var trackedConnections: [Connection] {
        var all: [Connection] = []
        all.reserveCapacity(trackedCount)
        for r in relayList {
            if r.client.tracked { all.append(r.client) }
            if let up = r.upstream, up.tracked { all.append(up) }
        }
        return all
    }

    /// The tracked connection with this conid, if this worker has it.
    public func connection(_ conid: UInt64) -> Connection? {
        for r in relayList {
            if r.client.conid == conid { return r.client.tracked ? r.client : nil }
            if let up = r.upstream, up.conid == conid { return up.tracked ? up : nil }
        }
        return nil
    }

    package var peekNextConid: UInt64 { shared.peekNextConid }

    package func newConid() -> UInt64 {
        let id = shared.nextConid.wrappingAdd(1, ordering: .relaxed).oldValue
        if id >= shared.reservedTo.load(ordering: .relaxed) { shared.reserve(through: id) }
        return id
    }

    /// The crash keep (nil: relays are not kept across a crash).
    public private(set) var keep: RelayKeep?

    /// Keeps this worker's relays from now on (relays running already are parked too), and the
    /// pipes its pool makes.
    public func install(keep: RelayKeep) {
        self.keep = keep
        keep.liveRelays = { [unowned self] in self.liveRelays }
        pipes.made = { [unowned keep] in keep.pipeMade($0) }
        pipes.closed = { [unowned keep] in keep.pipeClosed($0) }
        for p in pipes.idlePipes { keep.pipeAdopted(p) }
        for r in liveRelays where r.keepSlot < 0 && (r.phase == .connecting || r.phase == .relaying) { keep.admit(r) }
        keep.flush()
    }

    /// `c` must already belong to its relay (for the relay's metrics).
    package func track(_ c: Connection) {
        c.tracked = true
        trackedCount += 1
        shared.connections.add(1, ordering: .relaxed)
        counters.connections.add(1, ordering: .relaxed)
        c.relay?.metrics.connectionsOpen.increment()
        c.relay?.metrics.openConnections.add(1, ordering: .relaxed)
    }

    private func left(_ c: Connection) {
        shared.connections.subtract(1, ordering: .relaxed)
        counters.connections.subtract(1, ordering: .relaxed)
        c.relay?.metrics.connectionsOpen.decrement()
        c.relay?.metrics.openConnections.subtract(1, ordering: .relaxed)
    }

    /// This worker's relays awaiting their client's PROXY header, by client conid (the oldest is
    /// the first to go when its listener has too many), and how many per listener.
    private var awaiting: [UInt64: Relay] = [:]
    private var awaitingPerListener: [String: Int] = [:]
    /// Workers in all: each keeps its share of a listener's proxy_header_max_pending.
    package var workerCount = 1

    package func awaitingStarted(_ r: Relay) {
        awaiting[r.client.conid] = r
        awaitingPerListener[r.listener.name, default: 0] += 1
        shared.awaitingHeader.add(1, ordering: .relaxed)
        r.metrics.awaitingHeader.add(1, ordering: .relaxed)
    }

    package func awaitingEnded(_ r: Relay) {
        guard awaiting.removeValue(forKey: r.client.conid) != nil else { return }
        awaitingPerListener[r.listener.name, default: 1] -= 1
        shared.awaitingHeader.subtract(1, ordering: .relaxed)
        r.metrics.awaitingHeader.subtract(1, ordering: .relaxed)
    }

    /// How many of `listener`'s connections this worker has awaiting a PROXY header.
    package func awaitingCount(listener: String) -> Int { awaitingPerListener[listener] ?? 0 }

    /// The oldest relay of `listener` this worker has awaiting a PROXY header, if any.
    package func oldestAwaiting(listener: String) -> Relay? {
        var oldest: Relay?
        for r in awaiting.values where r.listener.name == listener && (oldest.map { r.client.conid < $0.client.conid } ?? true) { oldest = r }
        return oldest
    }

    /// A failed upstream attempt leaves the table before its relay does.
    package func untrack(_ c: Connection) {
        guard c.tracked else { return }
        c.tracked = false
        trackedCount -= 1
        left(c)
    }

    package func added(_ r: Relay) {
        r.listSlot = Int32(relayList.count)
        relayList.append(r)
        counters.relays.add(1, ordering: .relaxed)
        r.metrics.relaysOpen.increment()
    }

    package func removed(_ r: Relay) {
        untrack(r.client)
        if let up = r.upstream { untrack(up) }
        let slot = Int(r.listSlot)
        if slot >= 0, slot < relayList.count, relayList[slot] === r {
            let last = relayList.removeLast()
            if last !== r {
                relayList[slot] = last
                last.listSlot = Int32(slot)
            }
            r.listSlot = -1
        }
        r.metrics.relaysOpen.decrement()
        counters.relays.subtract(1, ordering: .relaxed)
    }

    /// max_connections bounds the connections of all workers together (but those awaiting a
    /// PROXY header): room for `more`.
    package func hasRoom(for more: Int) -> Bool {
        shared.connectionsNow - shared.awaitingHeader.load(ordering: .relaxed) + more <= maxConnections
    }

    /// Room in the listener's own max_connections (its tracked connections but those awaiting a
    /// PROXY header) for `more`.
    package static func listenerHasRoom(_ l: ListenerSettings, _ m: ListenerMetrics, for more: Int) -> Bool {
        guard let max = l.maxConnections else { return true }
        return m.openConnections.load(ordering: .relaxed) - m.awaitingHeader.load(ordering: .relaxed) + more <= max
    }

    /// Closes every relay (shutdown after the drain time): no events, reason local.
    public func closeAll(why: String = "shutdown_timeout reached") {
        for r in liveRelays { r.end(failed: nil, reason: .local, why: why) }
    }

    public func shutdown() { pipes.drain() }

    /// No pipe could be had (out of fds, or the kernel would give none of the pool's size): the
    /// relay copies instead. Warned at most every 5 s.
    package func noPipe(_ error: SystemError) {
        pipeShortages += 1
        let now = loop.now
        if lastPipeShortageLog == 0 || now - lastPipeShortageLog >= 5_000_000_000 {
            lastPipeShortageLog = now
            let why = error.call == "F_SETPIPE_SZ"
                ? "the kernel gives this user no pipe of \(pipes.capacity) bytes (\(error)): its pipes hold more than fs.pipe-user-pages-soft pages"
                : "\(error)"
            logger.log(.warning, "no pipe for splice: \(why); relays copy through memory meanwhile",
                       [("TCPOPS_PIPE_SHORTAGES", String(pipeShortages))])
        }
    }
}
