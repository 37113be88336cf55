// A value behind a pthread mutex, for the few things threads share (inbox queues, side-channel
// queues, hook settings and counters). pthread rather than Synchronization.Mutex: ThreadSanitizer
// sees pthread locks (it intercepts them) but not the futex inside the standard library's Mutex,
// and would report every access it guards as a race (make test-sanitize).
import Glibc

public final class Locked<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched between lock and unlock of `mutex`.
    // Visible to the inlined withLock: callers in other modules get it specialized to their Value.
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
