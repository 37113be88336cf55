// A relay: an accepted client, its upstream, and the two directions between them (Direction:
// the bytes one way, moved by splice or copy). A relay is a phase machine:
//
//   awaitingHeader ──▶ connecting (attempt n) ──▶ relaying ──▶ ended
//   (accept_proxy)        │  ▲ next attempt          │  ╲
//                         └──┘                       │   ╲▶ draining (a side broke: deliver what
//                                                    │        it sent, at most 5 s) ──▶ ended
//                    connecting / relaying ──▶ quieting (a restart: nothing read, held bytes
//                                                       written) ──▶ handed over (ended)
//
// Each call into a relay (epoll readiness, a timer, a control command) does its phase's work and
// ends at one settle point (`settle`): an ended relay has nothing more to do; a draining one whose
// survivor has every byte ends; one whose two directions passed their FIN on ends. Every end goes
// through one teardown (`retire` for a connection, `release` for the relay), whether the relay
// ended, was handed over at a restart, or an upstream attempt failed.
//
// Its two sockets are watched edge-triggered, each registered once and never changed but for one
// thing (a client gains EPOLLOUT the first time a write to it blocks): epoll says what changed, and
// the directions remember what it said until they act on it (`sourceDry`: nothing left to read;
// `blocked`: no room to write). Backpressure is state, not interest: a direction that stops
// reading because its destination is full reads again when the destination's EPOLLOUT comes. So a
// relay costs no epoll_ctl after its two registrations (level-triggered, a connect's EPOLLOUT
// became EPOLLIN and a FIN's socket had to leave the interest: two a relay).
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix

public final class Relay: TimerSlot {
    /// Where the relay is in its life (see the top of this file).
    package enum Phase: UInt8 {
        /// accept_proxy: the client's PROXY header is awaited; there is no upstream yet.
        case awaitingHeader
        /// The current attempt (`attempt`) is connecting; the client's bytes are held meanwhile.
        case connecting
        /// Both sides open: bytes move both ways.
        case relaying
        /// One side broke while bytes it sent still wait for the other: the relay lives on only to
        /// deliver them (for at most `drainLimit`, the phase timer), then ends.
        case draining
        /// Handing over at a restart: nothing more is read, held bytes are still written (the
        /// upstream may still be connecting).
        case quieting
        case ended
    }

    // Stored properties widest first, the flags last (Swift lays them out in this order).
    package let ctx: RelayContext
    package let listener: ListenerSettings
    package let client: Connection
    /// nil only while the client's PROXY header is awaited (and after a relay ended there).
    package var upstream: Connection?
    package var toUpstream = Direction()
    package var toClient = Direction()
    /// Its listener's metrics (counted from the relay's loop, without a lookup).
    package let metrics: ListenerMetrics
    package static let drainLimit: UInt64 = 5_000_000_000
    /// What only a relay in its PROXY-header or drain phase needs: made when it enters one, so
    /// that the others carry one pointer instead of 24 bytes.
    private final class Rare {
        var drainWhy = ""
        var drainReason = CloseReason.local
        var proxyInput: [UInt8] = []
    }
    private var rare: Rare?
    private var rareMade: Rare {
        if let r = rare { return r }
        let r = Rare()
        rare = r
        return r
    }
    /// Why a draining relay's side broke (its end says so once the survivor has every byte), and
    /// the reason its end gives if the survivor does not take them in time.
    package var drainWhy: String {
        get { rare?.drainWhy ?? "" }
        set { rareMade.drainWhy = newValue }
    }
    package var drainReason: CloseReason {
        get { rare?.drainReason ?? .local }
        set { rareMade.drainReason = newValue }
    }
    /// accept_proxy: what came of the client's PROXY header so far (phase awaitingHeader).
    package var proxyInput: [UInt8] {
        get { rare?.proxyInput ?? [] }
        set { rareMade.proxyInput = newValue }
    }
    /// The deadline of the phase the relay is in, if it has one: the client's PROXY header, the
    /// upstream's connect, or the drain after a side broke. The phases follow one another, so the
    /// relay itself is their one entry in its loop's timers (`phaseSlot` -1: none armed).
    public var timerDeadline: UInt64 = 0
    /// Its place in its worker's relay list (RelayContext.added; -1 when not in it).
    package var listSlot: Int32 = -1
    /// Its place in its loop's timers (TimerSlot; -1: no phase deadline armed).
    public var timerSlot: Int32 = -1
    /// Its record in its worker's crash keep (RelayKeep; -1: not kept).
    package var keepSlot: Int32 = -1
    /// Which of the listener's upstream candidates (addresses, in order) is being tried or used.
    package var attempt: Int16 = 0
    private(set) var phase: Phase = .connecting

    package var ended: Bool { phase == .ended }

