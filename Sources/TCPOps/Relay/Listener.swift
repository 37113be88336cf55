// One worker's acceptor of a listening socket of one [[listener]]: accepts in batches, hands each
// client to a new Relay, and pauses (instead of spinning) when the process runs out of file
// descriptors. The socket itself belongs to its ListenerGroup (every worker accepts on it). A
// reload that keeps the address keeps the socket and gives it new settings (for new connections);
// one that drops the address retires it: whatever waits in its accept queue is accepted and
// relayed first.
import Glibc
import TCPOpsConfig
import TCPOpsLoop
import TCPOpsPosix

public final class Listener: EventHandler {
    /// The settings new connections get; a reload may change them.
    public private(set) var settings: ListenerSettings
    let fd: Int32
    unowned let ctx: RelayContext
    private var lastRejectLog: UInt64 = 0
    private let backoff: AcceptPause
    /// This listener's metrics (by name: a rename on reload takes the new name's).
    private(set) var metrics: ListenerMetrics

    /// Accepts on `fd` (a listening socket it does not own) on ctx's loop; `exclusive` when other
    /// workers accept on it too (EPOLLEXCLUSIVE: one of them is woken per connection).
    init(settings: ListenerSettings, ctx: RelayContext, fd: Int32, exclusive: Bool) throws(SystemError) {
        self.settings = settings
        self.ctx = ctx
        self.fd = fd
        let mask = Events.read | (exclusive ? Events.exclusive : 0)
        metrics = ctx.metrics.listener(settings.name)
        backoff = AcceptPause(loop: ctx.loop, fd: fd, logger: ctx.logger, what: "accept on \(settings.listen)",
                              fields: [("TCPOPS_LISTENER", settings.name)], mask: mask)
        super.init()
        try ctx.loop.register(fd, mask: mask, handler: self)
    }

    private var closed = false

    /// Stops accepting (the socket stays open for its owner to close).
    func detach() {
        guard !closed else { return }
        closed = true
        backoff.close()
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
    func retire() -> Int {
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
            do {
                guard let accepted = try Socket.accept(fd) else { return taken }
                (client, peer) = accepted
                taken += 1
            } catch {
                // A connection that died in the queue (or was refused by a firewall rule) costs
                // nothing; anything else (out of fds or memory above all) pauses accepting.
                if [ECONNABORTED, EPROTO, EPERM].contains(error.errno) { continue }
                backoff.pause(error)
                return 0
            }
            guard ctx.hasRoomForRelay else {
                ctx.rejected += 1
                metrics.rejectedMaxConnections.increment()
                Socket.closeWithReset(client)
                if ctx.loop.now - lastRejectLog > 1_000_000_000 {
                    lastRejectLog = ctx.loop.now
                    ctx.logger.log(.warning, "max_connections (\(ctx.maxConnections)) reached: new connections are refused",
                                   id: .listener, [("TCPOPS_LISTENER", settings.name), ("TCPOPS_REJECTED", String(ctx.rejected))])
                }
                continue
            }
            // Only a wildcard listener needs to ask which local address a client reached.
            let local = settings.listen.isWildcard ? Socket.localAddress(client) : settings.listen
            if !Relay.start(ctx: ctx, listener: settings, metrics: metrics, clientFD: client, local: local, remote: peer) {
                backoff.pause(SystemError("socket", EMFILE))
                return 0
            }
        }
        return taken
    }
}
