// After parsing: host names resolved to addresses, and the relays that would reach this very
// daemon refused. Resolving blocks (DNS), so callers run it before the loop or off it.
import TCPOpsPosix

public enum ConfigResolver {
    public enum Mode: Sendable {
        /// Starting: a name that does not resolve is an error.
        case start
        /// Reloading: a name that does not resolve keeps the addresses it had (a warning); a
        /// listener left with no address at all is not applied (an error for it).
        case reload(previous: Configuration)
        /// --check-config: a name that does not resolve is a warning (DNS is not the file's fault).
        case check
    }

    public struct Outcome: Sendable {
        public var config: Configuration
        public var warnings: [String] = []
        /// Listeners that cannot be applied on reload (by name), with why.
        public var unusable: [String: String] = [:]
    }

    /// How long `--check-config` waits for the resolver, all names together.
    public static let checkTimeout = 3.0

    /// Resolves every upstream name, then checks for relays to this daemon's own listeners.
    /// `--check-config` (mode .check) waits at most `checkTimeout` for the resolver.
    public static func resolve(_ config: Configuration, mode: Mode) throws(ConfigError) -> Outcome {
        var out = Outcome(config: config)
        var problems: [ConfigError.Problem] = []
        var answers: [String: Result<[SocketAddress], ResolveError>] = [:]
        if case .check = mode {
            var names: [(host: String, port: UInt16)] = []
            for l in config.listeners {
                for u in l.upstreams where u.isName && !names.contains(where: { $0.host == u.host && $0.port == u.port }) {
                    names.append((u.host, u.port))
                }
            }
            for (n, r) in zip(names, Resolve.all(names, within: checkTimeout)) { answers["\(n.host):\(n.port)"] = r }
        }
        for li in out.config.listeners.indices {
            let l = out.config.listeners[li]
            for ui in l.upstreams.indices where l.upstreams[ui].isName {
                let u = l.upstreams[ui]
                switch answers["\(u.host):\(u.port)"] ?? Resolve.addresses(u.host, port: u.port) {
                case .success(let a):
                    out.config.listeners[li].upstreams[ui].addresses = a
                case .failure(let e):
                    switch mode {
                    case .start:
                        problems.append(.init(line: u.line, message: "listener \"\(l.name)\": upstream \(u): \(e)"))
                    case .check:
                        out.warnings.append("\(config.path):\(u.line): listener \"\(l.name)\": upstream \(u): \(e) "
                                            + "(tcpopsd would not start; a reload keeps the old addresses)")
                    case .reload(let previous):
                        let old = previous.listeners.first { $0.name == l.name }?.upstreams.first { $0.host == u.host && $0.port == u.port }
                        if let old, !old.addresses.isEmpty {
                            out.config.listeners[li].upstreams[ui].addresses = old.addresses
                            out.warnings.append("listener \"\(l.name)\": upstream \(u): \(e); keeping its addresses "
                                                + old.addresses.map(\.description).joined(separator: ", "))
                        } else {
                            out.warnings.append("listener \"\(l.name)\": upstream \(u): \(e); no address for it")
                        }
                    }
                }
            }
            if case .reload = mode, out.config.listeners[li].candidateCount == 0 {
                out.unusable[l.name] = "no upstream address resolves"
            }
        }
        for l in out.config.listeners where l.acceptProxy && l.acceptProxyFrom == nil {
            out.warnings.append("listener \"\(l.name)\": accept_proxy without accept_proxy_from: any client that reaches \(l.listen) "
                                + "can claim any address; list the balancers' addresses (or keep the listener reachable only from them)")
        }
        problems += selfLoops(out.config)
        if !problems.isEmpty { throw ConfigError(path: config.path, problems: problems.sorted { $0.line < $1.line }) }
        return out
    }

    /// An upstream address that one of this daemon's listeners accepts on: each client would be
    /// relayed to tcpopsd itself, again and again, until max_connections.
    package static func selfLoops(_ config: Configuration) -> [ConfigError.Problem] {
        var problems: [ConfigError.Problem] = []
        let local = LocalAddresses.current()
        for l in config.listeners {
            for u in l.upstreams {
                for a in u.addresses {
                    guard let target = config.listeners.first(where: { reaches(a, $0.listen, local: local) }) else { continue }
                    let via = u.isName ? " (\(u.host) resolves to \(a))" : ""
                    let who = target.name == l.name ? "itself" : "listener \"\(target.name)\" of this daemon"
                    problems.append(.init(line: u.line, message: "listener \"\(l.name)\": upstream \(u)\(via) relays to \(who): "
                                          + "every client would be relayed back to tcpopsd until max_connections"))
                    break
                }
            }
        }
        return problems
    }

    /// Whether a connect to `a` would land on a socket listening on `listen`.
    package static func reaches(_ a: SocketAddress, _ listen: SocketAddress, local: [[UInt8]]) -> Bool {
        guard a.port == listen.port, a.family == listen.family else { return false }
        if a.bytes == listen.bytes { return true }
        return listen.isWildcard && (a.isLoopback || a.isWildcard || local.contains(a.bytes))
    }
}
