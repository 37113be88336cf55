// How a relay ends: a side that breaks raises its event and leaves what it sent to be delivered;
// the end retires both connections, releases the relay and logs its totals. `retire` and
// `release` are the one teardown: a handover and a failed upstream attempt use them too.
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix

extension Relay {
    /// A side's socket failed with `e`: classified, remembered for its event, and failed.
    package func fail(_ conn: Connection, errno e: Int32) {
        conn.closeErrno = e
        guard let reason = CloseReason.classify(errno: e) else {
            // Not the peer's doing: no event claims it was; the relay ends as tcpopsd's close.
            let why = SocketErrorOrigin(errno: e).describe(e)
            ctx.ownErrorLog.log(.error, "conid \(conn.conid): \(why); its relay ends", fields(conn))
            end(failed: nil, reason: .local, why: why)
            return
        }
        fail(conn, reason, why: errnoName(e))
    }

    /// A side broke (RST, timeout, unreachable): it raises its event at once. Bytes it sent that
    /// tcpopsd already holds are still delivered to the other side (phase draining), then the
    /// relay ends (at the settle point, once the survivor has them all, or at `drainLimit`).
    package func fail(_ conn: Connection, _ reason: CloseReason, why: String) {
        guard let other = conn === client ? upstream : client else {
            end(failed: conn, reason: reason, why: why)
            return
        }
        let way: Way = other === client ? .toClient : .toUpstream
        guard phase != .draining, !(way == .toClient ? toClient : toUpstream).drained, other.fdOpen,
              other.state == .ok || other.state == .eof else {
            end(failed: conn, reason: reason, why: why)
            return
        }
        raise(conn, reason)
        retire(conn, state: .error)
        enter(.draining)
        // Nothing more will come from the broken side.
        if way == .toClient { toClient.eof = true } else { toUpstream.eof = true }
        let held = (way == .toClient ? toClient : toUpstream).pending
        drainReason = reason
        armPhaseTimer(at: ctx.loop.now + Relay.drainLimit)
        ctx.logger.log(.debug, "conid \(conn.conid) broke (\(why)); delivering \(held) held bytes to conid \(other.conid)", fields(conn))
        drainWhy = why
        shovel(way)
    }

    /// The one teardown of a connection, whatever ends it (the relay's end, a handover, a failed
    /// attempt, a side that broke): its close is classified (local unless it raised its event),
    /// its lifetime disarmed, its socket forgotten by epoll and closed, its state set.
    /// A kept relay's socket is also parked in the crash keep, whose copy would hold the connection
    /// open: unless both FINs were passed (or it is handed over), it is shut down (aborted while it
    /// connects) before the close.
    package func retire(_ c: Connection, state: ConnectionState, handingOver: Bool = false) {
        if c.closeReason == nil { c.closeReason = .local }
        if c.fdOpen {
            c.fdOpen = false
            ctx.loop.timers.disarm(c)
            ctx.loop.forget(c.fd)
            if keepSlot >= 0 && !handingOver {
                if c.state == .connecting {
                    Socket.abort(c.fd)
                } else if !(toUpstream.shut && toClient.shut) {
                    Socket.shutdownBoth(c.fd)
                }
            }
            closeFD(c.fd)
        }
        c.state = state
    }

    /// The one teardown of the relay, after its connections were retired: its phase timer
    /// cancelled, its pipes back in the pool, out of its worker's list, the cycles with its
    /// connections broken.
    package func release(handingOver: Bool = false) {
        enter(.ended)
        if keepSlot >= 0, !handingOver { ctx.keep?.release(self, parkedFDs: upstream == nil ? 1 : 2) }
        // A close held for the journal whose other side raised nothing: an entry of its own.
        if client.journalHeld { ctx.events.releaseHeld(client.conid) }
        if let upstream, upstream.journalHeld { ctx.events.releaseHeld(upstream.conid) }
        cancelPhaseTimer()
        toUpstream.releasePipe(to: ctx.pipes)
        toClient.releasePipe(to: ctx.pipes)
        ctx.removed(self)
        client.relay = nil
        upstream?.relay = nil
    }

    /// Classifies `conn`'s close once and raises its event if the policy says so.
    package func raise(_ conn: Connection, _ reason: CloseReason) {
        guard conn.closeReason == nil else { return }
        conn.closeReason = reason
        guard let kind = reason.event, !client.balancerOwn,
              EventPolicy.raises(mode: ctx.closedEventMode, enabled: conn.eventsEnabled, side: conn.side, sides: listener.eventSides)
        else { return }
        metrics.event(kind, reason, conn.side)
        conn.raisedEvent = true
        // Written before it is sent: a crash after this raises it no second time.
        if keepSlot >= 0 { ctx.keep?.save(self) }
        var e = event(conn, kind, reason)
        e.late = conn.late
        e.journal = journalDisposition(conn, kind)
        ctx.events.emit(e)
    }

