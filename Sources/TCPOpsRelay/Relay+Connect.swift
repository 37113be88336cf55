// How a relay begins: the accepted client gets the listener's options, then the upstream is
// connected, candidate after candidate (the listener's upstreams in order, each address of a name
// in turn) until one answers. A failed attempt raises its own event under its own conid. One
// client's attempts are bounded: at most connect_attempts of them, all within connect_deadline of
// its accept; then tcpopsd closes the client (no event for it: tcpopsd closed it).
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix

extension Relay {
    /// Takes an accepted socket: applies the listener's options, starts the upstream connect.
    /// Returns false when the process ran out of a local resource (fds, memory) for the upstream
    /// socket: the client was closed, and the listener should pause.
    @discardableResult
    /// `parked`: the client was parked in the crash keep at its accept, under this conid and record
    /// slot (Listener: RelayKeep.acceptTarget and the accept that parks); its record is written here.
    package static func start(ctx: RelayContext, listener: ListenerSettings, metrics: ListenerMetrics, clientFD: Int32, local: SocketAddress?,
                      remote: SocketAddress?, parked: (conid: UInt64, slot: Int32)? = nil) -> Bool {
        let now = ctx.loop.now
        let client = Connection(conid: parked?.conid ?? ctx.newConid(), side: .client, fd: clientFD, state: .accepting, now: now,
                                eventsEnabled: listener.closedEvent)
        client.local = local
        client.remote = remote
        client.lifetime = listener.lifetime.nanoseconds
        let relay = Relay(ctx: ctx, listener: listener, client: client, metrics: metrics)
        // Nothing was read yet, and nothing needs to be asked for: a socket registered
        // edge-triggered reports the bytes already in it as its first edge. (A client that waits
        // for the server costs no recv that says EAGAIN when its upstream connects.)
        relay.toUpstream.sourceDry = true
        relay.toClient.sourceDry = true
        client.relay = relay
        // Parked at once (the crash keep): from here a death of tcpopsd cannot reset this client.
        // (A client whose PROXY header is awaited is parked with its upstream: bytes of the header
        // read before a death could not be given back.)
        if let parked, let keep = ctx.keep {
            relay.keepSlot = parked.slot
            keep.save(relay)
        } else if !listener.acceptProxy {
            ctx.keep?.admitClient(relay)
        }
        ctx.track(client)
        ctx.added(relay)
        ctx.accepted += 1
        metrics.accepted.increment()
        do {
            try Socket.setKeepalive(clientFD, listener.keepalive, fresh: true)
            if listener.userTimeout > 0 {
                try Socket.setUserTimeout(clientFD, milliseconds: UInt32(listener.userTimeout * 1000))
            }
            // TCP_NODELAY comes from the listening socket (ListenerGroup sets it there).
        } catch {
            ctx.socketOptionsLog.log(.warning, "cannot set options on an accepted connection: \(error)", relay.fields(client))
        }
        // Read at once: bytes that come while the upstream connects are held (one read's worth).
        guard relay.register(client, mask: Relay.watchRead) else { return true }
        relay.armLifetime(client)
        if listener.acceptProxy {
            relay.awaitProxyHeader()
            return true
        }
        let ok = relay.connectUpstream()
        if ctx.logger.enabled(.debug) && !relay.ended {
            ctx.logger.log(.debug, "accepted conid \(client.conid) from \(client.remote?.description ?? "?"), upstream conid \(relay.upstream.map { String($0.conid) } ?? "-")",
                           id: .connectionOpened, relay.fields(client))
        }
        return ok
    }

    /// The upstream entry and address of the current attempt.
    package var candidate: (upstream: Upstream, address: SocketAddress)? { listener.candidate(Int(attempt)) }

