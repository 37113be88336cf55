// The event schema: every field of an event, and of a relay's end, once, with its name in each
// place it goes. Every rendering (the journal entry written into bytes, the terminal line, the
// event stream's JSON line, the JSON value, the hook environment) walks these tables, so a new
// field is one line here and the renderings cannot drift apart.
import TCPOpsConfig
import TCPOpsPosix
import TCPOpsProtocol

/// Where a field goes.
package struct Sinks: OptionSet, Sendable {
    package let rawValue: UInt8
    package init(rawValue: UInt8) { self.rawValue = rawValue }
    package static let journal = Sinks(rawValue: 1)
    /// The event stream (`tcpopsctl events --json`) and its JSON value.
    package static let json = Sinks(rawValue: 2)
    /// The hook environment.
    package static let hook = Sinks(rawValue: 4)
    /// The short line on stderr when there is no journal (the journal has every field).
    package static let terminal = Sinks(rawValue: 8)
    package static let everywhere: Sinks = [.journal, .json, .hook]
}

/// A field's value, as each rendering needs it.
package enum FieldValue {
    /// Always present (possibly empty).
    case text(String)
    /// nil: unknown. The journal leaves it out (or writes it empty: `EventField.emptyInJournal`), JSON
    /// says null, a hook gets an empty variable, the terminal line leaves it out.
    case number(UInt64?)
    /// "ip:port" ("[v6]:port"); a hook gets NAME_IP and NAME_PORT. nil as for a number.
    case address(SocketAddress?)
}

/// One field: its journal and hook name, its JSON key, where it goes and how its value is read.
package struct EventField<Subject>: Sendable {
    /// TCPOPS_...: the journal field and the hook variable (an address: NAME_IP and NAME_PORT).
    package let name: StaticString
    /// The JSON key; also the key on the terminal line.
    package let key: StaticString
    package let sinks: Sinks
    /// An unknown number is written empty into the journal instead of being left out.
    package let emptyInJournal: Bool
    package let value: @Sendable (Subject) -> FieldValue

    package init(_ name: StaticString, _ key: StaticString, _ sinks: Sinks, emptyInJournal: Bool = false,
         _ value: @escaping @Sendable (Subject) -> FieldValue) {
        self.name = name
        self.key = key
        self.sinks = sinks
        self.emptyInJournal = emptyInJournal
        self.value = value
    }
}

/// What both an event and a relay's end say of a connection.
package protocol ConnectionFacts: SendableMetatype {
    var listener: String { get }
    var local: SocketAddress? { get }
    var remote: SocketAddress? { get }
    var durationMs: UInt64 { get }
    var bytesIn: UInt64 { get }
    var bytesOut: UInt64 { get }
}

extension EventField where Subject: ConnectionFacts {
    /// TCPOPS_LISTENER to TCPOPS_BYTES_OUT, in that order (TCPOPS_PROTO for hooks only); the listener and the duration are on
    /// every terminal line, the remote address or the bytes as the entry wants.
    package static func connection(remoteOnTerminal: Bool, bytesOnTerminal: Bool) -> [EventField] {
        let remote: Sinks = remoteOnTerminal ? [.journal, .json, .hook, .terminal] : .everywhere
        let bytes: Sinks = bytesOnTerminal ? [.journal, .json, .hook, .terminal] : .everywhere
        return [
            EventField("TCPOPS_LISTENER", "listener", [.journal, .json, .hook, .terminal]) { .text($0.listener) },
            EventField("TCPOPS_PROTO", "proto", .hook) { _ in .text("tcp") },
            EventField("TCPOPS_LOCAL", "local", .everywhere) { .address($0.local) },
            EventField("TCPOPS_REMOTE", "remote", remote) { .address($0.remote) },
            EventField("TCPOPS_DURATION_MS", "duration_ms", [.journal, .json, .hook, .terminal]) { .number($0.durationMs) },
            EventField("TCPOPS_BYTES_IN", "bytes_in", bytes) { .number($0.bytesIn) },
            EventField("TCPOPS_BYTES_OUT", "bytes_out", bytes) { .number($0.bytesOut) },
        ]
    }
}

/// An entry made from a schema.
package protocol Schematic {
    static var schema: [EventField<Self>] { get }
}

extension TCPEvent: ConnectionFacts, Schematic {
    /// SPEC "Events" and "Hooks": the order is the journal's, the JSON line's and the hooks'.
    package static let schema: [EventField<TCPEvent>] = head + EventField.connection(remoteOnTerminal: false, bytesOnTerminal: true) + tail

