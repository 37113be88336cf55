// sd_notify for readiness, status and stopping; a no-op without NOTIFY_SOCKET.
import CSystemd

public enum Notify {
    public static func send(_ state: String) {
        _ = sd_notify(0, state)
    }

    /// Sends `state` with fds attached (FDSTORE=1 ...). False if it could not be sent.
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
