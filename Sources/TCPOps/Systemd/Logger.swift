// The daemon's one logger: journal entries with fields (sd_journal_sendv) when the journal is the
// sink, else one line per entry on stderr: `LEVEL message key=value ...`. Safe from any thread.
import CSystemd
import Glibc
import Synchronization

public final class Logger: Sendable {
    public enum Target: String, Sendable {
        case auto, journal, stderr
    }

    public typealias Field = (String, String)

    private let useJournal: Bool
    private let threshold: Atomic<Int>

    public init(target: Target, level: LogLevel = .info) {
        switch target {
        case .journal: useJournal = true
        case .stderr: useJournal = false
        case .auto: useJournal = Logger.journalIsOurs()
        }
        threshold = Atomic(level.rawValue)
    }

    public var writesToJournal: Bool { useJournal }

    /// `auto`: the journal when systemd started us (JOURNAL_STREAM or INVOCATION_ID) and its socket exists.
    static func journalIsOurs() -> Bool {
        let startedBySystemd = getenv("JOURNAL_STREAM") != nil || getenv("INVOCATION_ID") != nil
        return startedBySystemd && access("/run/systemd/journal/socket", F_OK) == 0
    }

    public func setLevel(_ level: LogLevel) { threshold.store(level.rawValue, ordering: .relaxed) }

    public func enabled(_ level: LogLevel) -> Bool { level.rawValue <= threshold.load(ordering: .relaxed) }

    public func log(_ level: LogLevel, _ message: String, id: MessageID? = nil, _ fields: [Field] = []) {
        guard enabled(level) else { return }
        if useJournal && sendToJournal(level, message, id, fields) { return }
        writeLine(level, message, fields)
    }

    private func sendToJournal(_ level: LogLevel, _ message: String, _ id: MessageID?, _ fields: [Field]) -> Bool {
        var entries = ["MESSAGE=\(message)", "PRIORITY=\(level.rawValue)", "SYSLOG_IDENTIFIER=tcpopsd"]
        if let id { entries.append("MESSAGE_ID=\(id.rawValue)") }
        for (k, v) in fields { entries.append("\(k)=\(v)") }
        var buffers: [UnsafeMutableRawBufferPointer] = []
        buffers.reserveCapacity(entries.count)
        defer { for b in buffers { b.deallocate() } }
        var iov: [iovec] = []
        iov.reserveCapacity(entries.count)
        for e in entries {
            let utf8 = Array(e.utf8)
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(utf8.count, 1), alignment: 1)
            b.copyBytes(from: utf8)
            buffers.append(b)
            iov.append(iovec(iov_base: b.baseAddress, iov_len: utf8.count))
        }
        return sd_journal_sendv(&iov, Int32(iov.count)) >= 0
    }

    private func writeLine(_ level: LogLevel, _ message: String, _ fields: [Field]) {
        var line = level.name.uppercased()
        line += " "
        line += message
        for (k, v) in fields {
            var key = k
            if key.hasPrefix("TCPOPS_") { key = String(key.dropFirst(7)) }
            line += " \(key.lowercased())="
            line += v.contains(where: { $0 == " " || $0 == "\"" || $0 == "\n" }) ? quoted(v) : v
        }
        line += "\n"
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }

    private func quoted(_ s: String) -> String {
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

/// Stable MESSAGE_IDs, one per kind of entry (listed in docs/journal.md).
public enum MessageID: String, Sendable {
    case started = "90dcfd40737843098b666014b80b8f07"
    case stopping = "812d3f7d8c0d4a62848b745f217577e2"
    case stopped = "fcd51e0ab813459e80e9ce6c6334e826"
    case configInvalid = "c2988642cde14042b24e0c09ae05f57e"
    case eventClosed = "7f641d49b1064a0b9b5f80daaa86a266"
    case eventReset = "6493216fb804485a9b6bdb453f8e94e3"
    case eventTimeout = "e554ba41c27948819a98480f51c9e580"
    case connectionOpened = "af3d88eb7ca9414d82dd1998e33099a5"
    case connectionClosed = "387290ab5ecf440084a71591be7f39f2"
    case hookFinished = "df9ec5e5f5cb44aa8c634c41acd29588"
    case hookKilled = "9dddb0a9302f42a9958bad7d604c1cb8"
    case hookDropped = "4972cf2fd06641b6ab7ff0bce2a168b8"
    case listener = "1946cf980a2948c588c6c80713ff0189"
}
