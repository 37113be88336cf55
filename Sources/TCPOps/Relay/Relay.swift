// A relay: an accepted client, its upstream, and the bytes between them. Bulk bytes move with
// splice() through one pipe per direction, taken from the pool only while bytes are in flight;
// a small read into an empty direction is copied through one shared buffer instead. Epoll
// interest is recomputed from each direction's state after every pass, so backpressure falls out
// of state: a side is read only while its direction's pipe has room and its destination is not
// blocked. A FIN is passed on with shutdown(SHUT_WR); the relay ends when both directions are
// done, or when either side fails, times out or is closed.
import Glibc

final class Direction {
    // Stored properties widest first (Swift lays them out in this order): 64 bytes an object.
    /// Bytes in the pipe.
    var fill = 0
    /// Bytes in memory, written after the pipe's: given by `tcpopsctl send`, read while the
    /// destination was still connecting, or left over from a copy when no pipe could be had. The
    /// source is not read while any wait.
    var held: [UInt8] = []
    var heldSent = 0
    var pipe: PipePool.Pipe?
    /// The source sent FIN.
    var eof = false
    /// The FIN was passed on to the destination.
    var shut = false
    /// The destination said EAGAIN; wait for EPOLLOUT before moving more.
    var blocked = false
    /// The source's last read came back short (or would block) and no EPOLLIN came since: there
    /// is nothing to read, and asking again would only cost a syscall that says EAGAIN.
    var sourceDry = false
    /// The last read filled its buffer: bulk data, moved by splice. Otherwise a read into an
    /// empty direction copies through a small buffer (cheaper than splice for small messages).
    var bulk = false

    /// Nothing waits to be written to the destination.
    var drained: Bool { fill == 0 && held.isEmpty }
}

public final class Relay: TurnEndHandler {
    // Stored properties widest first, the flags last (Swift lays them out in this order).
    let ctx: RelayContext
    let listener: ListenerSettings
    let client: Connection
    var upstream: Connection!
    let toUpstream = Direction()
    let toClient = Direction()
    /// Its listener's metrics (counted from the relay's loop, without a lookup).
    let metrics: ListenerMetrics
    /// Which of the listener's upstream candidates (addresses, in order) is being tried or used.
    var attempt = 0
    var drainWhy = ""
    static let drainLimit: UInt64 = 5_000_000_000
    /// accept_proxy: what came of the client's PROXY header so far (nil once it was read, or
    /// when the listener does not ask for one), and the deadline for it (proxyTimer).
    var proxyInput: [UInt8]?
    var connectTimer: TimerQueue.ID?
    var drainTimer: TimerQueue.ID?
    var proxyTimer: TimerQueue.ID?
    var ended = false
    /// One side broke while bytes it had sent still wait for the other: the relay lives on only
    /// to deliver them (for at most `drainLimit`, drainTimer), then ends.
    var draining = false
    /// updateInterest was asked this turn: the masks are set at its end.
    var interestPending = false
    /// Handing over: nothing more is read, held bytes are still written.
    var quieting = false

    init(ctx: RelayContext, listener: ListenerSettings, client: Connection, metrics: ListenerMetrics) {
        self.ctx = ctx
        self.listener = listener
        self.client = client
        self.metrics = metrics
    }

    @discardableResult
    func register(_ c: Connection, mask: UInt32) -> Bool {
        do {
            try ctx.loop.register(c.fd, mask: mask, handler: c)
            return true
        } catch {
            end(failed: nil, reason: .local, why: "cannot watch conid \(c.conid): \(error)")
            return false
        }
    }

    // MARK: events from the loop

