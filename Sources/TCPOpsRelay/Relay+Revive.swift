// Taking back what a previous tcpopsd kept (RelayKeep) after it died: its parked fds are received,
// matched to their records, checked, and rebuilt into relays under the same conids, with the bytes
// its pipes hold, its FINs and raised events, lifetimes and flags. Nothing here may crash: a relay
// whose record or fds cannot be used is closed (both sides get a FIN) and logged.
import CShims
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsLoop
import TCPOpsPosix
import TCPOpsSystemd

/// One relay as a previous process kept it (read on the main thread, rebuilt on a worker's).
package struct KeptRelay: @unchecked Sendable {
    package var clientFD: Int32 = -1, upstreamFD: Int32 = -1
    package var clientConid: UInt64 = 0, upstreamConid: UInt64 = 0
    package var clientOpenedAt: UInt64 = 0, upstreamOpenedAt: UInt64 = 0
    package var clientActivity: UInt64 = 0, upstreamActivity: UInt64 = 0
    package var clientLifetime: UInt64 = 0, upstreamLifetime: UInt64 = 0
    package var clientIn: UInt64 = 0, clientOut: UInt64 = 0, upstreamIn: UInt64 = 0, upstreamOut: UInt64 = 0
    package var listenerHash: UInt64 = 0
    package var attempt: Int32 = 0
    package var phase: UInt8 = 0
    package var clientReason: UInt8 = 0, upstreamReason: UInt8 = 0
    package var clientState: Int8 = 0, upstreamState: Int8 = 0
    package var flags: UInt32 = 0
    package var proxiedRemote: SocketAddress?, proxiedLocal: SocketAddress?
    package var pipeToUpstream: PipePool.Pipe?, pipeToClient: PipePool.Pipe?
    /// The pipe marks as recorded (old read end + 1), matched to parked pipes after reading.
    var markToUpstream: Int32 = 0, markToClient: Int32 = 0

    package func has(_ f: UInt32) -> Bool { flags & f != 0 }

    /// Every fd it holds (to close it when it cannot be taken back).
    package var fds: [Int32] {
        [clientFD, upstreamFD].filter { $0 >= 0 } + [pipeToUpstream, pipeToClient].compactMap { $0 }.flatMap { [$0.read, $0.write] }
    }

    /// Closes what it holds; both connections get a FIN first (the old queue still holds copies).
    package func discard() {
        for fd in [clientFD, upstreamFD] where fd >= 0 { Socket.shutdownBoth(fd) }
        for fd in fds { closeFD(fd) }
    }
}

/// What a previous process's keep held, read back.
package struct TakenBack: @unchecked Sendable {
    package var relays: [KeptRelay] = []
    /// Records whose fds did not all come back (or did not match), and parked fds that belong to
    /// no live record (ended relays, free pipes): closed.
    package var broken: [String] = []
    package var strays = 0
    /// Clients parked at their accept whose relay was not recorded yet (a death in between): alive
    /// (established, or their FIN came), to be started as new relays under their conids.
    package var accepted: [(fd: Int32, conid: UInt64)] = []
}

extension RelayKeep {
    /// Reads a previous keep: drains its queue (every parked fd comes here once; the newest copy of
    /// each wins) and matches the fds to the live records. `records`: the file, mapped.
    package static func takeBack(root: Int32, records: SharedFile) -> TakenBack {
        // The root's queue: the shards' reading ends, oldest first.
        var queues: [Int32] = []
        while let (bytes, fds) = Parcel.receive(root, keepFDs: true) {
            if KeepEntry.parse(bytes).first?.role == .shard { queues += fds } else { fds.forEach(closeFD) }
        }
        defer { queues.forEach(closeFD) }
        return takeBack(queues: queues, records: records)
    }

