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
// survivor has every byte ends; one whose two directions passed their FIN on ends; any other
// gets its epoll interest recomputed from its directions' state at the end of the loop turn, so
// backpressure falls out of state. Every end goes through one teardown (`retire` for a
// connection, `release` for the relay), whether the relay ended, was handed over at a restart,
// or an upstream attempt failed.
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix

public final class Relay: TurnEndHandler, TimerSlot {
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
    /// Which of the listener's upstream candidates (addresses, in order) is being tried or used.
    package var attempt: Int32 = 0
    /// Its place in its worker's relay list (RelayContext.added; -1 when not in it).
    package var listSlot: Int32 = -1
    /// Its place in its loop's timers (TimerSlot; -1: no phase deadline armed).
    public var timerSlot: Int32 = -1
    private(set) var phase: Phase = .connecting
    /// updateInterest was asked this turn: the masks are set at its end.
    package var interestPending = false

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
        case .awaitingHeader: readProxyHeader()
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
                return
            }
        case .awaitingHeader:
            return  // the client alone, read until its header is whole (its interest stays read)
        case .connecting:
            break
        }
        updateInterest()
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
    }

    /// `conn` is ready: what is held for it is written, what it sent is read (not while draining).
    private func move(_ conn: Connection, _ upstream: Connection, _ events: UInt32) {
        let (readWay, writeWay): (Way, Way) = conn === client ? (.toUpstream, .toClient) : (.toClient, .toUpstream)
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
            if writeWay == .toClient { toClient.blocked = false } else { toUpstream.blocked = false }
            shovel(writeWay)
        }
        guard phase != .ended, phase != .draining else { return }
        if events & (Events.read | Events.hangup | Events.error) != 0 {
            if readWay == .toClient { toClient.sourceDry = false } else { toUpstream.sourceDry = false }
            shovel(readWay)
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
        let report = switch way {
        case .toUpstream:
            toUpstream.pump(from: from.fd, to: to.fd, pipes: ctx.pipes, scratch: ctx.scratch, canWrite: canWrite, mayRead: mayRead,
                            closeSendsFIN: toClient.shut)
        case .toClient:
            toClient.pump(from: from.fd, to: to.fd, pipes: ctx.pipes, scratch: ctx.scratch, canWrite: canWrite, mayRead: mayRead,
                          closeSendsFIN: toUpstream.shut)
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

    private func interest(_ c: Connection, reading: Direction, writing: Direction) -> UInt32 {
        if c.state == .connecting { return Events.write }
        if phase == .draining || phase == .quieting { return writing.wantsDestination ? Events.write : 0 }
        var m: UInt32 = 0
        if reading.wantsSource(pipes: ctx.pipes) { m |= Events.read }
        if writing.wantsDestination { m |= Events.write }
        return m
    }

    /// The interest masks follow the relay's state at the end of the loop turn: several changes
    /// in one turn (a read that fills a direction, the write that empties it) cost at most one
    /// epoll_ctl per side, and none when they cancel out.
    package func updateInterest() {
        guard !interestPending else { return }
        interestPending = true
        ctx.loop.atTurnEnd(self)
    }

    public func turnEnded() {
        interestPending = false
        guard phase != .ended, phase != .awaitingHeader, let upstream else { return }
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
