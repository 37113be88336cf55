// The control commands, planned and put together on the control thread: a request is checked
// there, what touches connections runs on every worker's loop (each over its own connection
// table, one post each), and each worker's part comes back to the control thread's inbox, where
// the answer line is made. No relay loop carries another's work: worker 0 is asked like the rest.
// Connection state is only touched by its own worker.
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix
import TCPOpsRelay
import TCPOpsProtocol

/// Lives on the control thread (its loop is `loop`).
public final class ControlTarget {
    let workers: [RelayWorker]
    let hooks: HookRunner?
    let subscriberCount: () -> Int
    let loop: EventLoop
    /// The configuration generation in force (the listeners' names), given by `Daemon.apply`.
    var generation: Generation

    init(workers: [RelayWorker], hooks: HookRunner?, subscriberCount: @escaping () -> Int, loop: EventLoop, generation: Generation) {
        self.workers = workers
        self.hooks = hooks
        self.subscriberCount = subscriberCount
        self.loop = loop
        self.generation = generation
    }

    /// The names of the listeners now configured.
    var listenerNames: Set<String> { Set(generation.listeners.values.map(\.name)) }

    /// One worker's part of an answer: nil when the conid asked for is not one of its connections.
    typealias Part = [(String, JSON)]?

    /// Runs `r` and tells `reply` the answer line (on the control thread; at once when the request
    /// is refused before any worker is asked).
    public func execute(_ r: ControlRequest, reply: @escaping (String) -> Void) {
        if let remotes = r.remotes, r.conid == nil, ControlTarget.oneConnection.contains(r.cmd) {
            executeByAddress(r, remotes, reply: reply)
            return
        }
        let each: (RelayContext) throws -> Part
        let combine: ([Part]) throws -> [(String, JSON)]
        do {
            (each, combine) = try plan(r)
        } catch {
            reply(answer(r, error))
            return
        }
        gather(r, each, then: { [self] parts in
            do {
                reply(ControlAnswer.ok(r.id, try combine(parts)))
            } catch {
                reply(answer(r, error))
            }
        }, failed: reply)
    }

    /// A command that names its connection by the client's address: the connection is found
    /// first (every worker looks), then the command runs on its conid. No match answers as an
    /// unknown conid does (gone, -1); more than one is an error naming them, and nothing is done:
    /// a script that steers "the connection from 10.0.0.7:5060" must not steer another.
    private func executeByAddress(_ r: ControlRequest, _ remotes: [String], reply: @escaping (String) -> Void) {
        let wanted: [(family: SocketAddress.Family, bytes: [UInt8], port: UInt16?)]
        do {
            wanted = try ControlTarget.addresses(remotes, port: nil)
            guard wanted.allSatisfy({ $0.port != nil }) else { throw Failure("'remote' must be \"ip:port\" (a connection's address)") }
        } catch {
            reply(answer(r, error))
            return
        }
        gather(r, { ctx in [("found", .array(ControlTarget.clients(ctx, matching: wanted).map { .uint($0) }))] }, then: { [self] parts in
            var conids: [UInt64] = []
            for p in parts {
                guard case .array(let list)? = p?.first?.1 else { continue }
                for case .uint(let c) in list { conids.append(c) }
            }
            conids.sort()
            guard conids.count <= 1 else {
                reply(ControlAnswer.error(r.id, "\(conids.count) connections have the remote address \(remotes.joined(separator: " or ")) "
                                          + "(conids \(conids.map(String.init).joined(separator: ", "))): name one by its conid"))
                return
            }
            var byConid = r
            byConid.remotes = nil
            byConid.conid = conids.first ?? 0  // 0 is no conid: answered as gone
            execute(byConid, reply: reply)
        }, failed: reply)
    }