    /// Moves to `next`; leaving awaitingHeader takes the relay out of its worker's awaiting count.
    package func enter(_ next: Phase) {
        guard phase != next, phase != .ended else { return }
        if phase == .awaitingHeader {
            ctx.awaitingEnded(self)
            rare?.proxyInput = []
        }
        if next == .awaitingHeader { ctx.awaitingStarted(self) }
        phase = next
    }

    package init(ctx: RelayContext, listener: ListenerSettings, client: Connection, metrics: ListenerMetrics) {
        self.ctx = ctx
        self.listener = listener
        self.client = client
        self.metrics = metrics
    }

    /// What a relay's socket is watched for: bytes, the peer's FIN (EPOLLRDHUP; a hang-up or an
    /// error epoll always reports), and room to write once a write to it blocked (an upstream
    /// from its connect on).
    package static let watchRead = Events.read | Events.readHangup | Events.edge
    package static let watchReadWrite = Events.read | Events.readHangup | Events.write | Events.edge

    @discardableResult
    package func register(_ c: Connection, mask: UInt32) -> Bool {
        do {
            try ctx.loop.register(c.fd, mask: mask, handler: c)
            return true
        } catch {
            end(failed: nil, reason: .local, why: "cannot watch conid \(c.conid): \(error)")
            return false
        }
    }

    // MARK: events from the loop

    package func handle(_ conn: Connection, _ events: UInt32) {
        switch phase {
        case .ended: return
        case .awaitingHeader:
            if events & (Events.read | Events.hangup | Events.error) != 0 {
                readable(.toUpstream, events)  // (what comes after the header is read once relaying)
                readProxyHeader()
            }
        case .connecting, .relaying, .draining, .quieting:
            guard let upstream else { return }
            if conn === upstream && upstream.state == .connecting {
                connectProgress(upstream, events)
            } else {
                move(conn, upstream, events)
            }
        }
        settle()
    }

    /// The one point every call into the relay ends at (see the top of this file).
    package func settle() {
        if keepSlot >= 0 && phase != .ended { ctx.keep?.save(self) }
        switch phase {
        case .ended:
            return
        case .draining:
            if (client.fdOpen ? toClient : toUpstream).drained {
                end(failed: nil, reason: .local, why: drainWhy)
                return
            }
        case .relaying, .quieting:
            if toUpstream.shut && toClient.shut {
                end(failed: nil, reason: .fin, why: "both sides closed")
            }
        case .awaitingHeader, .connecting:
            return
        }
    }

    /// The upstream's connect has news: a failed connect is reported with EPOLLERR (and
    /// EPOLLHUP); writable alone means it succeeded, and SO_ERROR need not be asked.
    private func connectProgress(_ upstream: Connection, _ events: UInt32) {
        guard events & (Events.write | Events.error | Events.hangup) != 0 else { return }
        let err = events & (Events.error | Events.hangup) != 0 ? Socket.pendingError(upstream.fd) : 0
        if err != 0 {
            upstream.closeErrno = err
            connectFailed(err, why: "connect: \(errnoName(err))")
            return
        }
        connected()
        shovel(.toUpstream)
        // Bytes that came with the connect (a server that speaks first) are read now: their edge
        // is this one.
        if events & (Events.read | Events.hangup) != 0 && !ended {
            readable(.toClient, events)
            shovel(.toClient)
        }
    }

    /// `conn` is ready: what is held for it is written, what it sent is read (not while draining).
    private func move(_ conn: Connection, _ upstream: Connection, _ events: UInt32) {
        let (readWay, writeWay): (Way, Way) = conn === client ? (.toUpstream, .toClient) : (.toClient, .toUpstream)
        if events & Events.error != 0 && (events & Events.read == 0 || !willRead(readWay)) {
            // No bytes to read first, or this turn will not read them (its destination is full, or
            // the relay drains): the pending error is the whole story, and no later edge would
            // tell it again (reading it clears it, so it is read only here, never after a read).
            let err = Socket.pendingError(conn.fd)
            if err != 0 {
                fail(conn, errno: err)
                return
            }
        }
        // EPOLLOUT comes with every edge of a socket watched for it while it has room: only a
        // direction whose bytes for it were blocked has work.
        if events & Events.write != 0 && (writeWay == .toClient ? toClient.wantsDestination : toUpstream.wantsDestination) {
            if writeWay == .toClient { toClient.blocked = false } else { toUpstream.blocked = false }
            shovel(writeWay)
        }
        guard phase != .ended, phase != .draining else { return }
        if events & (Events.read | Events.hangup | Events.error) != 0 {
            readable(readWay, events)
            shovel(readWay)
        }
    }

    /// Whether a pump of `way` now would read its source.
    private func willRead(_ way: Way) -> Bool {
        guard phase == .relaying || phase == .connecting else { return false }
        return (way == .toUpstream ? toUpstream : toClient).wantsSource(pipes: ctx.pipes)
    }