    func handle(_ conn: Connection, _ events: UInt32) {
        guard !ended else { return }
        if awaitingProxy {
            readProxyHeader()
            return
        }
        if conn === upstream && upstream.state == .connecting {
            guard events & (Events.write | Events.error | Events.hangup) != 0 else { return }
            // A failed connect is reported with EPOLLERR (and EPOLLHUP); writable alone means
            // it succeeded, and SO_ERROR need not be asked.
            let err = events & (Events.error | Events.hangup) != 0 ? Socket.pendingError(upstream.fd) : 0
            if err != 0 {
                upstream.closeErrno = err
                attemptFailed(CloseReason.classify(errno: err, connecting: true), why: "connect: \(errnoName(err))")
                return
            }
            connected()
            shovel(toUpstream, from: client, to: upstream)
            if ended { return }
            updateInterest()
            return
        }
        let (readDir, writeDir, other) = conn === client ? (toUpstream, toClient, upstream!) : (toClient, toUpstream, client)
        if events & Events.hangup != 0 { conn.hungUp = true }
        if events & Events.error != 0 && events & Events.read == 0 {
            // No bytes to read first: the pending error is the whole story (reading it clears it,
            // so it is read only here, never after a read).
            let err = Socket.pendingError(conn.fd)
            if err != 0 {
                fail(conn, errno: err)
                return
            }
        }
        if events & Events.write != 0 {
            writeDir.blocked = false
            shovel(writeDir, from: other, to: conn)
            if ended { return }
        }
        if draining {
            finishDrainIfDone()
            return
        }
        if events & (Events.read | Events.hangup | Events.error) != 0 {
            readDir.sourceDry = false
            shovel(readDir, from: conn, to: other)
            if ended { return }
        }
        if toUpstream.shut && toClient.shut {
            end(failed: nil, reason: .fin, why: "both sides closed")
            return
        }
        updateInterest()
    }

    /// Moves bytes from `from` through the direction's pipe to `to` while either step progresses.
    func shovel(_ d: Direction, from: Connection, to: Connection) {
        let capacity = ctx.pipes.capacity
        let now = ctx.loop.now
        let canWrite = to.state == .ok || to.state == .eof
        var readDrained = d.sourceDry
        while true {
            var progress = false
            if !d.eof && !readDrained && !d.blocked && !quieting && d.held.isEmpty && d.fill < capacity {
                let mode = readMode(d, canWrite: canWrite)
                let want = mode == .splice ? capacity - d.fill : ctx.scratch.count
                let result = mode == .splice ? Splice.move(from: from.fd, to: d.pipe!.write, length: want)
                                             : Socket.receive(from.fd, into: ctx.scratch)
                switch result {
                case .moved(let n):
                    from.bytesIn &+= UInt64(n)
                    from.lastActivity = now
                    progress = true
                    if n < want {
                        readDrained = true
                        d.sourceDry = true
                    }
                    d.bulk = n >= Relay.copyLimit
                    switch mode {
                    case .copy:
                        guard forward(d, n, to: to, now: now) else { return }
                    case .hold:
                        d.held.append(contentsOf: UnsafeRawBufferPointer(rebasing: ctx.scratch[0..<n]))
                    case .splice:
                        d.fill += n
                    }
                case .endOfFile:
                    d.eof = true
                    from.state = .eof
                    raise(from, .fin)
                case .wouldBlock:
                    readDrained = true
                    d.sourceDry = true
                case .failed(let e):
                    fail(from, errno: e)
                    return
                }
            }
            if d.fill > 0 && canWrite && !d.blocked, let pipe = d.pipe {
                guard let n = wrote(Splice.move(from: pipe.read, to: to.fd, length: d.fill), d, to: to, now: now) else { return }
                d.fill -= n
                ctx.relayedBytes &+= UInt64(n)
                progress = progress || n > 0
            } else if d.fill == 0 && !d.held.isEmpty && canWrite && !d.blocked {
                guard let n = wrote(Socket.send(to.fd, d.held[d.heldSent...]), d, to: to, now: now) else { return }
                ctx.relayedBytes &+= UInt64(n)
                d.heldSent += n
                if d.heldSent == d.held.count {
                    d.held = []
                    d.heldSent = 0
                }
                progress = progress || n > 0
            }
            if !progress { break }
        }
        if d.fill == 0, let p = d.pipe {
            ctx.pipes.give(p)
            d.pipe = nil
        }
        if d.eof && d.drained && !d.shut && canWrite {
            // The last FIN to pass on ends the relay: close() sends it, no shutdown() needed.
            let otherDone = (d === toUpstream ? toClient : toUpstream).shut
            if !otherDone { Socket.shutdownWrite(to.fd) }
            d.shut = true
        }
    }

    /// Reads of at most this many bytes into an empty direction are copied, not spliced.
    static let copyLimit = 16384

    private enum ReadMode { case copy, splice, hold }