    /// Runs `each` on every worker (one post to each), then `then` with their parts, in the
    /// workers' order, on the control thread; `failed` gets the error answer line instead when a
    /// worker threw or did not answer in time.
    private func gather(_ r: ControlRequest, _ each: @escaping (RelayContext) throws -> Part, then: @escaping ([Part]) -> Void,
                        failed reply: @escaping (String) -> Void) {
        let gathering = Gathering(workers: workers.count)
        // A worker that does not turn (stuck in a call that blocks) must not hold the answer, nor
        // the control client's later requests, forever: after `workerDeadline` the answer is an
        // error naming it, and its part is ignored when it comes.
        let deadline = loop.timers.schedule(at: loop.now + ControlTarget.workerDeadline) {
            guard !gathering.done else { return }
            gathering.done = true
            let stuck = gathering.parts.indices.filter { i in gathering.parts[i].map { _ in false } ?? true }
            reply(ControlAnswer.error(r.id, "worker(s) \(stuck.map(String.init).joined(separator: ", ")) did not answer within "
                                      + "\(ControlTarget.workerDeadline / 1_000_000_000) s (stuck?)"))
        }
        let back = loop.inbox
        let job = Handoff(each)
        let collect = Handoff { [self] (index: Int, result: Result<Part, Error>) in
            guard !gathering.done else { return }
            gathering.parts[index] = result
            gathering.answered += 1
            guard gathering.answered == gathering.parts.count else { return }
            gathering.done = true
            loop.timers.cancel(deadline)
            var parts: [Part] = []
            for case let result? in gathering.parts {
                switch result {
                case .success(let p): parts.append(p)
                case .failure(let e):
                    reply(answer(r, e))
                    return
                }
            }
            then(parts)
        }
        for w in workers {
            w.post { w in
                let (index, result) = (w.index, Handoff(Result<Part, Error> { try job.value(w.ctx) }))
                back.post { _ in collect.value(index, result.value) }
            }
        }
    }

    /// How long a request waits for every worker's part.
    static let workerDeadline: UInt64 = 5_000_000_000

    /// The parts of one request's answer as they come back (control thread only).
    private final class Gathering {
        var parts: [Result<Part, Error>?]
        var answered = 0
        var done = false
        init(workers: Int) { parts = Array(repeating: nil, count: workers) }
    }

    private func answer(_ r: ControlRequest, _ error: Error) -> String {
        if let f = error as? Failure { return ControlAnswer.error(r.id, f.message) }
        return ControlAnswer.error(r.id, "\(error)")
    }

    struct Failure: Error {
        let message: String
        init(_ m: String) { message = m }
    }

    private func conid(_ r: ControlRequest) throws -> UInt64 {
        guard let c = r.conid else { throw Failure("missing 'conid' (no CONID given and TCPOPS_CONID not set)") }
        return c
    }

    /// The addresses of a `host` or `remote` member: "ip" or "ip:port" ("[v6]:port"); `port`
    /// applies where an address has none.
    static func addresses(_ texts: [String], port: UInt16?) throws -> [(family: SocketAddress.Family, bytes: [UInt8], port: UInt16?)] {
        try texts.map { text in
            do {
                let a = try SocketAddress.parseHost(text)
                return (a.family, a.bytes, a.port ?? port)
            } catch {
                throw Failure("\"\(text)\": \(error)")
            }
        }
    }

    /// The conids of this worker's client connections whose remote address (the one a PROXY header
    /// gave, where one did) is one of `wanted`. Only clients: an upstream's remote is the upstream.
    static func clients(_ ctx: RelayContext, matching wanted: [(family: SocketAddress.Family, bytes: [UInt8], port: UInt16?)]) -> [UInt64] {
        ctx.trackedConnections.filter { c in
            guard c.side == .client, let remote = c.remote else { return false }
            return wanted.contains { remote.family == $0.family && remote.bytes == $0.bytes && ($0.port == nil || remote.port == $0.port) }
        }.map(\.conid)
    }

    /// Commands that act on one connection, named by `conid` or by the client's address (`remote`).
    static let oneConnection: Set<String> = ["alive", "state", "keepalive-enable", "keepalive-disable", "lifetime", "closed-event", "send", "close"]

    /// The 1 / -1 answer of the tcpops functions.
    private func flag(_ done: Bool) -> [(String, JSON)] { [("result", .int(done ? 1 : -1))] }

    /// For a command on one conid: the answer of the worker that has it, else `gone`.
    private func one(_ gone: [(String, JSON)]) -> ([Part]) -> [(String, JSON)] {
        { parts in parts.lazy.compactMap { $0 }.first ?? gone }
    }

