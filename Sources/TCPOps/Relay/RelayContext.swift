// What every relay on one loop shares: the loop, the pipe pool, the connection table, where
// events go, and the counters. Lives on the loop's thread.
public final class RelayContext {
    public let loop: EventLoop
    let pipes: PipePool
    public let logger: Logger
    public let events: EventDispatcher
    /// [events] closed_event: 0, 1 or 2.
    public var closedEventMode: Int
    public var maxConnections: Int
    /// Every tracked connection by conid. Invariant: a Connection is here from accept (or
    /// connect) until its relay closes its fd; both sides of a relay leave together.
    public private(set) var table: [UInt64: Connection] = [:]
    private var nextConid: UInt64 = 1
    public private(set) var relays = 0
    public var accepted: UInt64 = 0
    public var rejected: UInt64 = 0
    public var relayedBytes: UInt64 = 0
    /// Names of the listeners now configured (for `list --listener`).
    public var listenerNames: Set<String> = []
    /// accept_proxy connections closed for a missing or bad PROXY header, and when one was last logged.
    public var proxyRejected: UInt64 = 0
    var lastProxyRejectLog: UInt64 = 0
    /// Reads that wanted a splice pipe and copied instead, for want of fds.
    public private(set) var pipeShortages: UInt64 = 0
    private var lastPipeShortageLog: UInt64 = 0
    /// Called when the last relay has ended (used to finish a drain).
    public var onIdle: (() -> Void)?

    /// One buffer for the copy path of small reads (the loop is single-threaded).
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Relay.copyLimit, alignment: 16)

    /// Where the relays count what they do.
    public let metrics: DaemonMetrics

    public init(loop: EventLoop, logger: Logger, events: EventDispatcher, closedEventMode: Int, maxConnections: Int,
                metrics: DaemonMetrics = DaemonMetrics()) {
        self.metrics = metrics
        self.loop = loop
        self.logger = logger
        self.events = events
        self.closedEventMode = closedEventMode
        self.maxConnections = maxConnections
        self.pipes = PipePool()
    }

    deinit { scratch.deallocate() }

    /// Conids carried over from the previous process are never handed out again.
    func adopted(conids: [UInt64]) {
        if let m = conids.max(), m >= nextConid { nextConid = m + 1 }
    }

    /// Every live relay, once each.
    var liveRelays: [Relay] { table.values.filter { $0.side == .client }.compactMap { $0.relay } }

    var peekNextConid: UInt64 { nextConid }

    func newConid() -> UInt64 {
        defer { nextConid += 1 }
        return nextConid
    }

    /// `c` must already belong to its relay (for the relay's metrics).
    func track(_ c: Connection) {
        table[c.conid] = c
        c.relay?.metrics.connectionsOpen.increment()
    }

    /// A failed upstream attempt leaves the table before its relay does.
    func untrack(_ c: Connection) {
        if table.removeValue(forKey: c.conid) != nil { c.relay?.metrics.connectionsOpen.decrement() }
    }

    func added(_ r: Relay) {
        relays += 1
        r.metrics.relaysOpen.increment()
    }

    func removed(_ r: Relay) {
        for c in [r.client] + (r.upstream.map { [$0] } ?? []) where table.removeValue(forKey: c.conid) != nil {
            r.metrics.connectionsOpen.decrement()
        }
        r.metrics.relaysOpen.decrement()
        relays -= 1
        if relays == 0 { onIdle?() }
    }

    public var hasRoomForRelay: Bool { table.count + 2 <= maxConnections }

    /// Closes every relay (shutdown after the drain time): no events, reason local.
    public func closeAll() {
        // Client sides only: each relay once (ending it removes both of its sides from the table).
        for r in liveRelays { r.end(failed: nil, reason: .local, why: "shutdown_timeout reached") }
    }

    public func shutdown() { pipes.drain() }

    /// No pipe could be made (out of fds): the relay copies instead. Warned at most every 5 s.
    func noPipe(_ error: SystemError) {
        pipeShortages += 1
        let now = loop.now
        if lastPipeShortageLog == 0 || now - lastPipeShortageLog >= 5_000_000_000 {
            lastPipeShortageLog = now
            logger.log(.warning, "no pipe for splice (\(error)): relays copy through memory meanwhile",
                       [("TCPOPS_PIPE_SHORTAGES", String(pipeShortages))])
        }
    }
}