    /// epoll's edge for the source of `way`: it is worth reading again, and what it said of the
    /// source's end (a FIN; a hang-up or an error, read until the socket says which).
    private func readable(_ way: Way, _ events: UInt32) {
        // (EPOLLHUP with EPOLLRDHUP and no error is a FIN after ours: clean.)
        let ending: SourceEnding = events & Events.error != 0 ? .unknown
            : events & Events.readHangup != 0 ? .fin
            : events & Events.hangup != 0 ? .unknown : .none
        switch way {
        case .toUpstream:
            toUpstream.sourceDry = false
            if ending.rawValue > toUpstream.ending.rawValue { toUpstream.ending = ending }
        case .toClient:
            toClient.sourceDry = false
            if ending.rawValue > toClient.ending.rawValue { toClient.ending = ending }
        }
    }

    package enum Way { case toUpstream, toClient }

    /// Pumps one direction and applies its report: the sides' counters and activity, the metrics,
    /// the source's FIN event, a side that failed.
    package func shovel(_ way: Way) {
        guard phase != .ended, let upstream else { return }
        let (from, to): (Connection, Connection) = way == .toUpstream ? (client, upstream) : (upstream, client)
        let canWrite = to.state == .ok || to.state == .eof
        let mayRead = phase != .quieting
        let mark = keepSlot >= 0 ? ctx.keep?.pipeMark(self, way) : nil
        let report = switch way {
        case .toUpstream:
            toUpstream.pump(from: from.fd, to: to.fd, pipes: ctx.pipes, scratch: ctx.scratch, canWrite: canWrite, mayRead: mayRead,
                            closeSendsFIN: toClient.shut && keepSlot < 0, keepMark: mark)
        case .toClient:
            toClient.pump(from: from.fd, to: to.fd, pipes: ctx.pipes, scratch: ctx.scratch, canWrite: canWrite, mayRead: mayRead,
                          closeSendsFIN: toUpstream.shut && keepSlot < 0, keepMark: mark)
        }
        let now = ctx.loop.now
        if report.read > 0 {
            from.bytesIn &+= UInt64(report.read)
            from.lastActivity = now
        }
        if report.written > 0 {
            to.bytesOut &+= UInt64(report.written)
            to.lastActivity = now
            ctx.relayedBytes &+= UInt64(report.written)
            (way == .toUpstream ? metrics.bytesToUpstream : metrics.bytesToClient).increment(by: Int64(report.written))
        }
        if let e = report.pipeShortage { ctx.noPipe(e) }
        // Blocked: the destination's EPOLLOUT resumes this direction (a client is watched for it
        // from its first blocked write on; an upstream is from its connect).
        if to.fdOpen && (way == .toClient ? toClient.blocked : toUpstream.blocked) { ctx.loop.modify(to.fd, mask: Relay.watchReadWrite) }
        if report.finArrived {
            from.state = .eof
            raise(from, .fin)
        }
        switch report.status {
        case .moving: break
        case .sourceFailed(let e): fail(from, errno: e)
        case .destinationFailed(let e): fail(to, errno: e)
        }
    }

    // MARK: timers

    /// Sets the current phase's deadline (replacing the previous phase's, if it still ran).
    package func armPhaseTimer(at deadline: UInt64) { ctx.loop.timers.arm(self, at: deadline) }

    package func cancelPhaseTimer() { ctx.loop.timers.disarm(self) }

    /// The phase's deadline came: what it means depends on the phase.
    public func timerFired() {
        switch phase {
        case .awaitingHeader:
            rejectProxy("no complete header within \(listener.proxyHeaderTimeout.secondsText) (\(proxyInput.count) bytes came)")
        case .connecting, .quieting:
            guard upstream?.state == .connecting else { return }
            attemptFailed(.connectTimeout, why: ctx.loop.now < connectDeadline
                          ? "no answer within \(listener.connectTimeout.secondsText)"
                          : "no answer before connect_deadline (\(listener.connectDeadline.secondsText))")
        case .draining:
            let survivor = client.fdOpen ? client : upstream
            end(failed: nil, reason: drainReason, why: "\(drainWhy); bytes for conid \(survivor?.conid ?? 0) still undelivered after 5 s")
        case .relaying, .ended:
            return
        }
        settle()
    }

    package func armLifetime(_ c: Connection) {
        guard c.lifetime > 0, !ended, c.fdOpen else {
            ctx.loop.timers.disarm(c)
            return
        }
        ctx.loop.timers.arm(c, at: c.lastActivity + c.lifetime)
    }

    /// `c`'s lifetime deadline came (its entry in the loop's timers): idle time is checked here
    /// rather than by moving the deadline on every packet.
    package func lifetimeCame(_ c: Connection) {
        guard !ended, c.fdOpen, c.lifetime > 0 else { return }
        if ctx.loop.now >= c.lastActivity + c.lifetime {
            end(failed: c, reason: .lifetime, why: "idle for \(Double(c.lifetime) / 1e9) s")
        } else {
            armLifetime(c)
        }
    }
}