    private static let head: [EventField<TCPEvent>] = [
        EventField("TCPOPS_SEQ", "seq", .json) { .number($0.seq) },
        EventField("TCPOPS_TIME_US", "time_us", .json) { .number($0.unixMicros) },
        EventField("TCPOPS_EVENT", "event", .everywhere) { .text($0.kind.rawValue) },
        EventField("TCPOPS_REASON", "reason", .everywhere) { .text($0.reason.rawValue) },
        EventField("TCPOPS_CONID", "conid", .everywhere) { .number($0.conid) },
        EventField("TCPOPS_PEER_CONID", "peer_conid", [.journal, .json, .hook, .terminal]) { .number($0.peerConid) },
        EventField("TCPOPS_SIDE", "side", .everywhere) { .text($0.side.rawValue) },
    ]

    private static let tail: [EventField<TCPEvent>] = [
        EventField("TCPOPS_ORIGIN", "origin", .everywhere) { .text($0.reason.origin.rawValue) },
        EventField("TCPOPS_ERRNO", "errno", [.journal, .json, .hook, .terminal]) { .text($0.errnoText) },
        EventField("TCPOPS_LATE", "late", [.journal, .json, .hook, .terminal]) { .number($0.late ? 1 : nil) },
        EventField("TCPOPS_TCP_RTT_US", "tcp_rtt_us", .everywhere, emptyInJournal: true) { .number($0.tcp?.rttMicros.map(UInt64.init)) },
        EventField("TCPOPS_TCP_RTTVAR_US", "tcp_rttvar_us", .everywhere, emptyInJournal: true) { .number($0.tcp?.rttvarMicros.map(UInt64.init)) },
        EventField("TCPOPS_TCP_RETRANSMITS", "tcp_retransmits", .everywhere, emptyInJournal: true) { .number($0.tcp.map { UInt64($0.retransmits) }) },
        EventField("TCPOPS_TCP_UNACKED", "tcp_unacked", .everywhere, emptyInJournal: true) { .number($0.tcp.map { UInt64($0.unacked) }) },
        EventField("TCPOPS_TCP_LOST", "tcp_lost", .everywhere, emptyInJournal: true) { .number($0.tcp.map { UInt64($0.lost) }) },
        EventField("TCPOPS_TCP_LAST_DATA_RECV_MS", "tcp_last_data_recv_ms", .everywhere, emptyInJournal: true) {
            .number($0.tcp?.lastDataReceivedMs.map(UInt64.init))
        },
        EventField("TCPOPS_TCP_LAST_ACK_RECV_MS", "tcp_last_ack_recv_ms", .everywhere, emptyInJournal: true) {
            .number($0.tcp?.lastAckReceivedMs.map(UInt64.init))
        },
        EventField("TCPOPS_TCP_PMTU", "tcp_pmtu", .everywhere, emptyInJournal: true) { .number($0.tcp.map { UInt64($0.pmtu) }) },
        EventField("TCPOPS_TCP_SND_CWND", "tcp_snd_cwnd", .everywhere, emptyInJournal: true) { .number($0.tcp.map { UInt64($0.sendCwnd) }) },
    ]
}

extension RelayEnded: ConnectionFacts, Schematic {
    /// The relay's end (MESSAGE_ID connectionClosed): the journal, and a terminal line that says
    /// how it ended.
    package static let schema: [EventField<RelayEnded>] = head + EventField.connection(remoteOnTerminal: true, bytesOnTerminal: false) + tail

    private static let head: [EventField<RelayEnded>] = [
        EventField("TCPOPS_CONID", "conid", .journal) { .number($0.clientConid) },
        EventField("TCPOPS_SIDE", "side", .journal) { _ in .text(Side.client.rawValue) },
    ]

    private static let tail: [EventField<RelayEnded>] = [
        EventField("TCPOPS_PEER_CONID", "peer_conid", .journal) { .number($0.upstreamConid) },
        EventField("TCPOPS_REASON", "reason", [.journal, .terminal]) { .text($0.reason.rawValue) },
        EventField("TCPOPS_ORIGIN", "origin", [.journal, .terminal]) { .text($0.reason.origin.rawValue) },
        EventField("TCPOPS_CLIENT_REASON", "client_reason", [.journal, .terminal]) { .text($0.clientReason.rawValue) },
        EventField("TCPOPS_UPSTREAM_REASON", "upstream_reason", [.journal, .terminal]) { .text($0.upstreamReason.rawValue) },
        EventField("TCPOPS_BYTES_TO_UPSTREAM", "bytes_to_upstream", [.journal, .terminal]) { .number($0.toUpstream) },
        EventField("TCPOPS_BYTES_TO_CLIENT", "bytes_to_client", [.journal, .terminal]) { .number($0.toClient) },
    ]
}

