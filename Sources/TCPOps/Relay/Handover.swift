// Restart without loss: on stop, established relays are quieted (nothing more is read; what
// tcpopsd holds is written out) and their two sockets are handed to systemd's fd store, named
// with what is needed to rebuild them; on start, stored sockets are adopted under the same conids.
import Glibc

/// What a stored socket's FDNAME carries: `tc.` (client) or `tu.` (upstream), then
/// `CLIENTCONID.UPSTREAMCONID.LIFETIMEMS.LISTENER` (FDNAME may not contain ':').
public struct CarriedSide: Equatable, Sendable {
    public let side: Side
    public let clientConid: UInt64
    public let upstreamConid: UInt64
    public let lifetimeMs: UInt64
    public let listener: String

    public var name: String {
        "\(side == .client ? "tc" : "tu").\(clientConid).\(upstreamConid).\(lifetimeMs).\(listener)"
    }

    public init(side: Side, clientConid: UInt64, upstreamConid: UInt64, lifetimeMs: UInt64, listener: String) {
        self.side = side
        self.clientConid = clientConid
        self.upstreamConid = upstreamConid
        self.lifetimeMs = lifetimeMs
        self.listener = listener
    }

    public init?(name: String) {
        let parts = name.split(separator: ".", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "tc" || parts[0] == "tu",
              let c = UInt64(parts[1]), let u = UInt64(parts[2]), let l = UInt64(parts[3]), !parts[4].isEmpty else { return nil }
        self.init(side: parts[0] == "tc" ? .client : .upstream, clientConid: c, upstreamConid: u, lifetimeMs: l, listener: String(parts[4]))
    }
}

extension Relay {
    /// Stop reading; keep writing out what is held. Returns false (and ends the relay, logged)
    /// when its state cannot be carried across a restart.
    func quiet() -> Bool {
        guard !ended else { return false }
        guard !draining, client.state == .ok, upstream.state == .ok, !toUpstream.eof, !toClient.eof,
              client.fdOpen, upstream.fdOpen else {
            end(failed: nil, reason: .local, why: "cannot be carried across the restart (state \(client.state.name)/\(upstream.state.name))")
            return false
        }
        quieting = true
        updateInterest()
        return true
    }

    /// Quiet and with nothing held: ready to be stored.
    var readyToCarry: Bool { !ended && quieting && toUpstream.drained && toClient.drained }

    /// The two sockets and their names for the fd store.
    var carried: [(fd: Int32, name: String)] {
        let lifetimeMs = client.lifetime / 1_000_000
        return [(client.fd, CarriedSide(side: .client, clientConid: client.conid, upstreamConid: upstream.conid,
                                        lifetimeMs: lifetimeMs, listener: listener.name).name),
                (upstream.fd, CarriedSide(side: .upstream, clientConid: client.conid, upstreamConid: upstream.conid,
                                          lifetimeMs: lifetimeMs, listener: listener.name).name)]
    }

    /// Stored: close our copies quietly (systemd's copies keep the connections open; no FIN).
    func handedOver() {
        guard !ended else { return }
        ended = true
        for c in [client, upstream!] {
            c.closeReason = .local
            closeSocket(c)
            c.state = .gone
        }
        for d in [toUpstream, toClient] {
            if let p = d.pipe { ctx.pipes.give(p) }
            d.pipe = nil
        }
        ctx.removed(self)
        client.relay = nil
        upstream.relay = nil
    }

    /// Rebuilds a relay from two stored sockets, under their old conids.
    static func adopt(ctx: RelayContext, listener: ListenerSettings, client c: (fd: Int32, side: CarriedSide), upstreamFD: Int32) {
        let now = ctx.loop.now
        let client = Connection(conid: c.side.clientConid, side: .client, fd: c.fd, state: .ok, now: now, eventsEnabled: listener.closedEvent)
        client.local = Socket.localAddress(c.fd)
        client.remote = Socket.peerAddress(c.fd)
        client.lifetime = c.side.lifetimeMs * 1_000_000
        client.keepalive = listener.keepalive
        let up = Connection(conid: c.side.upstreamConid, side: .upstream, fd: upstreamFD, state: .ok, now: now, eventsEnabled: listener.closedEvent)
        up.local = Socket.localAddress(upstreamFD)
        up.remote = Socket.peerAddress(upstreamFD)
        up.keepalive = listener.upstreamKeepalive
        let relay = Relay(ctx: ctx, listener: listener, client: client)
        client.relay = relay
        up.relay = relay
        relay.upstream = up
        ctx.track(client)
        ctx.track(up)
        ctx.added(relay)
        ctx.adopted(conids: [client.conid, up.conid])
        for fd in [c.fd, upstreamFD] {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        guard relay.register(client, mask: Events.read), relay.register(up, mask: Events.read) else { return }
        relay.armLifetime(client)
    }
}