    /// Starts the connect of the current attempt. False when the process is out of fds or memory
    /// (the relay is ended: that is ours, not the upstream's, and raises no event).
    @discardableResult
    package func connectUpstream() -> Bool {
        let now = ctx.loop.now
        let conid = ctx.newConid()
        guard let (_, address) = candidate else {
            end(failed: nil, reason: .local, why: "no upstream address to connect to")
            return true
        }
        let fd: Int32
        let connectedAtOnce: Bool
        do {
            (fd, connectedAtOnce) = try Socket.connect(address)
        } catch {
            let up = Connection(conid: conid, side: .upstream, fd: -1, state: .error, now: now, eventsEnabled: listener.closedEvent)
            up.remote = address
            up.relay = self
            upstream = up
            ctx.track(up)
            if error.call == "socket" || [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errno) {
                metrics.rejectedOutOfFds.increment()
                end(failed: nil, reason: .local, why: "no upstream socket: \(error)")
                return false
            }
            // Refused (or unreachable) at once: this attempt's conid raises its event.
            up.closeErrno = error.errno
            connectFailed(error.errno, why: "\(error)")
            return true
        }
        let up = Connection(conid: conid, side: .upstream, fd: fd, state: .connecting, now: now, eventsEnabled: listener.closedEvent)
        up.remote = address
        // connect() bound the socket: its local address is the kernel's to tell (asked only when
        // wanted, as for an event of a failed attempt).
        up.localUnasked = true
        up.relay = self
        upstream = up
        ctx.track(up)
        do {
            try Socket.setKeepalive(fd, listener.upstreamKeepalive, fresh: true)
            if listener.upstreamUserTimeout > 0 {
                try Socket.setUserTimeout(fd, milliseconds: UInt32(listener.upstreamUserTimeout * 1000))
            }
            Socket.setNoDelay(fd)
        } catch {
            ctx.socketOptionsLog.log(.warning, "cannot set options on an upstream connection: \(error)", fields(up))
        }
        guard register(up, mask: Relay.watchReadWrite) else { return true }
        ctx.keep?.admit(self)
        if connectedAtOnce {
            connected()
        } else {
            // This attempt's connect_timeout, or what is left of the client's connect_deadline. (The
            // closure captures only the relay: anything more would cost a context allocation a
            // connection.)
            armPhaseTimer(at: min(now + listener.connectTimeout.nanoseconds, connectDeadline))  // (timerFired says what came)
        }
        return true
    }

    /// When the client's upstream attempts must be over: connect_deadline from its accept (for an
    /// accept_proxy listener the header's wait is part of it; a balancer sends it at once).
    package var connectDeadline: UInt64 { client.openedAt + listener.connectDeadline.nanoseconds }

    /// The current attempt could not connect: its conid raises its event, and the next candidate
    /// is tried; after the last, or past connect_attempts or connect_deadline, the relay ends (the
    /// client is closed by tcpopsd).
    /// A connect failed with `e`: the attempt fails as the peer's or the network's doing, or, when
    /// the error is not theirs (this host is out of ports, a local rule refused it, or our own
    /// bug), it is logged as such and the next address is tried with no event for this one.
    package func connectFailed(_ e: Int32, why: String) {
        guard let reason = CloseReason.classify(errno: e, connecting: true) else {
            let origin = SocketErrorOrigin(errno: e)
            ctx.ownErrorLog.log(origin == .bug ? .error : .warning, "conid \(upstream?.conid ?? 0): connect: \(origin.describe(e))", fields(client))
            attemptFailed(.local, why: "connect: \(errnoName(e))")
            return
        }
        attemptFailed(reason, why: why)
    }

    package func attemptFailed(_ reason: CloseReason, why: String) {
        guard !ended, let failed = upstream else { return }
        metrics.connectFailures[reason.rawValue]?.increment()
        guard let next = listener.candidate(Int(attempt) + 1) else {
            end(failed: failed, reason: reason, why: why)
            return
        }
        guard Int(attempt) + 1 < listener.connectAttempts else {
            end(failed: failed, reason: reason, why: "\(why); connect_attempts (\(listener.connectAttempts)) reached")
            return
        }
        guard ctx.loop.now < connectDeadline else {
            end(failed: failed, reason: reason, why: "\(why); connect_deadline (\(listener.connectDeadline.secondsText)) reached")
            return
        }
        cancelPhaseTimer()
        raise(failed, reason)
        retire(failed, state: .error)
        if keepSlot >= 0 { ctx.keep?.attemptClosed() }
        ctx.untrack(failed)
        failed.relay = nil
        ctx.upstreamAttemptLog.log(.info, "upstream \(failed.remote?.description ?? "?") failed (\(why)): trying \(next.address)"
                                   + (next.upstream.isName ? " (\(next.upstream))" : ""), fields(client))
        attempt += 1
        connectUpstream()
    }

    package func connected() {
        guard let upstream else { return }
        upstream.state = .ok
        if phase == .connecting { enter(.relaying) }  // (a quieting relay stays quiet)
        if client.state == .accepting { client.state = .ok }  // it may have sent FIN already (eof)
        upstream.localUnasked = true  // getsockname when the address is wanted (an event, list)
        cancelPhaseTimer()
        sendProxyHeader()
        // [events] opened: off (the default), this load is all it costs.
        if ctx.generation.openedEvents && !client.balancerOwn {
            metrics.event(.opened, .established, .client)
            var e = TCPEvent(kind: .opened, reason: .established, conid: client.conid, peerConid: upstream.conid, side: .client,
                             listener: listener.name, local: client.local, remote: client.remote,
                             durationMs: (ctx.loop.now &- client.openedAt) / 1_000_000, bytesIn: client.bytesIn, bytesOut: client.bytesOut)
            e.tcp = Socket.tcpInfo(client.fd)
            ctx.events.emit(e)
        }
    }
}
