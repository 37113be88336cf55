// What tcpopsctl can do to one live connection, run on the relay's loop: the tcpops functions
// (keepalive, lifetime, closed event, send, close).
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix

public enum KeepaliveFailure: Error {
    case gone
    case failed(SystemError)
}

extension Connection {
    /// The relay this connection belongs to, while it is live.
    package var liveRelay: Relay? {
        guard let r = relay, !r.ended else { return nil }
        return r
    }

    /// The relay, once both of its sides exist (not while a PROXY header is awaited).
    package var fullRelay: Relay? {
        guard let r = liveRelay, r.upstream != nil else { return nil }
        return r
    }

    /// tcp_keepalive_enable / tcp_keepalive_disable (nil).
    /// Returns nil when it was done, else why not (no live connection, or the setsockopt's error,
    /// which is logged).
    public func setKeepalive(_ k: KeepaliveSettings?) -> KeepaliveFailure? {
        guard let r = liveRelay, fdOpen else { return .gone }
        do {
            try Socket.setKeepalive(fd, k)
            return nil
        } catch {
            r.ctx.controlLog.log(.warning, "keepalive on conid \(conid): \(error)", r.fields(self))
            return .failed(error)
        }
    }

    /// tcp_set_connection_lifetime: idle lifetime in seconds from now on; 0 removes it. The idle
    /// clock restarts at the call, as Kamailio sets `timeout = now + lifetime`: a connection idle
    /// for a while that is given a lifetime gets all of it (idle_ms starts again from 0 too).
    public func setLifetime(seconds: Double) -> Bool {
        guard let r = liveRelay, seconds >= 0, seconds.isFinite else { return false }
        lifetime = seconds.nanoseconds
        lastActivity = r.ctx.loop.now
        r.armLifetime(self)
        return true
    }

    /// tcp_enable_closed_event: this connection raises events under closed_event = 2.
    public func enableEvents() -> Bool {
        guard liveRelay != nil else { return false }
        eventsEnabled = true
        return true
    }

    /// Queues `bytes` for this connection's peer, after the relayed bytes already queued for it.
    public func send(_ bytes: [UInt8]) -> Bool {
        guard let r = fullRelay, !bytes.isEmpty else { return false }
        guard state != .error else { return false }
        let way: Relay.Way = side == .client ? .toClient : .toUpstream
        let queued = way == .toClient ? r.toClient.inject(bytes, limit: Relay.injectLimit) : r.toUpstream.inject(bytes, limit: Relay.injectLimit)
        guard queued else { return false }
        r.shovel(way)
        r.settle()
        return true
    }

    /// tcp_close_connection: ends the relay; this side with FIN, or RST when `reset`. The other
    /// side is closed with FIN. Neither raises an event (tcpopsd started the close).
    public func close(reset: Bool) -> Bool {
        guard let r = liveRelay else { return false }
        if reset && fdOpen {
            Socket.resetOnClose(fd)
            if r.keepSlot >= 0 { Socket.abort(fd) }  // (the keep's copy would outlive the close)
        }
        r.end(failed: nil, reason: .local, why: reset ? "reset by tcpopsctl (conid \(conid))" : "closed by tcpopsctl (conid \(conid))")
        return true
    }

    /// Keepalive and TCP_USER_TIMEOUT as the socket has them now (read back, not as asked); nil
    /// when its socket is closed or cannot be read.
    public func socketOptions() -> (keepalive: KeepaliveSettings?, userTimeoutMs: UInt32)? {
        guard fdOpen else { return nil }
        return try? Socket.options(fd)
    }

    /// Milliseconds since data last moved on this connection.
    public func idleMilliseconds(now: UInt64) -> UInt64 { (now &- lastActivity) / 1_000_000 }
    public var lifetimeSeconds: Double { Double(lifetime) / 1e9 }
    public var listenerName: String { relay?.listener.name ?? "" }
    public var peerConid: UInt64? { relay.flatMap { side == .client ? $0.upstream?.conid : $0.client.conid } }
}

extension Relay {
    /// The most `tcpopsctl send` bytes that may wait for one peer.
    package static let injectLimit = 1 << 20
}