    /// How the next read of an empty-enough direction moves its bytes: small reads are copied
    /// straight to a writable destination; bulk reads are spliced through a pipe; bytes that
    /// arrive while the destination is still connecting are held in memory (one read's worth).
    /// Without a pipe (out of fds), bulk is copied too: slower, never a reset.
    private func readMode(_ d: Direction, canWrite: Bool) -> ReadMode {
        if d.fill == 0 {
            if !canWrite { return .hold }
            if !d.bulk { return .copy }
        }
        if takePipe(d) { return .splice }
        return canWrite ? .copy : .hold  // no pipe means an empty direction: fill is 0
    }

    private func takePipe(_ d: Direction) -> Bool {
        guard d.pipe == nil else { return true }
        do {
            d.pipe = try ctx.pipes.take()
            return true
        } catch {
            ctx.noPipe(error)
            return false
        }
    }

    /// The book-keeping of one write to `to`: the bytes it took (0: it must wait for EPOLLOUT),
    /// or nil when `to` broke (the relay is failing it).
    private func wrote(_ result: IOResult, _ d: Direction, to: Connection, now: UInt64) -> Int? {
        switch result {
        case .moved(let n):
            to.bytesOut &+= UInt64(n)
            to.lastActivity = now
            (to.side == .upstream ? metrics.bytesToUpstream : metrics.bytesToClient).increment(by: Int64(n))
            return n
        case .wouldBlock:
            d.blocked = true
            return 0
        case .endOfFile:
            return 0
        case .failed(let e):
            fail(to, errno: e)
            return nil
        }
    }

    /// Sends `n` bytes just read into the scratch buffer; what the destination cannot take now
    /// goes into the direction's pipe, ahead of anything read later.
    private func forward(_ d: Direction, _ n: Int, to: Connection, now: UInt64) -> Bool {
        guard let sent = wrote(Socket.send(to.fd, UnsafeRawBufferPointer(rebasing: ctx.scratch[0..<n])), d, to: to, now: now) else {
            return false
        }
        ctx.relayedBytes &+= UInt64(sent)
        if sent < n {
            d.blocked = true  // a short send: the socket buffer is full
            let rest = UnsafeRawBufferPointer(rebasing: ctx.scratch[sent..<n])
            if takePipe(d), ctx.pipes.load(d.pipe!, rest) {
                d.fill += n - sent
            } else {
                d.held.append(contentsOf: rest)
            }
        }
        return true
    }

    private func interest(_ c: Connection, reading: Direction, writing: Direction) -> UInt32 {
        if c.state == .connecting { return Events.write }
        if draining || quieting { return !writing.drained && writing.blocked ? Events.write : 0 }
        var m: UInt32 = 0
        if !reading.eof && !reading.blocked && reading.held.isEmpty && reading.fill < ctx.pipes.capacity { m |= Events.read }
        if !writing.drained && writing.blocked { m |= Events.write }
        return m
    }

    /// The interest masks follow the relay's state at the end of the loop turn: several changes
    /// in one turn (a read that fills a direction, the write that empties it) cost at most one
    /// epoll_ctl per side, and none when they cancel out.
    func updateInterest() {
        guard !interestPending else { return }
        interestPending = true
        ctx.loop.atTurnEnd(self)
    }

    public func turnEnded() {
        interestPending = false
        guard !ended else { return }
        setInterest(client, interest(client, reading: toUpstream, writing: toClient))
        setInterest(upstream, interest(upstream, reading: toClient, writing: toUpstream))
    }

    private func setInterest(_ c: Connection, _ mask: UInt32) {
        guard c.fdOpen else { return }  // its fd number may already belong to another connection
        if mask == 0 && c.hungUp {
            ctx.loop.park(c.fd)
        } else {
            ctx.loop.modify(c.fd, mask: mask)
        }
    }

    // MARK: timers

    func armLifetime(_ c: Connection) {
        guard c.lifetime > 0, !ended, c.fdOpen else {
            ctx.lifetimes.disarm(c)
            return
        }
        ctx.lifetimes.arm(c, at: c.lastActivity + c.lifetime)
    }

    /// `c`'s lifetime deadline came (RelayContext.lifetimes): idle time is checked here rather than
    /// by moving the deadline on every packet.
    func lifetimeCame(_ c: Connection) {
        guard !ended, c.fdOpen, c.lifetime > 0 else { return }
        if ctx.loop.now >= c.lastActivity + c.lifetime {
            end(failed: c, reason: .lifetime, why: "idle for \(Double(c.lifetime) / 1e9) s")
        } else {
            armLifetime(c)
        }
    }
}