    package static func takeBack(queues: [Int32], records: SharedFile) -> TakenBack {
        var out = TakenBack()
        var sockets: [UInt64: (fd: Int32, slot: UInt32, role: KeepEntry.Role)] = [:]  // by conid
        var pipeEnds: [UInt64: (read: Int32, write: Int32)] = [:]  // by old read end
        // Clients parked by their accept (no conid in the entry: their record has it), by slot.
        var acceptedBySlot: [UInt32: Int32] = [:]
        var stray: [Int32] = []
        for queue in queues { while let (bytes, fds) = Parcel.receive(queue, keepFDs: true) {
            let entries = KeepEntry.parse(bytes)
            for (i, fd) in fds.enumerated() {
                guard i < entries.count else {
                    stray.append(fd)
                    continue
                }
                let e = entries[i]
                switch e.role {
                case .client where e.key == 0:
                    if let old = acceptedBySlot[e.slot] { stray.append(old) }
                    acceptedBySlot[e.slot] = fd
                case .client, .upstream:
                    if let old = sockets[e.key] { stray.append(old.fd) }
                    sockets[e.key] = (fd, e.slot, e.role)
                case .pipeRead:
                    if let old = pipeEnds[e.key], old.read >= 0 { stray.append(old.read) }
                    pipeEnds[e.key, default: (-1, -1)].read = fd
                case .pipeWrite:
                    if let old = pipeEnds[e.key], old.write >= 0 { stray.append(old.write) }
                    pipeEnds[e.key, default: (-1, -1)].write = fd
                case .shard:
                    stray.append(fd)  // (only the root holds shards)
                }
            }
        } }
        let count = records.size / KeepRecord.size
        var usedPipes = Set<UInt64>()
        for slot in 0..<count {
            let p = UnsafeRawPointer(records.base + slot * KeepRecord.size)
            let clientConid = p.load(fromByteOffset: KeepRecord.clientConid, as: UInt64.self)
            guard clientConid != 0 else { continue }
            var k = KeptRelay()
            k.clientConid = clientConid
            k.upstreamConid = p.load(fromByteOffset: KeepRecord.upstreamConid, as: UInt64.self)
            k.clientOpenedAt = p.load(fromByteOffset: KeepRecord.clientOpenedAt, as: UInt64.self)
            k.upstreamOpenedAt = p.load(fromByteOffset: KeepRecord.upstreamOpenedAt, as: UInt64.self)
            k.clientActivity = p.load(fromByteOffset: KeepRecord.clientActivity, as: UInt64.self)
            k.upstreamActivity = p.load(fromByteOffset: KeepRecord.upstreamActivity, as: UInt64.self)
            k.clientLifetime = p.load(fromByteOffset: KeepRecord.clientLifetime, as: UInt64.self)
            k.upstreamLifetime = p.load(fromByteOffset: KeepRecord.upstreamLifetime, as: UInt64.self)
            k.clientIn = p.load(fromByteOffset: KeepRecord.clientIn, as: UInt64.self)
            k.clientOut = p.load(fromByteOffset: KeepRecord.clientOut, as: UInt64.self)
            k.upstreamIn = p.load(fromByteOffset: KeepRecord.upstreamIn, as: UInt64.self)
            k.upstreamOut = p.load(fromByteOffset: KeepRecord.upstreamOut, as: UInt64.self)
            k.listenerHash = p.load(fromByteOffset: KeepRecord.listenerHash, as: UInt64.self)
            k.attempt = p.load(fromByteOffset: KeepRecord.attempt, as: Int32.self)
            k.phase = p.load(fromByteOffset: KeepRecord.phase, as: UInt8.self)
            k.clientReason = p.load(fromByteOffset: KeepRecord.clientReason, as: UInt8.self)
            k.upstreamReason = p.load(fromByteOffset: KeepRecord.upstreamReason, as: UInt8.self)
            k.clientState = p.load(fromByteOffset: KeepRecord.clientState, as: Int8.self)
            k.upstreamState = p.load(fromByteOffset: KeepRecord.upstreamState, as: Int8.self)
            k.flags = p.load(fromByteOffset: KeepRecord.flags, as: UInt32.self)
            k.markToUpstream = p.load(fromByteOffset: KeepRecord.pipeToUpstream, as: Int32.self)
            k.markToClient = p.load(fromByteOffset: KeepRecord.pipeToClient, as: Int32.self)
            if k.has(KeepRecord.proxied) {
                k.proxiedRemote = RelayKeep.read(p + KeepRecord.proxiedRemote)
                k.proxiedLocal = RelayKeep.read(p + KeepRecord.proxiedLocal)
            }
            if let c = sockets[k.clientConid], c.slot == UInt32(slot), c.role == .client {
                k.clientFD = c.fd
                sockets[k.clientConid] = nil
            }
            // Parked by its accept: the newest such entry of the slot is this relay's client (an
            // older one was an ended relay's, and a copy parked by conid since wins).
            if let a = acceptedBySlot.removeValue(forKey: UInt32(slot)) {
                if k.clientFD < 0 { k.clientFD = a } else { stray.append(a) }
            }
            if let u = sockets[k.upstreamConid], u.slot == UInt32(slot), u.role == .upstream {
                k.upstreamFD = u.fd
                sockets[k.upstreamConid] = nil
            }
            for (mark, way) in [(k.markToUpstream, Relay.Way.toUpstream), (k.markToClient, .toClient)] where mark > 0 {
                let key = UInt64(mark - 1)
                guard !usedPipes.contains(key), let ends = pipeEnds[key], ends.read >= 0, ends.write >= 0 else { continue }
                usedPipes.insert(key)
                pipeEnds[key] = nil
                let pipe = PipePool.Pipe(read: ends.read, write: ends.write)
                if way == .toUpstream { k.pipeToUpstream = pipe } else { k.pipeToClient = pipe }
            }
            if let why = k.unusable {
                out.broken.append("conid \(k.clientConid): \(why)")
                k.discard()
            } else {
                out.relays.append(k)
            }
        }
        // What no live record claims: ended relays' sockets and the pool's idle pipes, and clients
        // parked at their accept whose relay was not recorded yet. Those are alive (an ended relay's
        // sockets were shut down: their state is past ESTABLISHED and CLOSE_WAIT).
        for (conid, s) in sockets {
            let state = tcpops_tcp_state(s.fd)
            if s.role == .client, state == 1 || state == 8 {
                out.accepted.append((s.fd, conid))
            } else {
                stray.append(s.fd)
            }
        }
        for fd in acceptedBySlot.values {
            let state = tcpops_tcp_state(fd)
            if state == 1 || state == 8 { out.accepted.append((fd, 0)) } else { stray.append(fd) }
        }
        for e in pipeEnds.values { stray += [e.read, e.write].filter { $0 >= 0 } }
        out.strays = stray.count
        for fd in stray { closeFD(fd) }
        return out
    }
}

