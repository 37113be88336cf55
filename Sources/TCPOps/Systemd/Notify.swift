// sd_notify for readiness, status and stopping; a no-op without NOTIFY_SOCKET.
import CSystemd

public enum Notify {
    public static func send(_ state: String) {
        _ = sd_notify(0, state)
    }
}
