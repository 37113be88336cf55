// One configuration generation: what a start or a reload decided, as every part of the daemon
// sees it. Made once, on the main thread, from a validated Configuration and what the reload could
// apply (the listeners actually listening, max_connections fitted to the fd limit); never changed
// after. The daemon hands the same object to each part once (`Daemon.apply`): a post to every
// worker's loop and to the hook runner's, and the logger's level. A part reads its settings from
// the generation it holds, on its own thread, without locks or atomics; a relay keeps the
// listener settings it started with.
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix

public final class Generation: Sendable {
    /// 1 at start, one more at each reload applied.
    public let number: UInt64
    /// max_connections, for all workers together (fitted to the open-files limit).
    public let maxConnections: Int
    /// [events] closed_event: 0, 1 or 2.
    public let closedEventMode: Int
    /// [events] opened: raise tcp:opened when a relay is established.
    public let openedEvents: Bool
    public let logLevel: LogLevel
    /// [events] journal: which events become journal entries.
    public let journal: JournalEvents
    /// The hook runner's settings (the relays' side reads `hooks.hasCommands` and the queue limit).
    public let hooks: HookSettings
    /// Each listening socket's settings for new connections, by its address.
    public let listeners: [SocketAddress: ListenerSettings]

    public init(number: UInt64, maxConnections: Int, closedEventMode: Int, openedEvents: Bool = false, logLevel: LogLevel = .info,
                journal: JournalEvents = .all, hooks: HookSettings = HookSettings(EventSettings(), controlSocket: ""),
                listeners: [ListenerSettings] = []) {
        self.number = number
        self.maxConnections = maxConnections
        self.closedEventMode = closedEventMode
        self.openedEvents = openedEvents
        self.logLevel = logLevel
        self.journal = journal
        self.hooks = hooks
        self.listeners = Dictionary(listeners.map { ($0.listen, $0) }, uniquingKeysWith: { $1 })
    }

    /// The generation of `config` under an open-files limit of `fdLimit`, with the listeners that
    /// listen now (a reload may keep a listener's previous settings) and the control socket the
    /// daemon serves (a change of it waits for the next start).
    public convenience init(number: UInt64, config: Configuration, fdLimit: UInt64, listening: [ListenerSettings], controlSocket: String) {
        self.init(number: number, maxConnections: config.daemon.maxConnections(fdLimit: fdLimit), closedEventMode: config.events.closedEvent,
                  openedEvents: config.events.opened, logLevel: config.daemon.logLevel, journal: config.events.journal,
                  hooks: HookSettings(config.events, controlSocket: controlSocket), listeners: listening)
    }
}