extension KeptRelay {
    /// Why this record cannot be taken back (nil: it can).
    var unusable: String? {
        guard clientFD >= 0, Socket.kind(clientFD) == S_IFSOCK else { return "its client socket did not come back" }
        guard let phase = Relay.Phase(rawValue: phase), [.connecting, .relaying, .quieting].contains(phase) else {
            return "its phase (\(self.phase)) is not one a relay is taken back in"
        }
        // Connecting, a relay whose upstream socket was not parked yet connects anew.
        if upstreamFD >= 0 {
            guard Socket.kind(upstreamFD) == S_IFSOCK else { return "its upstream socket is not a socket" }
            guard upstreamConid != 0, upstreamConid != clientConid else { return "its record is damaged (conids)" }
        } else if phase != .connecting {
            return "its upstream socket did not come back"
        }
        // Times and counts a relay could have (a damaged record's would overflow a deadline).
        guard [clientLifetime, upstreamLifetime, clientActivity, upstreamActivity, clientOpenedAt, upstreamOpenedAt].allSatisfy({ $0 < 1 << 62 }) else {
            return "its record is damaged (times)"
        }
        guard ConnectionState(rawValue: Int(clientState)) != nil, upstreamFD < 0 || ConnectionState(rawValue: Int(upstreamState)) != nil else {
            return "its record is damaged (states)"
        }
        if (markToUpstream > 0) != (pipeToUpstream != nil) || (markToClient > 0) != (pipeToClient != nil) {
            return "a pipe holding its bytes did not come back"
        }
        for p in [pipeToUpstream, pipeToClient].compactMap({ $0 }) where Socket.kind(p.read) != S_IFIFO || Socket.kind(p.write) != S_IFIFO {
            return "a pipe holding its bytes is not a pipe"
        }
        return nil
    }
}

