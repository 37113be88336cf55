// A listening socket of one [[listener]]: accepts in batches, hands each client to a new Relay,
// and pauses (instead of spinning) when the process runs out of file descriptors.
import Glibc

public final class Listener: EventHandler {
    public let settings: ListenerSettings
    let fd: Int32
    unowned let ctx: RelayContext
    private var lastRejectLog: UInt64 = 0
    private let backoff: AcceptPause

    /// Binds and listens, or takes `passed`, a listening socket systemd handed over.
    public init(settings: ListenerSettings, ctx: RelayContext, passed: Int32? = nil) throws(SystemError) {
        self.settings = settings
        self.ctx = ctx
        if let passed {
            fd = passed
        } else {
            fd = try Socket.listen(settings.listen)
        }
        backoff = AcceptPause(loop: ctx.loop, fd: fd, logger: ctx.logger, what: "accept on \(settings.listen)",
                              fields: [("TCPOPS_LISTENER", settings.name)])
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
        backoff.close()
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
                // A connection that died in the queue (or was refused by a firewall rule) costs
                // nothing; anything else (out of fds or memory above all) pauses accepting.
                if [ECONNABORTED, EPROTO, EPERM].contains(error.errno) { continue }
                backoff.pause(error)
                return
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
                backoff.pause(SystemError("socket", EMFILE))
                return
            }
        }
    }
}
