// Tells `systemctl stop` from `systemctl restart` for the fd store handover. systemd says nothing
// of it to the process it stops, so the unit runs `tcpopsd --stop-hint` as ExecStop=+ (root,
// before SIGTERM): it asks systemd over the system bus for the unit's job and, when that is a
// stop, leaves a mark in the unit's runtime directory that the daemon takes on SIGTERM.
import CSystemdBus
import Glibc
import TCPOpsPosix
import TCPOpsEvents

public enum StopHint {
    /// The mark's name in $RUNTIME_DIRECTORY (/run/tcpopsd).
    package static let file = "stop-for-good"

    /// Where the mark is (nil outside a unit with a RuntimeDirectory=).
    public static func path() -> String? {
        guard let dirs = getenv("RUNTIME_DIRECTORY").map({ String(cString: $0) }), !dirs.isEmpty else { return nil }
        let first = dirs.split(separator: ":").first.map(String.init) ?? dirs
        return first + "/" + file
    }

    /// The type of the job systemd runs on this process's unit ("stop", "restart", ... or "" when
    /// none), or a SystemError when it cannot tell (waits up to `timeoutUsec` for the bus).
    public static func unitJob(timeoutUsec: UInt64 = 2_000_000) -> Result<String, SystemError> {
        var buf = [CChar](repeating: 0, count: 64)
        let r = tcpops_unit_job_type(&buf, buf.count, timeoutUsec)
        guard r == 0 else { return .failure(SystemError("asking systemd for the unit's job", -r)) }
        return .success(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    /// `tcpopsd --stop-hint`: leaves the mark when systemd is stopping the unit for good; removes a
    /// stale one otherwise. Says what it did, for the journal (its stdout).
    public static func run() -> String {
        guard let mark = path() else { return "--stop-hint: no RUNTIME_DIRECTORY (run it as the unit's ExecStop=+)" }
        switch unitJob() {
        case .failure(let e):
            return "--stop-hint: \(e); the relays will go to the fd store"
        case .success(let job) where job == "stop":
            do throws(SystemError) {
                try Files.createEmpty(mark)
            } catch {
                return "--stop-hint: \(error); the relays will go to the fd store"
            }
            return "systemd is stopping the unit: its relays drain (not to the fd store)"
        case .success(let job):
            Files.remove(mark)
            return "systemd's job on the unit: \(job.isEmpty ? "none" : job): relays go to the fd store"
        }
    }
}