// The renderings. Each walks the schema in order and keeps the fields of its sink.
extension Schematic {
    /// The journal entry's fields written into `t`: `field` is called with the name before the
    /// value is written, `end` after it.
    @inlinable package func forEachField(_ t: inout ByteText, _ field: (inout ByteText, StaticString) -> Void, _ end: (inout ByteText) -> Void) {
        for f in Self.schema where f.sinks.contains(.journal) {
            switch f.value(self) {
            case .text(let s): field(&t, f.name); t.put(s); end(&t)
            case .number(let n?): field(&t, f.name); t.put(n); end(&t)
            case .number(nil): if f.emptyInJournal { field(&t, f.name); end(&t) }
            case .address(let a?): field(&t, f.name); t.put(a); end(&t)
            case .address(nil): break
            }
        }
    }

    /// The journal fields as values: the reference the byte rendering is tested against.
    package var journalFields: [(String, String)] {
        var out: [(String, String)] = []
        for f in Self.schema where f.sinks.contains(.journal) {
            switch f.value(self) {
            case .text(let s): out.append((f.name.description, s))
            case .number(let n?): out.append((f.name.description, String(n)))
            case .number(nil): if f.emptyInJournal { out.append((f.name.description, "")) }
            case .address(let a?): out.append((f.name.description, a.description))
            case .address(nil): break
            }
        }
        return out
    }

    /// The terminal line's fields: lowercase keys, the known and non-empty values.
    package var terminalFields: [(String, String)] {
        var out: [(String, String)] = []
        for f in Self.schema where f.sinks.contains(.terminal) {
            switch f.value(self) {
            case .text(let s): if !s.isEmpty { out.append((f.key.description, s)) }
            case .number(let n?): out.append((f.key.description, String(n)))
            case .address(let a?): out.append((f.key.description, a.description))
            case .number(nil), .address(nil): break
            }
        }
        return out
    }

    /// ` key=value` for each of the terminal line's fields, into `t` (values of events have no
    /// spaces or quotes: nothing is quoted).
    @inlinable package func putTerminalFields(_ t: inout ByteText) {
        for f in Self.schema where f.sinks.contains(.terminal) {
            switch f.value(self) {
            case .text(let s) where !s.isEmpty: t.put(byte: UInt8(ascii: " ")); t.put(f.key); t.put(byte: UInt8(ascii: "=")); t.put(s)
            case .number(let n?): t.put(byte: UInt8(ascii: " ")); t.put(f.key); t.put(byte: UInt8(ascii: "=")); t.put(n)
            case .address(let a?): t.put(byte: UInt8(ascii: " ")); t.put(f.key); t.put(byte: UInt8(ascii: "=")); t.put(a)
            default: break
            }
        }
    }

    /// The JSON object's members, `"key":value,...` without braces (unknown: null).
    package func putJSONMembers(_ t: inout ByteText) {
        var first = true
        for f in Self.schema where f.sinks.contains(.json) {
            t.put(first ? "\"" : ",\"")
            first = false
            t.put(f.key)
            t.put("\":")
            switch f.value(self) {
            case .text(let s): t.putJSON(s)
            case .number(let n?): t.put(n)
            case .address(let a?): t.put(byte: UInt8(ascii: "\"")); t.put(a); t.put(byte: UInt8(ascii: "\""))
            case .number(nil), .address(nil): t.put("null")
            }
        }
    }

    /// The JSON value: the reference the byte rendering is tested against.
    package var jsonValue: JSON {
        var o: [(String, JSON)] = []
        for f in Self.schema where f.sinks.contains(.json) {
            switch f.value(self) {
            case .text(let s): o.append((f.key.description, .string(s)))
            case .number(let n): o.append((f.key.description, n.map { .uint($0) } ?? .null))
            case .address(let a): o.append((f.key.description, a.map { .string($0.description) } ?? .null))
            }
        }
        return .object(o)
    }

    /// The hook environment (SPEC "Hooks"), without PATH and TCPOPS_CONTROL_SOCKET: every
    /// variable set, empty where unknown; an address as NAME_IP and NAME_PORT.
    package var hookEnvironment: [String] {
        var env: [String] = []
        for f in Self.schema where f.sinks.contains(.hook) {
            let name = f.name.description
            switch f.value(self) {
            case .text(let s): env.append("\(name)=\(s)")
            case .number(let n): env.append("\(name)=\(n.map(String.init) ?? "")")
            case .address(let a):
                env.append("\(name)_IP=\(a?.ip ?? "")")
                env.append("\(name)_PORT=\(a.map { String($0.port) } ?? "")")
            }
        }
        return env
    }
}