    /// What each worker does for `r`, and how their parts make the answer. Checks the request first.
    func plan(_ r: ControlRequest) throws -> ((RelayContext) throws -> Part, ([Part]) throws -> [(String, JSON)]) {
        switch r.cmd {
        case "list":
            let names = listenerNames
            return ({ [self] ctx in
                let now = ctx.loop.now
                let rows = ctx.trackedConnections.filter { r.listener == nil || $0.listenerName == r.listener }.map { (c: $0.conid, row: describe(ctx, $0, now: now)) }
                return [("rows", .array(rows.map { .array([.uint($0.c), $0.row]) }))]
            }, { parts in
                var rows: [(UInt64, JSON)] = []
                for p in parts {
                    guard case .array(let list)? = p?.first?.1 else { continue }
                    for case .array(let pair) in list where pair.count == 2 {
                        if case .uint(let c) = pair[0] { rows.append((c, pair[1])) }
                    }
                }
                if let name = r.listener, rows.isEmpty, !names.contains(name) { throw Failure("no listener named \"\(name)\"") }
                return [("result", .array(rows.sorted { $0.0 < $1.0 }.map(\.1)))]
            })
        case "alive":
            let id = try conid(r)
            return ({ ctx in ctx.connection(id).map { [("result", .int($0.state.rawValue > 0 ? 1 : -1))] } }, one([("result", .int(-1))]))
        case "state":
            let id = try conid(r)
            return ({ ctx in
                guard let c = ctx.connection(id) else { return nil }
                var answer: [(String, JSON)] = [("result", .int(Int64(c.state.rawValue))), ("state", .string(c.state.name))]
                if let options = c.socketOptions() {
                    answer.append(("keepalive", options.keepalive.map(self.keepaliveJSON) ?? .null))
                    answer.append(("user_timeout_ms", .uint(UInt64(options.userTimeoutMs))))
                }
                return answer
            }, one([("result", .int(Int64(ConnectionState.gone.rawValue))), ("state", .string(ConnectionState.gone.name))]))
        case "keepalive-enable":
            let id = try conid(r)
            guard let idle = r.idle, let count = r.count, let interval = r.interval else {
                throw Failure("keepalive-enable needs 'idle', 'count' and 'interval'")
            }
            guard (1...32767).contains(idle), (1...127).contains(count), (1...32767).contains(interval) else {
                throw Failure("keepalive values out of range (idle 1-32767 s, count 1-127, interval 1-32767 s)")
            }
            let k = KeepaliveSettings(idle: Int32(idle), count: Int32(count), interval: Int32(interval))
            return ({ ctx in ctx.connection(id).map { self.keepalive($0, k) } }, one(flag(false)))
        case "keepalive-disable":
            let id = try conid(r)
            return ({ ctx in ctx.connection(id).map { self.keepalive($0, nil) } }, one(flag(false)))
        case "lifetime":
            let id = try conid(r)
            guard let s = r.seconds, Durations.valid(s) else { throw Failure("'seconds' must be \(Durations.rangeText)") }
            return ({ ctx in ctx.connection(id).map { self.flag($0.setLifetime(seconds: s)) } }, one(flag(false)))
        case "closed-event":
            let id = try conid(r)
            return ({ ctx in ctx.connection(id).map { self.flag($0.enableEvents()) } }, one(flag(false)))
        case "conid":
            guard let hosts = r.hosts else { throw Failure("missing 'host'") }
            if let p = r.port, !(1...65535).contains(p) { throw Failure("port \(p) is out of range") }
            // Without a port, any port matches (the newest connection from that host first).
            let wanted = try ControlTarget.addresses(hosts, port: r.port.map { UInt16($0) })
            return ({ ctx in [("found", .array(ControlTarget.clients(ctx, matching: wanted).map { .uint($0) }))] }, { parts in
                var found: [UInt64] = []
                for p in parts {
                    guard case .array(let list)? = p?.first?.1 else { continue }
                    for case .uint(let c) in list { found.append(c) }
                }
                found.sort(by: >)
                if r.all == true { return [("result", .array(found.map { .uint($0) }))] }
                return [("result", found.first.map { .uint($0) } ?? .int(-1))]
            })
        case "send":
            let id = try conid(r)
            guard let b64 = r.data, let bytes = Base64.decode(b64) else { throw Failure("'data' must be base64") }
            guard !bytes.isEmpty else { throw Failure("nothing to send") }
            return ({ ctx in ctx.connection(id).map { self.flag($0.send(bytes)) } }, one(flag(false)))
        case "close":
            let id = try conid(r)
            let reset = r.reset == true
            return ({ ctx in ctx.connection(id).map { self.flag($0.close(reset: reset)) } }, one(flag(false)))
        case "stats":
            return ({ ctx in
                let counts = ctx.events.counts
                return [("connections_open", .uint(UInt64(ctx.trackedCount))), ("relays_open", .uint(UInt64(ctx.relays))),
                        ("accepted", .uint(ctx.accepted)), ("rejected", .uint(ctx.rejected)), ("relayed_bytes", .uint(ctx.relayedBytes))]
                    + EventKind.allCases.map { ("event:" + $0.rawValue, .uint(counts[$0] ?? 0)) }
            }, { [self] parts in [("result", stats(parts.compactMap { $0 }))] })
        default:
            throw Failure("unknown command \"\(r.cmd)\" (known: \(ControlProtocol.commands.joined(separator: ", ")))")
        }
    }

