// What the hook runner runs for an event ([events] callback and routes) and within what bounds
// (hook_timeout, max_running_hooks, queue_limit). Part of a configuration generation: the relays'
// side submits with its own worker's, the runner's thread applies the newest.
import TCPOpsConfig

public struct HookSettings: Sendable {
    public var callback: [String]?
    public var routes: [String: [String]]
    public var timeout: Double
    public var maxRunning: Int
    public var queueLimit: Int
    public var controlSocket: String

    public init(_ e: EventSettings, controlSocket: String) {
        callback = e.callback
        routes = e.routes
        timeout = e.hookTimeout
        maxRunning = e.maxRunningHooks
        queueLimit = e.queueLimit
        self.controlSocket = controlSocket
    }

    /// Whether any hook is configured (a callback or a route): without one, events skip the runner.
    public var hasCommands: Bool { callback != nil || !routes.isEmpty }

    public func commands(for event: EventKind) -> [[String]] {
        var out: [[String]] = []
        if let callback { out.append(callback + [event.rawValue]) }
        if let route = routes[event.rawValue] { out.append(route) }
        return out
    }
}
