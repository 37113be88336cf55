// One worker's acceptor of a listening socket of one [[listener]]: accepts in batches, hands each
// client to a new Relay, and pauses (instead of spinning) when the process runs out of file
// descriptors. The socket itself belongs to its ListenerGroup (every worker accepts on it). A
// reload that keeps the address keeps the socket and gives it new settings (for new connections);
// one that drops the address retires it: whatever waits in its accept queue is accepted and
// relayed first.
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix

public final class Listener: EventHandler {
    /// The settings new connections get; a reload may change them.
    public private(set) var settings: ListenerSettings
    package let fd: Int32
    package unowned let ctx: RelayContext
    private let backoff: AcceptPause
    /// The lines a flood of clients would repeat: at most one each per 5 s (with the count).
    private let fullLog: LogLimiter
    private let sourceLog: LogLimiter
    private let pendingLog: LogLimiter
    /// This listener's metrics (by name: a rename on reload takes the new name's).
    private(set) var metrics: ListenerMetrics

    /// Accepts on `fd` (a listening socket it does not own) on ctx's loop; `exclusive` when other
    /// workers accept on it too (EPOLLEXCLUSIVE: one of them is woken per connection).
    package init(settings: ListenerSettings, ctx: RelayContext, fd: Int32, exclusive: Bool) throws(SystemError) {
        self.settings = settings
        self.ctx = ctx
        self.fd = fd
        let mask = Events.read | (exclusive ? Events.exclusive : 0)
        metrics = ctx.metrics.listener(settings.name)
        backoff = AcceptPause(loop: ctx.loop, fd: fd, what: "accept on \(settings.listen)", mask: mask) { [logger = ctx.logger, name = settings.name] in
            logger.log(.warning, $0, id: .listener, [("TCPOPS_LISTENER", name)])
        }
        fullLog = LogLimiter(loop: ctx.loop, logger: ctx.logger)
        sourceLog = LogLimiter(loop: ctx.loop, logger: ctx.logger)
        pendingLog = LogLimiter(loop: ctx.loop, logger: ctx.logger)
        super.init()
        try ctx.loop.register(fd, mask: mask, handler: self)
    }

    private var closed = false

    /// Stops accepting (the socket stays open for its owner to close).
    package func detach() {
        guard !closed else { return }
        closed = true
        backoff.close()
        for l in [fullLog, sourceLog, pendingLog] { l.close() }
        ctx.loop.unregister(fd)
    }

    /// New settings for the same address (a reload): relays already running keep theirs.
    public func update(_ s: ListenerSettings) {
        precondition(s.listen == settings.listen, "a listener's socket keeps its address")
        settings = s
        metrics = ctx.metrics.listener(s.name)
    }

    /// The address is no longer wanted: accept and relay what already waits in the queue (the
    /// clients completed their handshake and may have sent data: closing would reset them), then
    /// stop accepting. Returns how many were taken over.
    @discardableResult
    package func retire() -> Int {
        var taken = 0
        while !closed, case let n = acceptBatch(), n > 0 { taken += n }
        detach()
        return taken
    }

    public override func handleEvents(_ events: UInt32) {
        _ = acceptBatch()
    }