extension Relay {
    /// POLLRDHUP (Glibc leaves it out without _GNU_SOURCE).
    static let pollReadHangup: Int32 = 0x2000

    /// Rebuilds a kept relay on this worker (its listener's settings as they are now). Returns
    /// false (the relay closed, the reason logged by the caller) when its sockets cannot be watched.
    package static func revive(ctx: RelayContext, listener: ListenerSettings, kept k: KeptRelay) -> Bool {
        let now = ctx.loop.now
        if k.upstreamFD < 0 { return reconnect(ctx: ctx, listener: listener, kept: k) }
        let clientState = ConnectionState(rawValue: Int(k.clientState)) ?? .ok
        let upState = ConnectionState(rawValue: Int(k.upstreamState)) ?? .ok
        let client = Connection(conid: k.clientConid, side: .client, fd: k.clientFD, state: clientState,
                                now: min(k.clientOpenedAt, now), eventsEnabled: k.has(KeepRecord.clientEvents))
        let up = Connection(conid: k.upstreamConid, side: .upstream, fd: k.upstreamFD, state: upState,
                            now: min(k.upstreamOpenedAt, now), eventsEnabled: k.has(KeepRecord.upstreamEvents))
        if let r = k.proxiedRemote, let l = k.proxiedLocal {
            client.remote = r
            client.local = l
        } else {
            client.local = Socket.localAddress(k.clientFD)
            client.remote = Socket.peerAddress(k.clientFD)
        }
        up.remote = Socket.peerAddress(k.upstreamFD)
        up.localUnasked = true
        client.balancerOwn = k.has(KeepRecord.balancerOwn)
        for (c, activity, lifetime, bytesIn, bytesOut, reason, raised) in [
            (client, k.clientActivity, k.clientLifetime, k.clientIn, k.clientOut, k.clientReason, k.has(KeepRecord.clientRaised)),
            (up, k.upstreamActivity, k.upstreamLifetime, k.upstreamIn, k.upstreamOut, k.upstreamReason, k.has(KeepRecord.upstreamRaised)),
        ] {
            c.lastActivity = min(activity, now)
            c.lifetime = lifetime
            c.bytesIn = bytesIn
            c.bytesOut = bytesOut
            c.closeReason = RelayKeep.reason(reason)
            c.raisedEvent = raised
        }
        let relay = Relay(ctx: ctx, listener: listener, client: client, metrics: ctx.metrics.listener(listener.name))
        client.relay = relay
        up.relay = relay
        relay.upstream = up
        relay.attempt = Int16(clamping: max(0, k.attempt))
        relay.toUpstream.eof = k.has(KeepRecord.toUpstreamEOF)
        relay.toUpstream.shut = k.has(KeepRecord.toUpstreamShut)
        relay.toClient.eof = k.has(KeepRecord.toClientEOF)
        relay.toClient.shut = k.has(KeepRecord.toClientShut)
        relay.toUpstream.bulk = k.has(KeepRecord.toUpstreamBulk)
        relay.toClient.bulk = k.has(KeepRecord.toClientBulk)
        for (way, pipe) in [(Way.toUpstream, k.pipeToUpstream), (.toClient, k.pipeToClient)] {
            guard let pipe else { continue }
            let fill = max(0, ctx.pipes.bytesIn(pipe))
            if way == .toUpstream {
                relay.toUpstream.pipe = pipe
                relay.toUpstream.fill = fill
            } else {
                relay.toClient.pipe = pipe
                relay.toClient.fill = fill
            }
            ctx.keep?.pipeAdopted(pipe)
        }
        let connecting = upState == .connecting
        relay.enter(connecting ? .connecting : .relaying)
        // A peer that closed while no tcpopsd ran: its event (if it raises one) says it is late.
        var polls = [pollfd(fd: k.clientFD, events: Int16(Relay.pollReadHangup), revents: 0), pollfd(fd: k.upstreamFD, events: Int16(Relay.pollReadHangup), revents: 0)]
        if poll(&polls, 2, 0) > 0 {
            let gone = Int16(Relay.pollReadHangup | POLLHUP | POLLERR)
            if polls[0].revents & gone != 0 && client.closeReason == nil { client.late = true }
            if polls[1].revents & gone != 0 && up.closeReason == nil && !connecting { up.late = true }
        }
        ctx.track(client)
        ctx.track(up)
        ctx.added(relay)
        ctx.adopted(conids: [client.conid, up.conid])
        Socket.adoptFD(k.clientFD)
        Socket.adoptFD(k.upstreamFD)
        ctx.keep?.admit(relay)
        if relay.keepSlot >= 0, let keep = ctx.keep {
            if let p = relay.toUpstream.pipe { keep.pipeMark(relay, .toUpstream).pointee = p.read + 1 }
            if let p = relay.toClient.pipe { keep.pipeMark(relay, .toClient).pointee = p.read + 1 }
        }
        // Registering reports what is already there (edge-triggered: the first edge is now).
        guard relay.register(client, mask: Relay.watchReadWrite), relay.register(up, mask: Relay.watchReadWrite) else { return false }
        if connecting {
            relay.armPhaseTimer(at: max(now + 1_000_000_000, relay.connectDeadline))
        } else {
            // What the pipes hold goes out first.
            relay.shovel(.toUpstream)
            relay.shovel(.toClient)
        }
        relay.armLifetime(client)
        relay.armLifetime(up)
        relay.settle()
        return true
    }

