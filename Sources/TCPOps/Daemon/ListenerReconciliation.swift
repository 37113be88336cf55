// What a reload does to the listening sockets, decided without touching one (the daemon binds and
// retires; the tests give a fake `bind`). The rules: a socket whose address is still wanted is
// kept, under its new name and settings (for new connections); new addresses are bound before any
// old socket closes; a listener whose new address cannot be bound, or whose settings cannot be
// applied (no upstream address), keeps its old socket and settings when it had one; every old
// socket no listener keeps is retired, last. No client is refused or reset on the way.
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix
import TCPOpsRelay

struct ListenerReconciliation<Group> {
    /// A listening socket as the main thread knows it: the group that owns it and its settings now.
    typealias Current = (group: Group, settings: ListenerSettings)

    enum Step {
        /// The socket at this address stays; `changed` when its settings differ from before.
        case kept(ListenerSettings, changed: Bool)
        /// A new socket listens for this listener.
        case bound(ListenerSettings)
        /// Not applied; `keeps` is the address where the listener still listens with its previous
        /// settings (nil: it does not listen). The line says why, and what it keeps.
        case failed(name: String, listen: SocketAddress?, line: String, keeps: SocketAddress?)
    }

    /// The listeners after the reload, by name.
    var next: [String: Current] = [:]
    /// In the order of the wanted listeners.
    var steps: [Step] = []
    /// The old sockets no listener keeps: to retire once the others listen.
    var retire: [Current] = []

    var failures: [String] {
        steps.compactMap { if case let .failed(_, _, line, _) = $0 { return line } else { return nil } }
    }

    /// `current`: the listeners now, by name; `wanted`: the new file's, in its order; `unusable`:
    /// the wanted listeners that cannot be applied, and why; `bind` makes a socket for new settings.
    init(current: [String: Current], wanted: [ListenerSettings], unusable: [String: String] = [:],
         bind: (ListenerSettings) throws -> Group) {
        var byAddress: [SocketAddress: Current] = [:]
        for c in current.values { byAddress[c.settings.listen] = c }
        /// The listener's old socket, if no listener took its address yet (it is then no longer free to retire).
        func previous(_ name: String) -> Current? {
            current[name].flatMap { byAddress.removeValue(forKey: $0.settings.listen) }
        }
        for s in wanted {
            if let why = unusable[s.name] {
                let old = previous(s.name)
                if let old { next[s.name] = old }
                let keeps = old.map { "; it keeps its previous settings on \($0.settings.listen)" } ?? "; it is not listening"
                steps.append(.failed(name: s.name, listen: nil, line: "listener \"\(s.name)\": \(why)\(keeps)", keeps: old?.settings.listen))
                continue
            }
            if let kept = byAddress.removeValue(forKey: s.listen) {
                next[s.name] = (kept.group, s)
                steps.append(.kept(s, changed: kept.settings != s))
                continue
            }
            do {
                next[s.name] = (try bind(s), s)
                steps.append(.bound(s))
            } catch {
                let old = previous(s.name)
                if let old { next[s.name] = old }
                let keeps = old.map { "; it keeps listening on \($0.settings.listen) with its previous settings" } ?? "; it is not listening"
                steps.append(.failed(name: s.name, listen: s.listen, line: "listener \"\(s.name)\": cannot listen on \(s.listen): \(error)\(keeps)",
                                     keeps: old?.settings.listen))
            }
        }
        retire = byAddress.values.sorted { $0.settings.name < $1.settings.name }
    }
}
