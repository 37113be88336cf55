// A plain pthread running one closure, and a box that hands a non-Sendable value to it exactly once.
import CShims
import Glibc

public final class PosixThread: @unchecked Sendable {
    // @unchecked: `handle` is written once by start() before any other thread can see it, and read by join().
    private var handle = pthread_t()
    private var started = false
    /// The thread's name as `top -H`, `ps -L` and /proc/PID/task/TID/comm show it ("tcpops-" and
    /// the role: the kernel keeps 15 bytes).
    private let name: String

    private final class Body {
        package let name: String
        package let run: () -> Void
        package init(_ name: String, _ run: @escaping () -> Void) {
            self.name = name
            self.run = run
        }
    }

    public init(name: String) { self.name = name }

    public func start(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let box = Unmanaged.passRetained(Body(name, body)).toOpaque()
        let r = pthread_create(&handle, nil, { arg in
            guard let arg else { return nil }
            let body = Unmanaged<Body>.fromOpaque(arg).takeRetainedValue()
            tcpops_name_thread(body.name)
            body.run()
            return nil
        }, box)
        if r != 0 {
            Unmanaged<Body>.fromOpaque(box).release()
            throw SystemError("pthread_create", r)
        }
        started = true
    }

    /// Whether start() ran (and join() has not yet).
    public var isStarted: Bool { started }

    /// Nobody will join it: its resources go when it ends (a writer thread that may still be
    /// blocked when the process exits).
    public func detach() {
        guard started else { return }
        pthread_detach(handle)
        started = false
    }

    public func join() {
        guard started else { return }
        pthread_join(handle, nil)
        started = false
    }
}

/// Moves a value that is not Sendable to another thread that becomes its only user.
public struct Handoff<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}
