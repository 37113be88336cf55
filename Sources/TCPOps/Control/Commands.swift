// The control commands, run on the relay's loop (requests reach it through its inbox): each takes
// a decoded request and returns the answer line. Connection state is only touched here.

public final class ControlTarget {
    let ctx: RelayContext
    let hooks: HookRunner
    let subscriberCount: @Sendable () -> Int

    public init(ctx: RelayContext, hooks: HookRunner, subscriberCount: @escaping @Sendable () -> Int) {
        self.ctx = ctx
        self.hooks = hooks
        self.subscriberCount = subscriberCount
    }

    private struct Failure: Error {
        let message: String
        init(_ m: String) { message = m }
    }

    public func execute(_ r: ControlRequest) -> String {
        do {
            return ControlAnswer.ok(r.id, try run(r))
        } catch let f as Failure {
            return ControlAnswer.error(r.id, f.message)
        } catch {
            return ControlAnswer.error(r.id, "\(error)")
        }
    }

    private func conid(_ r: ControlRequest) throws -> UInt64 {
        guard let c = r.conid else { throw Failure("missing 'conid' (no CONID given and TCPOPS_CONID not set)") }
        return c
    }

    /// The 1 / -1 answer of the tcpops functions.
    private func flag(_ done: Bool) -> [(String, JSON)] { [("result", .int(done ? 1 : -1))] }

    private func run(_ r: ControlRequest) throws -> [(String, JSON)] {
        switch r.cmd {
        case "list":
            if let name = r.listener, !ctx.table.values.contains(where: { $0.listenerName == name }) && !listenerKnown(name) {
                throw Failure("no listener named \"\(name)\"")
            }
            let now = ctx.loop.now
            let rows = ctx.table.values
                .filter { r.listener == nil || $0.listenerName == r.listener }
                .sorted { $0.conid < $1.conid }
                .map { describe($0, now: now) }
            return [("result", .array(rows))]
        case "alive":
            let state = ctx.table[try conid(r)]?.state ?? .gone
            return [("result", .int(state.rawValue > 0 ? 1 : -1))]
        case "state":
            let c = ctx.table[try conid(r)]
            let state = c?.state ?? .gone
            var answer: [(String, JSON)] = [("result", .int(Int64(state.rawValue))), ("state", .string(state.name))]
            if let c, let options = c.socketOptions() {
                answer.append(("keepalive", options.keepalive.map(keepaliveJSON) ?? .null))
                answer.append(("user_timeout_ms", .uint(UInt64(options.userTimeoutMs))))
            }
            return answer
        case "keepalive-enable":
            let id = try conid(r)
            guard let idle = r.idle, let count = r.count, let interval = r.interval else {
                throw Failure("keepalive-enable needs 'idle', 'count' and 'interval'")
            }
            guard (1...32767).contains(idle), (1...127).contains(count), (1...32767).contains(interval) else {
                throw Failure("keepalive values out of range (idle 1-32767 s, count 1-127, interval 1-32767 s)")
            }
            let k = KeepaliveSettings(idle: Int32(idle), count: Int32(count), interval: Int32(interval))
            return keepalive(ctx.table[id], k)
        case "keepalive-disable":
            return keepalive(ctx.table[try conid(r)], nil)
        case "lifetime":
            let id = try conid(r)
            guard let s = r.seconds, s.isFinite, s >= 0, s <= 31_536_000 else { throw Failure("'seconds' must be from 0 to 31536000") }
            return flag(ctx.table[id]?.setLifetime(seconds: s) ?? false)
        case "closed-event":
            return flag(ctx.table[try conid(r)]?.enableEvents() ?? false)
        case "conid":
            guard let host = r.host else { throw Failure("missing 'host'") }
            if let p = r.port, !(1...65535).contains(p) { throw Failure("port \(p) is out of range") }
            let wanted: (family: SocketAddress.Family, bytes: [UInt8], port: UInt16?)
            do {
                wanted = try SocketAddress.parseHost(host)
            } catch {
                throw Failure("\"\(host)\": \(error)")
            }
            // Without a port, any port matches (the newest connection from that host first).
            let port = wanted.port ?? r.port.map { UInt16($0) }
            let found = ctx.table.values.filter { c in
                guard let remote = c.remote else { return false }
                return remote.family == wanted.family && remote.bytes == wanted.bytes && (port == nil || remote.port == port)
            }.map(\.conid).sorted(by: >)
            if r.all == true { return [("result", .array(found.map { .uint($0) }))] }
            return [("result", found.first.map { .uint($0) } ?? .int(-1))]
        case "send":
            let id = try conid(r)
            guard let b64 = r.data, let bytes = Base64.decode(b64) else { throw Failure("'data' must be base64") }
            guard !bytes.isEmpty else { throw Failure("nothing to send") }
            return flag(ctx.table[id]?.send(bytes) ?? false)
        case "close":
            return flag(ctx.table[try conid(r)]?.close(reset: r.reset == true) ?? false)
        case "stats":
            return [("result", stats())]
        default:
            throw Failure("unknown command \"\(r.cmd)\" (known: \(ControlProtocol.commands.joined(separator: ", ")))")
        }
    }

    private func listenerKnown(_ name: String) -> Bool { ctx.listenerNames.contains(name) }

    /// keepalive-enable / -disable: 1, or -1 with the errno when the socket refused it.
    private func keepalive(_ c: Connection?, _ k: KeepaliveSettings?) -> [(String, JSON)] {
        guard let c else { return flag(false) }
        switch c.setKeepalive(k) {
        case nil: return flag(true)
        case .gone?: return flag(false)
        case .failed(let e)?: return flag(false) + [("errno", .string(errnoName(e.errno))), ("error_detail", .string("\(e)"))]
        }
    }

    func describe(_ c: Connection, now: UInt64) -> JSON {
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
        let keepalive = options.map { $0.keepalive } ?? c.keepalive
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

    func stats() -> JSON {
        let h = hooks.snapshot
        let counts = ctx.events.counts
        return .object([
            ("connections_open", .int(Int64(ctx.table.count))), ("relays_open", .int(Int64(ctx.relays))),
            ("accepted", .uint(ctx.accepted)), ("rejected", .uint(ctx.rejected)), ("relayed_bytes", .uint(ctx.relayedBytes)),
            ("events", .object(EventKind.allCases.map { ($0.rawValue, .uint(counts[$0] ?? 0)) })),
            ("hooks", .object([("run", .uint(h.started)), ("failed", .uint(h.failed)), ("killed", .uint(h.killed)), ("dropped", .uint(h.dropped)),
                                ("queued", .int(Int64(hooks.queued)))])),
            ("subscribers", .int(Int64(subscriberCount()))),
        ])
    }
}
