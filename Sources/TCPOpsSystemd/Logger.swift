// The daemon's one logger: journal entries with fields (sd_journal_sendv) when the journal is the
// sink, else one line per entry on stderr: `LEVEL message key=value ...`. Safe from any thread, and
// never blocking one: entries are written by a thread of their own (a stalled journald or a
// terminal nobody reads fills its bounded queue, and what does not fit is counted and reported).
import CSystemd
import Glibc
import Synchronization
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsPosix

public final class Logger: Sendable {
    public enum Target: String, Sendable {
        case auto, journal, stderr
    }

    public typealias Field = (String, String)

    /// One entry, as the caller made it; formatted and written on the writer thread.
    package struct Entry: @unchecked Sendable {
        // @unchecked: tuples of Strings are values; the array is handed over, never shared.
        let level: LogLevel
        let body: Body

        enum Body {
            /// A line of the daemon's own, with its fields.
            case text(String, id: MessageID?, fields: [Field])
            /// An event, or a relay's end: its message and fields are made from the event schema
            /// on the writer thread, its journal entry straight into bytes.
            case event(TCPEvent)
            case pair(ClosedPair)
            case ended(RelayEnded)
        }

        init(_ level: LogLevel, _ body: Body) {
            self.level = level
            self.body = body
        }
    }

    /// Entries waiting for the writer beyond this are dropped (and counted, and reported).
    /// What entries waiting for the writer may hold, in bytes (each entry its own size and its
    /// text's): 64 MiB, about 90,000 event entries; past it, entries are dropped (and counted, and
    /// reported). A burst of closes is in bytes what it is in entries: a count would be a limit
    /// that one burst exceeds.
    package static let queueBytes = 64 << 20

    /// The memory an entry holds while it waits.
    static func cost(_ e: Entry) -> Int {
        guard case let .text(message, _, fields) = e.body else { return MemoryLayout<Entry>.stride }
        return fields.reduce(MemoryLayout<Entry>.stride + message.utf8.count) { $0 + $1.0.utf8.count + $1.1.utf8.count + 32 }
    }

    private let useJournal: Bool
    private let threshold: Atomic<Int>
    private let writer: SideChannel<Entry>?

    public init(target: Target, level: LogLevel = .info) {
        let journal: Bool
        switch target {
        case .journal: journal = true
        case .stderr: journal = false
        case .auto: journal = Logger.journalIsOurs()
        }
        useJournal = journal
        threshold = Atomic(level.rawValue)
        let scratch = Scratch()  // the writer thread's alone
        writer = try? SideChannel<Entry>(name: "tcpops-log", limit: Logger.queueBytes, cost: Logger.cost, write: { Logger.write($0, journal: journal, scratch) }, dropped: { n in
            Logger.write(Entry(.warning, .text("\(n) log entries dropped: the log's receiver was not reading (\(journal ? "journal" : "stderr"))",
                                               id: nil, fields: [("TCPOPS_LOG_DROPPED", String(n))])), journal: journal, scratch)
        })
    }

    deinit { writer?.stop() }

    public var writesToJournal: Bool { useJournal }

    /// `auto`: the journal when systemd started us (JOURNAL_STREAM or INVOCATION_ID) and its socket exists.
    package static func journalIsOurs() -> Bool {
        let startedBySystemd = getenv("JOURNAL_STREAM") != nil || getenv("INVOCATION_ID") != nil
        return startedBySystemd && journalSocketExists()
    }

    public static func journalSocketExists() -> Bool { access("/run/systemd/journal/socket", F_OK) == 0 }

    public func setLevel(_ level: LogLevel) { threshold.store(level.rawValue, ordering: .relaxed) }

    public func enabled(_ level: LogLevel) -> Bool { level.rawValue <= threshold.load(ordering: .relaxed) }

    /// Queues an entry for the writer thread: never waits on the journal or on stderr's reader.
    public func log(_ level: LogLevel, _ message: String, id: MessageID? = nil, _ fields: [Field] = []) {
        guard enabled(level) else { return }
        let entry = Entry(level, .text(message, id: id, fields: fields))
        if let writer {
            writer.submit(entry)
        } else {
            Logger.write(entry, journal: useJournal, Scratch())
        }
    }

