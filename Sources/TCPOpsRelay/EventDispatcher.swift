// The sink a worker's relays hand their events to: it stamps and counts each, and at the end of the
// loop turn hands the turn's events, as one batch, to the journal writer, the hook runner and the
// control socket's subscribers (one queue operation and at most one wake-up each per turn, not per
// event; the text of an event is made on those threads, only for sinks that exist). Runs on the
// relay's loop.
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix

/// Where a worker's events go to run hooks (the hook runner): called on the worker's loop, it must
/// not block.
public protocol HookSink: AnyObject, Sendable {
    func submit(_ event: TCPEvent, _ settings: HookSettings)
}

public final class EventDispatcher: TurnEndHandler {
    package let logger: Logger
    package let hooks: HookSink?
    private var byKind = [UInt64](repeating: 0, count: EventKind.allCases.count)
    private var pending: [TCPEvent] = []
    /// This turn's journal entries: events, and relays' two normal closes folded into one.
    private var journal: [JournalItem] = []
    /// tcp:closed events held for the journal until their relay's other side closes (by conid).
    private var held: [UInt64: TCPEvent] = [:]
    private unowned(unsafe) var loop: EventLoop?
    /// The worker's configuration generation (set by its RelayContext): which hooks to run.
    package var generation: Generation?
    /// Also told of every event, a turn's events at a time (the control socket's subscribers).
    public var observers: [([TCPEvent]) -> Void] = []
    /// The crash keep's header: every event raised is counted there (what the stream numbered is
    /// counted too, so the next process can say how many a death lost).
    public var keepHeader: KeepHeader?

    public init(logger: Logger, hooks: HookSink?) {
        self.logger = logger
        self.hooks = hooks
    }

    /// Events raised so far, by kind.
    public var counts: [EventKind: UInt64] {
        Dictionary(uniqueKeysWithValues: EventKind.allCases.enumerated().map { ($1, byKind[$0]) })
    }

    /// The loop whose turn ends send the batches; without one, each event is sent at once.
    public func attach(_ loop: EventLoop) { self.loop = loop }

    public func emit(_ event: TCPEvent) {
        var event = event
        event.unixMicros = Clock.unixMicroseconds()
        byKind[event.kind.index] += 1
        keepHeader?.raised()
        turnHasWork()
        pending.append(event)
        switch event.journal {
        case .write: journal.append(.event(event))
        case .skip: break
        case .hold: held[event.conid] = event
        case .fold(let other):
            if let first = held.removeValue(forKey: other) {
                journal.append(.pair(ClosedPair(first, event)))
            } else {
                journal.append(.event(event))
            }
        }
        if loop == nil { turnEnded() }
    }

    /// The relay will not fold `conid`'s held close (its other side ended otherwise, or the relay
    /// ended): it is an entry of its own.
    public func releaseHeld(_ conid: UInt64) {
        guard let event = held.removeValue(forKey: conid) else { return }
        turnHasWork()
        journal.append(.event(event))
        if loop == nil { turnEnded() }
    }

    /// Tcp:closed events held for the journal now (a relay between its two closes).
    public var heldCount: Int { held.count }

    private func turnHasWork() {
        guard pending.isEmpty && journal.isEmpty else { return }
        loop?.atTurnEnd(self)
        pending.reserveCapacity(16)  // one allocation a turn, not one per doubling
    }

    public func turnEnded() {
        if !journal.isEmpty {
            // The logger makes its own entries of them: this array's storage serves every turn.
            logger.logJournal(journal)
            journal.removeAll(keepingCapacity: true)
        }
        guard !pending.isEmpty else { return }
        let batch = pending
        pending = []
        if let hooks, let settings = generation?.hooks, settings.hasCommands {
            for e in batch { hooks.submit(e, settings) }
        }
        for o in observers { o(batch) }
    }
}

extension EventKind {
    /// `allCases` once (the synthesized property makes an array at each use).
    private static let ordered = EventKind.allCases

    /// 0, 1, 2, ... in `allCases` order: a new kind needs no edit here.
    package var index: Int { EventKind.ordered.firstIndex(of: self)! }
}
