// A listening socket of one [[listener]]: accepts in batches, hands each client to a new Relay,
// and pauses (instead of spinning) when the process runs out of file descriptors.
import Glibc

public final class Listener: EventHandler {
    public let settings: ListenerSettings
    let fd: Int32
    unowned let ctx: RelayContext
    private var paused = false
    private var lastRejectLog: UInt64 = 0
    private var lastPauseLog: UInt64 = 0
    private var pausesSinceLog = 0

    /// Binds and listens, or takes `passed`, a listening socket systemd handed over.
    public init(settings: ListenerSettings, ctx: RelayContext, passed: Int32? = nil) throws(SystemError) {
        self.settings = settings
        self.ctx = ctx
        if let passed {
            fd = passed
        } else {
            fd = try Socket.listen(settings.listen)
        }
        do {
            try ctx.loop.register(fd, mask: Events.read, handler: self)
        } catch {
            closeFD(fd)
            throw error
        }
    }

    private var closed = false

    public func close() {
        guard !closed else { return }
        closed = true
        ctx.loop.unregister(fd)
        closeFD(fd)
    }

    public func handleEvents(_ events: UInt32) {
        for _ in 0..<64 {
            let client: Int32
            let peer: SocketAddress?
            do {
                guard let accepted = try Socket.accept(fd) else { return }
                (client, peer) = accepted
            } catch {
                switch error.errno {
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    pause(error)
                    return
                case ECONNABORTED, EPROTO, EPERM:
                    continue
                default:
                    ctx.logger.log(.error, "accept on \(settings.listen) failed: \(error)", id: .listener, [("TCPOPS_LISTENER", settings.name)])
                    return
                }
            }
            guard ctx.hasRoomForRelay else {
                ctx.rejected += 1
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
            if !Relay.start(ctx: ctx, listener: settings, clientFD: client, local: local, remote: peer) {
                pause(SystemError("socket", EMFILE))
                return
            }
        }
    }

    /// Out of fds: stop accepting for a moment rather than spin on a ready listener.
    private func pause(_ error: SystemError) {
        guard !paused else { return }
        paused = true
        ctx.loop.modify(fd, mask: 0)
        pausesSinceLog += 1
        if lastPauseLog == 0 || ctx.loop.now - lastPauseLog >= 5_000_000_000 {
            ctx.logger.log(.warning, "accept on \(settings.listen) paused for 100 ms: \(error) (\(pausesSinceLog) pause(s) since the last report)",
                           id: .listener, [("TCPOPS_LISTENER", settings.name)])
            lastPauseLog = ctx.loop.now
            pausesSinceLog = 0
        }
        ctx.loop.timers.schedule(at: ctx.loop.now + 100_000_000) { [weak self] in
            guard let self, !self.closed else { return }
            self.paused = false
            self.ctx.loop.modify(self.fd, mask: Events.read)
        }
    }
}
