// The journal's side of `[events] journal` (SPEC "Additions"): a relay whose two sides both closed
// normally is one entry. Hooks, the event stream and the metrics get an event per side whatever
// the journal does; only the journal folds.
import TCPOpsConfig
import TCPOpsPosix

/// What the journal does with an event, as the relay that raised it decided.
public enum JournalDisposition: Sendable, Equatable {
    /// An entry of its own.
    case write
    /// No entry (`journal = "abnormal"` for a tcp:closed, `"none"`).
    case skip
    /// A tcp:closed whose relay's other side may still close normally: held by the dispatcher,
    /// to be folded with that side's (or written alone when the relay says it will not come).
    case hold
    /// A tcp:closed whose other side's tcp:closed (conid) is held: one entry for both.
    case fold(UInt64)
}

/// What reaches the journal writer from a worker: an event, or a relay's two normal closes as one.
public enum JournalItem: Sendable {
    case event(TCPEvent)
    case pair(ClosedPair)
}

/// A relay whose two sides both closed normally, as one journal entry (MESSAGE_ID of tcp:closed):
/// the client side's event (its reason, bytes, addresses, duration and TCP_INFO), and the upstream
/// side's conid (a second TCPOPS_CONID, so that `journalctl TCPOPS_CONID=N` finds the entry for
/// either side), reason, addresses, duration and bytes.
public struct ClosedPair: Sendable {
    public let client: TCPEvent
    public let upstream: TCPEvent

    /// The two closes, in either order.
    public init(_ a: TCPEvent, _ b: TCPEvent) {
        (client, upstream) = a.side == .client ? (a, b) : (b, a)
    }

    /// "tcp:closed on conid 7 and 8 (client 127.0.0.1:5060, reason fin; upstream reason fin)".
    package func putMessage(_ t: inout ByteText) {
        t.put(client.kind.rawValue)
        t.put(" on conid ")
        t.put(client.conid)
        t.put(" and ")
        t.put(upstream.conid)
        t.put(" (client ")
        if let remote = client.remote { t.put(remote) } else { t.put("?") }
        t.put(", reason ")
        t.put(client.reason.rawValue)
        t.put("; upstream reason ")
        t.put(upstream.reason.rawValue)
        t.put(")")
    }
}

extension ClosedPair: Schematic {
    /// The client's event as the journal and the terminal have it, then the upstream side's.
    package static let schema: [EventField<ClosedPair>] = TCPEvent.schema.compactMap { f in
        let sinks = f.sinks.intersection([.journal, .terminal])
        return sinks.isEmpty ? nil : EventField(f.name, f.key, sinks, emptyInJournal: f.emptyInJournal) { f.value($0.client) }
    } + [
        EventField("TCPOPS_CONID", "upstream_conid", .journal) { .number($0.upstream.conid) },
        EventField("TCPOPS_UPSTREAM_REASON", "upstream_reason", [.journal, .terminal]) { .text($0.upstream.reason.rawValue) },
        EventField("TCPOPS_UPSTREAM_LOCAL", "upstream_local", .journal) { .address($0.upstream.local) },
        EventField("TCPOPS_UPSTREAM_REMOTE", "upstream_remote", .journal) { .address($0.upstream.remote) },
        EventField("TCPOPS_UPSTREAM_DURATION_MS", "upstream_duration_ms", .journal) { .number($0.upstream.durationMs) },
        EventField("TCPOPS_UPSTREAM_BYTES_IN", "upstream_bytes_in", .journal) { .number($0.upstream.bytesIn) },
        EventField("TCPOPS_UPSTREAM_BYTES_OUT", "upstream_bytes_out", .journal) { .number($0.upstream.bytesOut) },
        EventField("TCPOPS_UPSTREAM_ERRNO", "upstream_errno", .journal) { .text($0.upstream.errnoText) },
    ]
}