    /// What the journal does with `conn`'s event of `kind` ([events] journal): with "all", a
    /// tcp:closed is held while the other side may still close normally (and raise its own), so
    /// that the two become one entry; any other end of the other side writes the held one alone.
    private func journalDisposition(_ conn: Connection, _ kind: EventKind) -> JournalDisposition {
        switch ctx.generation.journal {
        case .none: return .skip
        case .abnormal: return kind == .reset || kind == .timeout ? .write : .skip
        case .all:
            let other = conn === client ? upstream : client
            guard let other else { return .write }
            if other.journalHeld {
                other.journalHeld = false
                if kind == .closed { return .fold(other.conid) }
                ctx.events.releaseHeld(other.conid)
                return .write
            }
            if kind == .closed, other.closeReason == nil, other.fdOpen,
               EventPolicy.raises(mode: ctx.closedEventMode, enabled: other.eventsEnabled, side: other.side, sides: listener.eventSides) {
                conn.journalHeld = true
                return .hold
            }
            return .write
        }
    }

    /// The event of `c`'s close, with its TCP state as it is now (the socket is still open).
    package func event(_ c: Connection, _ kind: EventKind, _ reason: CloseReason) -> TCPEvent {
        var e = TCPEvent(kind: kind, reason: reason, conid: c.conid, peerConid: c.peerConid, side: c.side, listener: listener.name,
                         local: c.local, remote: c.remote, durationMs: (ctx.loop.now &- c.openedAt) / 1_000_000,
                         bytesIn: c.bytesIn, bytesOut: c.bytesOut)
        e.errno = c.closeErrno
        if c.fdOpen {
            e.tcp = Socket.tcpInfo(c.fd)
            if c.state == .connecting { e.tcp?.neverEstablished() }
        }
        return e
    }

    /// Ends the relay. `failed` is the side whose peer closed, reset or timed out (it raises the
    /// event); the other side is closed by us (reason local, no event). nil: we end it ourselves.
    /// `quietly`: a connection that never became a relay (refused while awaiting its PROXY
    /// header): its end is a debug line, since a flood of them would be a flood of entries; a
    /// rate-limited warning counts them instead.
    package func end(failed: Connection?, reason: CloseReason, why: String, quietly: Bool = false) {
        guard phase != .ended else { return }
        enter(.ended)
        if let failed {
            raise(failed, reason)
            if reason != .fin && reason != .lifetime { failed.state = .error }
        }
        retire(client, state: client.state)
        if let upstream { retire(upstream, state: upstream.state) }
        // At info when a side closed without an event of its own (tcpopsd closed it, or events are
        // off for it): the journal must say how each connection ended. When both sides raised
        // events, those already say it (reason, bytes), and the summary is debug.
        // A balancer's own connection (a health check) ends at debug: one every few seconds a host.
        let level: LogLevel = quietly || client.balancerOwn || (client.raisedEvent && upstream?.raisedEvent == true) ? .debug : .info
        if ctx.logger.enabled(level) {
            // Only values are taken here; the text is made on the log's thread.
            ctx.logger.log(RelayEnded(level: level, clientConid: client.conid, upstreamConid: upstream?.conid, listener: listener.name,
                                      local: client.local, remote: client.remote,
                                      durationMs: (ctx.loop.now &- client.openedAt) / 1_000_000, bytesIn: client.bytesIn,
                                      bytesOut: client.bytesOut, reason: failed?.closeReason ?? reason,
                                      clientReason: client.closeReason ?? .local, upstreamReason: upstream?.closeReason ?? .local,
                                      toUpstream: upstream?.bytesOut ?? 0, toClient: client.bytesOut, why: why))
        }
        metrics.duration.record(.nanoseconds(Int64(ctx.loop.now &- client.openedAt)))
        client.state = .gone
        upstream?.state = .gone
        release()
    }

    /// `c`'s log fields (warnings and debug entries about one connection).
    package func fields(_ c: Connection) -> [Logger.Field] {
        var f: [Logger.Field] = [("TCPOPS_CONID", String(c.conid)), ("TCPOPS_SIDE", c.side.rawValue), ("TCPOPS_LISTENER", listener.name)]
        if let l = c.local { f.append(("TCPOPS_LOCAL", l.description)) }
        if let r = c.remote { f.append(("TCPOPS_REMOTE", r.description)) }
        f.append(("TCPOPS_DURATION_MS", String((ctx.loop.now &- c.openedAt) / 1_000_000)))
        f.append(("TCPOPS_BYTES_IN", String(c.bytesIn)))
        f.append(("TCPOPS_BYTES_OUT", String(c.bytesOut)))
        return f
    }
}
