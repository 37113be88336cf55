// Restart without loss: on stop, established relays are quieted (nothing more is read; what
// tcpopsd holds is written out) and their two sockets are handed to systemd's fd store, named
// with what is needed to rebuild them; on start, stored sockets are adopted under the same conids.
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix

/// What a stored socket's FDNAME carries: `tc.` (client) or `tu.` (upstream), then
/// `CLIENTCONID.UPSTREAMCONID.LIFETIMEMS.IDLEMS.EVENTS.LISTENER` (FDNAME may not contain ':').
/// A client side whose addresses came from a PROXY header (accept_proxy) is `tp.` instead, with
/// `REMOTE.LOCAL` before the listener, each the address bytes and port in hex: the socket itself
/// only knows the balancer. Keepalive and user timeout need no room here: they stay set on the
/// sockets themselves.
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
    /// The client's addresses as its PROXY header gave them (client side only), else nil.
    public let proxied: (remote: SocketAddress, local: SocketAddress)?

    public var name: String {
        let head = "\(clientConid).\(upstreamConid).\(lifetimeMs).\(idleMs).\(events ? 1 : 0)"
        if let p = proxied, side == .client {
            return "tp.\(head).\(CarriedSide.hex(p.remote)).\(CarriedSide.hex(p.local)).\(listener)"
        }
        return "\(side == .client ? "tc" : "tu").\(head).\(listener)"
    }

    public init(side: Side, clientConid: UInt64, upstreamConid: UInt64, lifetimeMs: UInt64, idleMs: UInt64, events: Bool, listener: String,
                proxied: (remote: SocketAddress, local: SocketAddress)? = nil) {
        self.side = side
        self.clientConid = clientConid
        self.upstreamConid = upstreamConid
        self.lifetimeMs = lifetimeMs
        self.idleMs = idleMs
        self.events = events
        self.listener = listener
        self.proxied = side == .client ? proxied : nil
    }

    public init?(name: String) {
        let proxy = name.hasPrefix("tp.")
        let parts = name.split(separator: ".", maxSplits: proxy ? 8 : 6, omittingEmptySubsequences: false)
        guard parts.count == (proxy ? 9 : 7), parts[0] == "tc" || parts[0] == "tu" || proxy,
              let c = UInt64(parts[1]), let u = UInt64(parts[2]), let l = UInt64(parts[3]), let i = UInt64(parts[4]),
              parts[5] == "0" || parts[5] == "1", !parts[parts.count - 1].isEmpty else { return nil }
        var proxied: (SocketAddress, SocketAddress)?
        if proxy {
            guard let remote = CarriedSide.address(hex: parts[6]), let local = CarriedSide.address(hex: parts[7]) else { return nil }
            proxied = (remote, local)
        }
        self.init(side: parts[0] == "tu" ? .upstream : .client, clientConid: c, upstreamConid: u, lifetimeMs: l, idleMs: i,
                  events: parts[5] == "1", listener: String(parts[parts.count - 1]), proxied: proxied)
    }

    public static func == (a: CarriedSide, b: CarriedSide) -> Bool {
        a.side == b.side && a.clientConid == b.clientConid && a.upstreamConid == b.upstreamConid && a.lifetimeMs == b.lifetimeMs
            && a.idleMs == b.idleMs && a.events == b.events && a.listener == b.listener
            && a.proxied?.remote == b.proxied?.remote && a.proxied?.local == b.proxied?.local
    }

    /// An address as hex: its 4 or 16 bytes, then the port's 2.
    package static func hex(_ a: SocketAddress) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in a.bytes + [UInt8(a.port >> 8), UInt8(a.port & 0xff)] {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    package static func address(hex: Substring) -> SocketAddress? {
        guard hex.count == 12 || hex.count == 36 else { return nil }
        var bytes: [UInt8] = []
        var chars = hex.makeIterator()
        while let h = chars.next(), let l = chars.next() {
            guard let a = h.hexDigitValue, let b = l.hexDigitValue else { return nil }
            bytes.append(UInt8(a << 4 | b))
        }
        let port = UInt16(bytes[bytes.count - 2]) << 8 | UInt16(bytes[bytes.count - 1])
        return SocketAddress(family: hex.count == 12 ? .v4 : .v6, bytes: Array(bytes.dropLast(2)), port: port)
    }
}

