// sd_notify for readiness, status, reloading, stopping and the watchdog; a no-op without
// NOTIFY_SOCKET. Messages are sent by a thread of their own: PID 1 busy in a daemon-reload (or any
// receiver that stops reading) fills the socket's queue, and a plain sd_notify then sleeps, which
// an event loop must never do. STATUS= and WATCHDOG=1 coalesce while they wait; the rest is kept.
import CSystemd
import Glibc
import TCPOpsPosix
import TCPOpsEvents

public enum Notify {
    private static let channel: SideChannel<String>? = {
        guard getenv("NOTIFY_SOCKET") != nil else { return nil }
        return try? SideChannel<String>(name: "tcpops-notify", limit: 64, write: { _ = sd_notify(0, $0) })
    }()

    /// Queues `state` (one or more `KEY=value` lines) for systemd without waiting.
    public static func send(_ state: String) {
        guard let channel else { return }
        if isOnly(state, "STATUS=") || isOnly(state, "WATCHDOG=") {
            let key = state.prefix { $0 != "=" }
            channel.submit(state, replaces: { isOnly($0, "\(key)=") })
        } else {
            channel.submit(state, essential: true)
        }
    }

    /// A message made of one `prefix...` line.
    private static func isOnly(_ state: String, _ prefix: String) -> Bool {
        state.hasPrefix(prefix) && !state.contains("\n")
    }

    /// Waits until queued messages are out, at most until `deadline` (monotonic ns): before exit.
    public static func flush(deadline: UInt64) {
        channel?.flush(deadline: deadline)
    }

    /// Sends `state` with fds attached (FDSTORE=1 ...) and waits for it: only at a stop that hands
    /// relays to systemd, when the loop has nothing else to do. False if it could not be sent.
    public static func send(_ state: String, fds: [Int32]) -> Bool {
        var fds = fds
        return sd_pid_notify_with_fds(0, 0, state, &fds, UInt32(fds.count)) > 0
    }

    /// WATCHDOG_USEC for this process, if systemd's watchdog is on (nil otherwise).
    public static func watchdogInterval() -> UInt64? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return usec
    }
}
