// The one sink the relay hands its events to: it writes each to the journal, queues its hooks and
// counts it. Runs on the relay's loop.
public final class EventDispatcher {
    let logger: Logger
    let hooks: HookRunner?
    public private(set) var counts: [EventKind: UInt64] = [:]
    private var seq: UInt64 = 0
    /// Also told of every event (the control socket's subscribers).
    public var observers: [(TCPEvent) -> Void] = []

    public init(logger: Logger, hooks: HookRunner?) {
        self.logger = logger
        self.hooks = hooks
    }

    public func emit(_ event: TCPEvent) {
        var event = event
        seq += 1
        event.seq = seq
        event.unixMicros = Clock.unixMicroseconds()
        counts[event.kind, default: 0] += 1
        logger.log(.notice, "\(event.kind.rawValue) on conid \(event.conid) (\(event.side.rawValue) \(event.remote?.description ?? "?"), reason \(event.reason.rawValue))",
                   id: event.kind.messageID, event.journalFields)
        hooks?.submit(event)
        for o in observers { o(event) }
    }
}