    /// A kept client whose upstream was not parked (tcpopsd died while connecting it): the connect
    /// starts again, from the attempt it was at; what the client sent meanwhile is in its socket
    /// (or in the pipe the record names).
    private static func reconnect(ctx: RelayContext, listener: ListenerSettings, kept k: KeptRelay) -> Bool {
        let now = ctx.loop.now
        let client = Connection(conid: k.clientConid, side: .client, fd: k.clientFD, state: .accepting,
                                now: min(k.clientOpenedAt, now), eventsEnabled: k.has(KeepRecord.clientEvents))
        client.local = Socket.localAddress(k.clientFD)
        client.remote = Socket.peerAddress(k.clientFD)
        client.lastActivity = min(k.clientActivity, now)
        client.lifetime = k.clientLifetime
        client.bytesIn = k.clientIn
        let relay = Relay(ctx: ctx, listener: listener, client: client, metrics: ctx.metrics.listener(listener.name))
        client.relay = relay
        relay.attempt = Int16(clamping: max(0, k.attempt))
        relay.toUpstream.eof = k.has(KeepRecord.toUpstreamEOF)
        if let pipe = k.pipeToUpstream {
            relay.toUpstream.pipe = pipe
            relay.toUpstream.fill = max(0, ctx.pipes.bytesIn(pipe))
            ctx.keep?.pipeAdopted(pipe)
        }
        if let pipe = k.pipeToClient { ctx.pipes.close(pipe) }  // (nothing came from an upstream)
        relay.enter(.connecting)
        ctx.track(client)
        ctx.added(relay)
        ctx.adopted(conids: [client.conid])
        Socket.adoptFD(k.clientFD)
        ctx.keep?.admitClient(relay)
        if relay.keepSlot >= 0, let keep = ctx.keep, let p = relay.toUpstream.pipe { keep.pipeMark(relay, .toUpstream).pointee = p.read + 1 }
        guard relay.register(client, mask: Relay.watchRead) else { return false }
        relay.armLifetime(client)
        relay.connectUpstream()
        relay.settle()
        return !relay.ended
    }
}