    /// Queues a relay's end (at its level); its text is made on the writer thread.
    package func log(_ r: RelayEnded) {
        guard enabled(r.level) else { return }
        let entry = Entry(r.level, .ended(r))
        if let writer {
            writer.submit(entry)
        } else {
            Logger.write(entry, journal: useJournal, Scratch())
        }
    }

    /// Queues a turn's journal entries (events at notice, tcp:opened at debug; relays' folded
    /// closes) in one go; their text is made on the writer thread.
    public func logJournal(_ items: [JournalItem]) {
        guard enabled(.notice), !items.isEmpty else { return }
        let debug = enabled(.debug)
        let entries = items.compactMap { item -> Entry? in
            switch item {
            case .event(let e) where e.kind == .opened: return debug ? Entry(.debug, .event(e)) : nil
            case .event(let e): return Entry(.notice, .event(e))
            case .pair(let p): return Entry(.notice, .pair(p))
            }
        }
        guard !entries.isEmpty else { return }
        if let writer {
            writer.submit(contentsOf: entries)
        } else {
            for e in entries { Logger.write(e, journal: useJournal, Scratch()) }
        }
    }

    /// Waits for queued entries to be written, at most until `deadline` (monotonic ns): before exit.
    public func flush(deadline: UInt64) {
        writer?.flush(deadline: deadline)
    }