    /// keepalive-enable / -disable: 1, or -1 with the errno when the socket refused it.
    private func keepalive(_ c: Connection?, _ k: KeepaliveSettings?) -> [(String, JSON)] {
        guard let c else { return flag(false) }
        switch c.setKeepalive(k) {
        case nil: return flag(true)
        case .gone?: return flag(false)
        case .failed(let e)?: return flag(false) + [("errno", .string(errnoName(e.errno))), ("error_detail", .string("\(e)"))]
        }
    }

    func describe(_ ctx: RelayContext, _ c: Connection, now: UInt64) -> JSON {
        var o: [(String, JSON)] = [
            ("conid", .uint(c.conid)), ("peer_conid", c.peerConid.map { .uint($0) } ?? .null),
            ("side", .string(c.side.rawValue)), ("listener", .string(c.listenerName)),
            ("state", .int(Int64(c.state.rawValue))), ("state_name", .string(c.state.name)),
            ("local", c.local.map { .string($0.description) } ?? .null),
            ("remote", c.remote.map { .string($0.description) } ?? .null),
            ("age_ms", .uint((now &- c.openedAt) / 1_000_000)), ("idle_ms", .uint(c.idleMilliseconds(now: now))),
            ("bytes_in", .uint(c.bytesIn)), ("bytes_out", .uint(c.bytesOut)),
            ("lifetime", .double(c.lifetimeSeconds)),
            // The upstream (as the file names it) this relay uses or is trying.
            ("upstream", c.relay?.candidate.map { .string($0.upstream.description) } ?? .null),
        ]
        // Keepalive and TCP_USER_TIMEOUT as the socket has them (read back), not as they were asked.
        let options = c.socketOptions()
        let keepalive = options?.keepalive
        o.append(("keepalive", keepalive.map(keepaliveJSON) ?? .null))
        o.append(("user_timeout_ms", options.map { .uint(UInt64($0.userTimeoutMs)) } ?? .null))
        // Linux ends a connection by TCP_USER_TIMEOUT rather than by the keepalive probe count
        // once the user timeout is set: say so where both are.
        o.append(("user_timeout_overrides_keepalive", .bool(keepalive != nil && (options?.userTimeoutMs ?? 0) > 0)))
        // Whether a close of this connection would raise an event now (closed_event mode, this
        // connection's own flag, the listener's event_sides), and the flag itself (mode 2).
        let sides = c.relay?.listener.eventSides ?? []
        o.append(("events", .bool(EventPolicy.raises(mode: ctx.closedEventMode, enabled: c.eventsEnabled, side: c.side, sides: sides))))
        o.append(("closed_event", .bool(c.eventsEnabled)))
        return .object(o)
    }

    func keepaliveJSON(_ k: KeepaliveSettings) -> JSON {
        .object([("idle", .int(Int64(k.idle))), ("count", .int(Int64(k.count))), ("interval", .int(Int64(k.interval)))])
    }

    /// The workers' counters added up (in the order of the answer), hooks and subscribers beside.
    func stats(_ parts: [[(String, JSON)]]) -> JSON {
        var sums: [String: UInt64] = [:]
        for p in parts {
            for (k, v) in p { if case .uint(let n) = v { sums[k, default: 0] += n } }
        }
        let h = hooks?.snapshot ?? HookRunner.Counters()
        return .object([
            ("connections_open", .int(Int64(sums["connections_open"] ?? 0))), ("relays_open", .int(Int64(sums["relays_open"] ?? 0))),
            ("accepted", .uint(sums["accepted"] ?? 0)), ("rejected", .uint(sums["rejected"] ?? 0)), ("relayed_bytes", .uint(sums["relayed_bytes"] ?? 0)),
            ("events", .object(EventKind.allCases.map { ($0.rawValue, .uint(sums["event:" + $0.rawValue] ?? 0)) })),
            ("hooks", .object([("run", .uint(h.started)), ("failed", .uint(h.failed)), ("killed", .uint(h.killed)), ("dropped", .uint(h.dropped)),
                                ("queued", .int(Int64(hooks?.queued ?? 0)))])),
            ("subscribers", .int(Int64(subscriberCount()))),
            ("workers", .int(Int64(parts.count))),
        ])
    }
}