    /// Accepts up to 64 waiting clients; returns how many (0: none waiting, or accepting paused).
    private func acceptBatch() -> Int {
        var taken = 0
        for _ in 0..<64 {
            let client: Int32
            let peer: SocketAddress?
            // With the crash keep, a client is parked by the accept itself (one C call, the two
            // syscalls back to back): a death of tcpopsd right after cannot reset it.
            let target = settings.acceptProxy ? nil : ctx.keep?.acceptTarget()
            var parkedSlot: Int32?
            do {
                if let target {
                    guard let accepted = try Socket.accept(fd, parkingIn: target.park, slot: UInt32(target.slot)) else {
                        ctx.keep?.unreserve(target.slot)
                        return taken
                    }
                    (client, peer) = (accepted.fd, accepted.peer)
                    parkedSlot = target.slot
                    if accepted.parked {
                        ctx.keep?.acceptParked()
                    } else {
                        ctx.keep?.parkAccepted(client, slot: target.slot)
                    }
                } else {
                    guard let accepted = try Socket.accept(fd) else { return taken }
                    (client, peer) = accepted
                }
                taken += 1
            } catch {
                if let target { ctx.keep?.unreserve(target.slot) }
                // A connection that died in the queue (or was refused by a firewall rule) costs
                // nothing; anything else (out of fds or memory above all) pauses accepting.
                if [ECONNABORTED, EPROTO, EPERM].contains(error.errno) { continue }
                backoff.pause(error)
                return 0
            }
            if settings.acceptProxy {
                guard admitProxied(client, from: peer) else { continue }
            } else if !ctx.hasRoom(for: 2) || !RelayContext.listenerHasRoom(settings, metrics, for: 2) {
                if let slot = parkedSlot {
                    Socket.abort(client)  // (the parked copy would keep it open past the close)
                    ctx.keep?.refused(slot: slot)
                }
                refuseFull(client)
                continue
            }
            // Its record: the next tcpopsd starts its relay if this one did not get that far.
            let parked = parkedSlot.map { (conid: ctx.newConid(), slot: $0) }
            // Only a wildcard listener needs to ask which local address a client reached.
            let local = settings.listen.isWildcard ? Socket.localAddress(client) : settings.listen
            if !Relay.start(ctx: ctx, listener: settings, metrics: metrics, clientFD: client, local: local, remote: peer, parked: parked) {
                backoff.pause(SystemError("socket", EMFILE))
                return 0
            }
        }
        return taken
    }

    /// max_connections (the daemon's, or this listener's) is reached: the client gets a reset.
    package func refuseFull(_ client: Int32) {
        ctx.rejected += 1
        metrics.rejectedMaxConnections.increment()
        Socket.closeWithReset(client)
        let own = settings.maxConnections.map { !RelayContext.listenerHasRoom(settings, metrics, for: 2) && ctx.hasRoom(for: 2) ? $0 : nil } ?? nil
        fullLog.log(.warning, own.map { "listener max_connections (\($0)) reached: new connections to \(settings.name) are refused" }
                        ?? "max_connections (\(ctx.maxConnections)) reached: new connections are refused",
                    id: .listener, [("TCPOPS_LISTENER", settings.name), ("TCPOPS_REJECTED", String(ctx.rejected))])
    }

    /// accept_proxy: a client may send its header only from accept_proxy_from, and only so many
    /// may wait for theirs (the one waiting longest makes room: a flood cannot lock a balancer
    /// out, whose header comes at once). They count against no
    /// max_connections until their header came (Relay.readProxyHeader checks then), so that a
    /// flood of incomplete headers never takes another listener's room.
    private func admitProxied(_ client: Int32, from peer: SocketAddress?) -> Bool {
        if let allowed = settings.acceptProxyFrom, !(peer.map { p in allowed.contains { $0.contains(p) } } ?? false) {
            ctx.rejected += 1
            metrics.rejectedProxySource.increment()
            Socket.closeWithReset(client)
            sourceLog.log(.warning, "accept_proxy_from: refused a connection from \(peer?.ip ?? "an unknown address"), which may not send PROXY headers to \(settings.name)",
                          id: .listener, [("TCPOPS_LISTENER", settings.name), ("TCPOPS_REMOTE", peer?.description ?? "")])
            return false
        }
        // Each worker keeps its share of the bound (a flood lands where the kernel puts it, and
        // makes room among what that worker holds).
        let share = (settings.proxyHeaderMaxPending + ctx.workerCount - 1) / ctx.workerCount
        if ctx.awaitingCount(listener: settings.name) >= share, let oldest = ctx.oldestAwaiting(listener: settings.name) {
            metrics.rejectedProxyPending.increment()
            pendingLog.log(.warning, "proxy_header_max_pending (\(settings.proxyHeaderMaxPending)) reached on \(settings.name): "
                           + "the connection awaiting its header longest was closed to make room",
                           id: .listener, [("TCPOPS_LISTENER", settings.name)])
            oldest.evictAwaiting()
        }
        return true
    }
}