    /// The writer thread's buffers, kept from one entry to the next (an entry's text, its fields'
    /// spans and their iovecs): writing an entry allocates nothing once they have grown.
    package final class Scratch: @unchecked Sendable {
        // @unchecked: only ever used by the one thread that writes the log.
        var text = ByteText(capacity: 2048)
        var spans: [(start: Int, count: Int)] = []
        var iov: [iovec] = []
        /// Where the field being written starts in `text`.
        var start = 0

        init() {
            spans.reserveCapacity(64)
            iov.reserveCapacity(64)
        }

        func reset() {
            text.bytes.removeAll(keepingCapacity: true)
            spans.removeAll(keepingCapacity: true)
            iov.removeAll(keepingCapacity: true)
        }

        /// Sends the spans of `text` as one journal entry.
        func send() -> Bool {
            text.bytes.withUnsafeBufferPointer { base -> Bool in
                for span in spans {
                    iov.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: base.baseAddress! + span.start), iov_len: span.count))
                }
                return iov.withUnsafeMutableBufferPointer { sd_journal_sendv($0.baseAddress, Int32($0.count)) >= 0 }
            }
        }
    }

    private static func write(_ e: Entry, journal: Bool, _ scratch: Scratch) {
        switch e.body {
        case .event(let event):
            if journal && sendToJournal(event, scratch) { return }
            writeLine(event, debug: event.kind == .opened, scratch)
        case .pair(let pair):
            if journal && sendToJournal(pair, scratch) { return }
            writeLine(pair, debug: false, scratch)
        case .ended(let r):
            if journal && sendToJournal(r, scratch) { return }
            // On a terminal, what says how it ended; the journal has every field.
            writeLine(r.level, r.message, r.terminalFields)
        case let .text(message, id, fields):
            if journal && sendToJournal(e.level, message, id, fields, scratch) { return }
            writeLine(e.level, message, fields)
        }
    }

    /// An entry written straight into bytes (an event, a relay's end): every field into one
    /// buffer, the iovecs pointing into it.
    private static func sendToJournal(_ e: some ByteRendered, _ scratch: Scratch) -> Bool {
        scratch.reset()
        // Where the field being written starts is kept in the scratch, not in a local the two
        // closures would capture: a captured `var` is a heap box, one malloc per entry.
        func open(_ t: inout ByteText, _ key: StaticString) {
            scratch.start = t.bytes.count
            t.put(key)
            t.put(byte: UInt8(ascii: "="))
        }
        func close(_ t: inout ByteText) { scratch.spans.append((scratch.start, t.bytes.count - scratch.start)) }
        // The text is taken out of the scratch while it is written (`open` and `close` use the
        // scratch's spans), and put back to be sent.
        var t = ByteText(capacity: 0)
        swap(&t, &scratch.text)
        open(&t, "MESSAGE")
        e.putMessage(&t)
        close(&t)
        open(&t, "PRIORITY")
        t.put(UInt64(e.logLevel.rawValue))
        close(&t)
        open(&t, "SYSLOG_IDENTIFIER")
        t.put("tcpopsd")
        close(&t)
        open(&t, "MESSAGE_ID")
        t.put(e.messageID.rawValue)
        close(&t)
        e.forEachField(&t, open, close)
        swap(&t, &scratch.text)
        return scratch.send()
    }

    /// An event's stderr line, short enough for a terminal: `NOTICE tcp:reset on conid 7 (client
    /// 127.0.0.1:5060, reason rst) peer_conid=8 listener=sip duration_ms=302 bytes_in=10
    /// bytes_out=0 errno=ECONNRESET` (the errno only when there is one). The journal, the hooks
    /// and `events --json` have every field, the TCP_INFO snapshot too.
    private static func writeLine(_ e: some ByteRendered & Schematic, debug: Bool, _ scratch: Scratch) {
        scratch.reset()
        var t = ByteText(capacity: 0)
        swap(&t, &scratch.text)
        defer { swap(&t, &scratch.text) }
        t.put(debug ? "DEBUG " : "NOTICE ")
        e.putMessage(&t)
        e.putTerminalFields(&t)
        t.put(byte: UInt8(ascii: "\n"))
        _ = t.bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    private static func sendToJournal(_ level: LogLevel, _ message: String, _ id: MessageID?, _ fields: [Field], _ scratch: Scratch) -> Bool {
        scratch.reset()
        func field(_ key: String, _ value: String) {
            let start = scratch.text.bytes.count
            scratch.text.put(key)
            scratch.text.put(byte: UInt8(ascii: "="))
            scratch.text.put(value)
            scratch.spans.append((start, scratch.text.bytes.count - start))
        }
        field("MESSAGE", message)
        field("PRIORITY", String(level.rawValue))
        field("SYSLOG_IDENTIFIER", "tcpopsd")
        if let id { field("MESSAGE_ID", id.rawValue) }
        for (k, v) in fields { field(k, v) }
        return scratch.send()
    }

    private static func writeLine(_ level: LogLevel, _ message: String, _ fields: [Field]) {
        var line = level.name.uppercased()
        line += " "
        line += message
        // A hook's argv is in the journal's TCPOPS_HOOK; on a terminal it would repeat on every line.
        for (k, v) in fields where k != "TCPOPS_HOOK" {
            var key = k
            if key.hasPrefix("TCPOPS_") { key = String(key.dropFirst(7)) }
            line += " \(key.lowercased())="
            line += v.contains(where: { $0 == " " || $0 == "\"" || $0 == "\n" }) ? quoted(v) : v
        }
        line += "\n"
        writeStderr(line)
    }

    private static func quoted(_ s: String) -> String {
        var out = "\""
        for c in s {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out + "\""
    }
}

/// An entry whose journal fields are written straight into bytes on the log's thread.
protocol ByteRendered {
    var logLevel: LogLevel { get }
    var messageID: MessageID { get }
    func putMessage(_ t: inout ByteText)
    /// Each field as KEY, value: `field` is called with the key and the value is written after it.
    func forEachField(_ t: inout ByteText, _ field: (inout ByteText, StaticString) -> Void, _ end: (inout ByteText) -> Void)
}

extension TCPEvent: ByteRendered {
    package var logLevel: LogLevel { .notice }
    package var messageID: MessageID { kind.messageID }
}

extension ClosedPair: ByteRendered {
    var logLevel: LogLevel { .notice }
    var messageID: MessageID { client.kind.messageID }
}

extension RelayEnded: ByteRendered {
    package var logLevel: LogLevel { level }
    package var messageID: MessageID { .connectionClosed }
}

