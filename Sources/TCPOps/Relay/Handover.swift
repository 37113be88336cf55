// Restart without loss: on stop, established relays are quieted (nothing more is read; what
// tcpopsd holds is written out) and their two sockets are handed to systemd's fd store, named
// with what is needed to rebuild them; on start, stored sockets are adopted under the same conids.
import Glibc
import TCPOpsConfig
import TCPOpsLoop
import TCPOpsPosix

/// What a stored socket's FDNAME carries: `tc.` (client) or `tu.` (upstream), then
/// `CLIENTCONID.UPSTREAMCONID.LIFETIMEMS.IDLEMS.EVENTS.LISTENER` (FDNAME may not contain ':').
/// Keepalive and user timeout need no room here: they stay set on the sockets themselves.
public struct CarriedSide: Equatable, Sendable {
    public let side: Side
    public let clientConid: UInt64
    public let upstreamConid: UInt64
    /// This side's idle lifetime, and how long it had been idle: the lifetime left carries over.
    public let lifetimeMs: UInt64
    public let idleMs: UInt64
    /// closed_event enabled for this side (listener or tcpopsctl closed-event).
    public let events: Bool
    public let listener: String

    public var name: String {
        "\(side == .client ? "tc" : "tu").\(clientConid).\(upstreamConid).\(lifetimeMs).\(idleMs).\(events ? 1 : 0).\(listener)"
    }

    public init(side: Side, clientConid: UInt64, upstreamConid: UInt64, lifetimeMs: UInt64, idleMs: UInt64, events: Bool, listener: String) {
        self.side = side
        self.clientConid = clientConid
        self.upstreamConid = upstreamConid
        self.lifetimeMs = lifetimeMs
        self.idleMs = idleMs
        self.events = events
        self.listener = listener
    }

    public init?(name: String) {
        let parts = name.split(separator: ".", maxSplits: 6, omittingEmptySubsequences: false)
        guard parts.count == 7, parts[0] == "tc" || parts[0] == "tu",
              let c = UInt64(parts[1]), let u = UInt64(parts[2]), let l = UInt64(parts[3]), let i = UInt64(parts[4]),
              parts[5] == "0" || parts[5] == "1", !parts[6].isEmpty else { return nil }
        self.init(side: parts[0] == "tc" ? .client : .upstream, clientConid: c, upstreamConid: u, lifetimeMs: l, idleMs: i,
                  events: parts[5] == "1", listener: String(parts[6]))
    }
}

extension Relay {
    /// Stop reading; keep writing out what is held. Returns false (and ends the relay, logged)
    /// when its state cannot be carried across a restart.
    func quiet() -> Bool {
        guard !ended else { return false }
        guard !draining, let up = upstream, client.state == .ok, up.state == .ok, !toUpstream.eof, !toClient.eof,
              client.fdOpen, up.fdOpen else {
            end(failed: nil, reason: .local,
                why: "cannot be carried across the restart (state \(client.state.name)/\(upstream?.state.name ?? "awaiting its PROXY header"))")
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
        let now = ctx.loop.now
        return [client, upstream!].map { c in
            (c.fd, CarriedSide(side: c.side, clientConid: client.conid, upstreamConid: upstream.conid, lifetimeMs: c.lifetime / 1_000_000,
                               idleMs: c.idleMilliseconds(now: now), events: c.eventsEnabled, listener: listener.name).name)
        }
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
        toUpstream.releasePipe(to: ctx.pipes)  // quiet and drained: empty, back to the pool
        toClient.releasePipe(to: ctx.pipes)
        ctx.removed(self)
        client.relay = nil
        upstream.relay = nil
    }

    /// Rebuilds a relay from two stored sockets, under their old conids.
    static func adopt(ctx: RelayContext, listener: ListenerSettings, client c: (fd: Int32, side: CarriedSide),
                      upstream u: (fd: Int32, side: CarriedSide)) {
        let now = ctx.loop.now
        func connection(_ x: (fd: Int32, side: CarriedSide)) -> Connection {
            let conn = Connection(conid: x.side.side == .client ? x.side.clientConid : x.side.upstreamConid, side: x.side.side, fd: x.fd,
                                  state: .ok, now: now, eventsEnabled: x.side.events)
            conn.local = Socket.localAddress(x.fd)
            conn.remote = Socket.peerAddress(x.fd)
            conn.lifetime = x.side.lifetimeMs * 1_000_000
            let idle = min(x.side.idleMs * 1_000_000, now)
            conn.lastActivity = now - idle
            return conn
        }
        let client = connection(c)
        let up = connection(u)
        let upstreamFD = u.fd
        let relay = Relay(ctx: ctx, listener: listener, client: client, metrics: ctx.metrics.listener(listener.name))
        client.relay = relay
        up.relay = relay
        relay.upstream = up
        // Which of the listener's upstreams it is (for `list`), if the address is still one of them.
        if let remote = up.remote, let i = (0..<listener.candidateCount).first(where: { listener.candidate($0)?.address == remote }) {
            relay.attempt = Int32(i)
        }
        ctx.track(client)
        ctx.track(up)
        ctx.added(relay)
        ctx.adopted(conids: [client.conid, up.conid])
        for fd in [c.fd, upstreamFD] {
            Socket.adoptFD(fd)
        }
        guard relay.register(client, mask: Events.read), relay.register(up, mask: Events.read) else { return }
        relay.armLifetime(client)
        relay.armLifetime(up)
    }
}