extension Relay {
    /// Stop reading; keep writing out what is held. Returns false (and ends the relay, logged)
    /// when its state cannot be carried across a restart. A relay whose upstream is still
    /// connecting (a client accepted just before the stop) is carried once the connect completes
    /// and the bytes it sent meanwhile are out, if that happens before the handover's deadline.
    package func quiet() -> Bool {
        guard !ended else { return false }
        let connecting = upstream?.state == .connecting && client.state == .accepting
        guard phase == .connecting || phase == .relaying || phase == .quieting, let up = upstream, connecting || (client.state == .ok && up.state == .ok), !toUpstream.eof, !toClient.eof,
              client.fdOpen, up.fdOpen else {
            end(failed: nil, reason: .local,
                why: "cannot be carried across the restart (state \(client.state.name)/\(upstream?.state.name ?? "awaiting its PROXY header"))")
            return false
        }
        enter(.quieting)  // (its reads stop: a direction reads nothing while quieting)
        return true
    }

    /// Quiet and with nothing held: ready to be stored.
    package var readyToCarry: Bool {
        phase == .quieting && client.state == .ok && upstream?.state == .ok && toUpstream.drained && toClient.drained
    }

    /// The two sockets and their names for the fd store.
    package var carried: [(fd: Int32, name: String)] {
        let now = ctx.loop.now
        // The addresses a PROXY header gave (the socket knows only the balancer's).
        var proxied: (remote: SocketAddress, local: SocketAddress)?
        if listener.acceptProxy, !client.balancerOwn, let r = client.remote, let l = client.local { proxied = (r, l) }
        guard let upstream else { return [] }
        return [client, upstream].map { c in
            (c.fd, CarriedSide(side: c.side, clientConid: client.conid, upstreamConid: upstream.conid, lifetimeMs: c.lifetime / 1_000_000,
                               idleMs: c.idleMilliseconds(now: now), events: c.eventsEnabled, listener: listener.name, proxied: proxied).name)
        }
    }

    /// Stored (or kept: its record and parked fds stay for the next tcpopsd): close our copies
    /// quietly (systemd's copies keep the connections open; no FIN).
    package func handedOver() {
        guard phase != .ended, let upstream else { return }
        let kept = keepSlot >= 0
        if kept { ctx.keep?.save(self) }
        enter(.ended)
        retire(client, state: .gone, handingOver: kept)
        retire(upstream, state: .gone, handingOver: kept)
        release(handingOver: kept)  // quiet and drained: its pipes are empty, back to the pool
    }

    /// Rebuilds a relay from two stored sockets, under their old conids.
    package static func adopt(ctx: RelayContext, listener: ListenerSettings, client c: (fd: Int32, side: CarriedSide),
                      upstream u: (fd: Int32, side: CarriedSide)) {
        let now = ctx.loop.now
        func connection(_ x: (fd: Int32, side: CarriedSide)) -> Connection {
            let conn = Connection(conid: x.side.side == .client ? x.side.clientConid : x.side.upstreamConid, side: x.side.side, fd: x.fd,
                                  state: .ok, now: now, eventsEnabled: x.side.events)
            if let p = x.side.proxied {
                conn.remote = p.remote
                conn.local = p.local
            } else {
                conn.local = Socket.localAddress(x.fd)
                conn.remote = Socket.peerAddress(x.fd)
            }
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
        relay.enter(.relaying)  // established on both sides, as it was when it was carried
        // Which of the listener's upstreams it is (for `list`), if the address is still one of them.
        if let remote = up.remote, let i = (0..<listener.candidateCount).first(where: { listener.candidate($0)?.address == remote }) {
            relay.attempt = Int16(clamping: i)
        }
        ctx.track(client)
        ctx.track(up)
        ctx.added(relay)
        ctx.adopted(conids: [client.conid, up.conid])
        for fd in [c.fd, upstreamFD] {
            Socket.adoptFD(fd)
        }
        // Registering reports what is already there: bytes that came while no process ran are read.
        guard relay.register(client, mask: Relay.watchRead), relay.register(up, mask: Relay.watchRead) else { return }
        relay.armLifetime(client)
        relay.armLifetime(up)
    }
}
