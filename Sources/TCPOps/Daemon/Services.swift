// The parts of the daemon that start and stop with it, in the shape of swift-service-lifecycle's
// ServiceGroup (without its async runtime: every part here runs on a thread or loop of its own):
// started in order, each remembered only once it started, stopped in reverse order within one
// deadline. A start that fails stops what already started, in reverse, and nothing else: there
// is one teardown, whatever step failed.

struct Services {
    /// What stops a part; `deadline` (monotonic ns) is when the whole stop must be over (the hook
    /// runner lets queued hooks finish until then; the others stop at once).
    typealias Stop = (_ deadline: UInt64) -> Void

    private var started: [(name: String, stop: Stop)] = []

    /// The parts started so far, in the order they started.
    var names: [String] { started.map(\.name) }

    /// Starts a part: when `start` returns, `stop` is remembered; when it throws, the error passes
    /// on (the caller stops what started before).
    mutating func start<E: Error>(_ name: String, _ start: () throws(E) -> Void, stop: @escaping Stop) throws(E) {
        try start()
        started.append((name, stop))
    }

    /// A part that is there already (or whose start cannot fail): only its stop.
    mutating func add(_ name: String, stop: @escaping Stop) {
        started.append((name, stop))
    }

    /// Stops every part started, the last first; each once.
    mutating func stopAll(deadline: UInt64) {
        while let part = started.popLast() { part.stop(deadline) }
    }
}
