// `[metrics] listen`: Prometheus scrapes GET /metrics here. Its own thread and event loop, off the
// relay's: rendering the exposition text never delays a relay. Bounded: 16 requests under way at
// once, a request of at most 8 KiB, 5 s to send it, one request a connection (Connection: close).
// A scraper sends its request as soon as it connects, so it is read at the accept; a client that
// takes its time (a slowloris, a connection held open and silent) is the oldest incomplete one
// when the next arrives, and is closed with a 503 to make room: a flood cannot lock a scraper out.
import Glibc
import TCPOpsLoop
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix

public final class MetricsServer: Sendable {
    private let runner: LoopThread<MetricsWorker>

    public init(metrics: DaemonMetrics, logger: Logger) throws(SystemError) {
        runner = LoopThread(name: "tcpops-metrics", worker: MetricsWorker(loop: try EventLoop(), metrics: metrics, logger: logger))
    }

    /// Starts serving on `listenFD` (bound by the caller, so that a failure is the caller's to report).
    public func start(listenFD: Int32, address: SocketAddress) throws(SystemError) {
        try runner.unstartedWorker.take(listenFD, address)
        try runner.start()
    }

    /// Serves on another socket from now on (nil: none); the old one is closed after the switch.
    public func replace(listenFD: Int32?, address: SocketAddress?) {
        let fd = listenFD
        runner.post { worker in
            do {
                try worker.take(fd, address)
            } catch {
                worker.logger.log(.error, "metrics: cannot watch the new socket: \(error)")
                if let fd { closeFD(fd) }
            }
        }
    }

    public func shutdown() {
        runner.shutdown()
    }
}

/// Lives on the metrics thread only.
package final class MetricsWorker: LoopWorker {
    /// Requests under way (incomplete) at most; answered clients that still read their response,
    /// or have not hung up, are bounded by `maxAnswered`.
    package static let maxClients = 16
    /// A client younger than this is not evicted to make room while fewer than `hardMaxClients`
    /// requests are under way: a scraper whose request is a moment behind its connect (its
    /// process busy elsewhere) is not taken for a silent one by a flood of newer connections.
    package static let grace: UInt64 = 500_000_000
    package static let hardMaxClients = 512
    package static let maxAnswered = 64
    package static let maxRequest = 8192
    package static let deadline: UInt64 = 5_000_000_000

    package let loop: EventLoop
    package let metrics: DaemonMetrics
    package let logger: Logger
    private var listenFD: Int32 = -1
    private var address: SocketAddress?
    private var listenHandler: ListenHandler?
    private var backoff: AcceptPause?
    private var clients: [Int32: MetricsClient] = [:]
    /// Clients closed to make room (evicted incomplete requests and old answered ones).
    private(set) var evicted: UInt64 = 0
    private lazy var evictionLog = LogLimiter(loop: loop, logger: logger)

    package init(loop: EventLoop, metrics: DaemonMetrics, logger: Logger) {
        self.loop = loop
        self.metrics = metrics
        self.logger = logger
    }

    final class ListenHandler: EventHandler {
        unowned let worker: MetricsWorker
        init(_ w: MetricsWorker) { worker = w }
        override func handleEvents(_ events: UInt32) { worker.acceptAll() }
    }

    /// Serves on `fd` instead of the socket it had (which is closed).
    package func take(_ fd: Int32?, _ at: SocketAddress?) throws(SystemError) {
        if listenFD >= 0 {
            backoff?.close()
            loop.unregister(listenFD)
            closeFD(listenFD)
            listenFD = -1
        }
        guard let fd, let at else { return }
        let h = listenHandler ?? ListenHandler(self)
        listenHandler = h
        try loop.register(fd, mask: Events.read, handler: h)
        listenFD = fd
        address = at
        backoff = AcceptPause(loop: loop, fd: fd, what: "metrics accept on \(at)") { [logger] in logger.log(.warning, $0, id: .listener) }
    }

    package func started() { sweep() }

    package func loopFailed(_ error: SystemError) { logger.log(.error, "metrics loop failed: \(error)") }

    package func finish() {
        for c in Array(clients.values) { drop(c) }
        try? take(nil, nil)
        listenHandler = nil
        loop.close()
    }

    private func sweep() {
        let now = loop.now
        for c in Array(clients.values) where now - c.since > MetricsWorker.deadline { drop(c) }
        loop.timers.schedule(at: now + 1_000_000_000) { [weak self] in self?.sweep() }
    }

    package func acceptAll() {
        for _ in 0..<64 {
            let fd: Int32
            do {
                guard let a = try Socket.accept(listenFD) else { return }
                fd = a.fd
            } catch {
                if [ECONNABORTED, EPROTO].contains(error.errno) { continue }
                backoff?.pause(error)
                return
            }
            let c = MetricsClient(fd: fd, worker: self)
            do {
                try loop.register(fd, mask: Events.read, handler: c)
                clients[fd] = c
            } catch {
                closeFD(fd)
                continue
            }
            c.handleEvents(Events.read)  // the request is usually there already
            makeRoom()
        }
    }

    /// Past `maxClients` requests under way, the oldest incomplete one is closed (with a 503): the
    /// newcomer is served. One younger than `grace` stays while fewer than `hardMaxClients` are
    /// under way. Past `maxAnswered` answered ones, the oldest goes.
    private func makeRoom() {
        var incomplete = clients.values.filter { !$0.answered }
        let now = loop.now
        while incomplete.count > MetricsWorker.maxClients, let oldest = incomplete.min(by: { $0.since < $1.since }),
              incomplete.count > MetricsWorker.hardMaxClients || now &- oldest.since >= MetricsWorker.grace {
            incomplete.removeAll { $0 === oldest }
            // Its request may have come since it was accepted, its readiness not yet handled (a
            // flood's accepts come first in this turn): read it once more before evicting a scraper.
            oldest.handleEvents(Events.read)
            guard clients[oldest.fd] === oldest, !oldest.answered else { continue }
            evict(oldest, why: "\(MetricsWorker.maxClients) requests under way: the oldest incomplete one was answered 503 and closed")
            oldest.refuse()
        }
        var answered = clients.values.filter { $0.answered }
        while answered.count > MetricsWorker.maxAnswered, let oldest = answered.min(by: { $0.since < $1.since }) {
            answered.removeAll { $0 === oldest }
            evict(oldest, why: "\(MetricsWorker.maxAnswered) answered clients not gone: the oldest was closed")
            drop(oldest)
        }
    }

    private func evict(_ c: MetricsClient, why: String) {
        evicted += 1
        evictionLog.log(.notice, "metrics: \(why)", [("TCPOPS_EVICTED", String(evicted))])
    }

    func drop(_ c: MetricsClient) {
        guard clients.removeValue(forKey: c.fd) != nil else { return }
        loop.unregister(c.fd)
        closeFD(c.fd)
    }

    /// The response to one request (its first line); what is not a scrape is logged at debug.
    package func respond(to requestLine: String) -> [UInt8] {
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            return response(400, "Bad Request", "a request line is METHOD PATH HTTP/1.x\n")
        }
        let method = parts[0], path = parts[1].prefix { $0 != "?" }
        guard method == "GET" || method == "HEAD" else {
            logger.log(.debug, "metrics: \(method) \(parts[1]) refused (405)")
            return response(405, "Method Not Allowed", "only GET /metrics is served\n", extra: "Allow: GET, HEAD\r\n")
        }
        guard path == "/metrics" else {
            logger.log(.debug, "metrics: GET \(parts[1]) not found (404)")
            return response(404, "Not Found", "only GET /metrics is served\n")
        }
        let body = metrics.render()
        return response(200, "OK", body, type: "text/plain; version=0.0.4; charset=utf-8", head: method == "HEAD")
    }

    private func response(_ code: Int, _ reason: String, _ body: String, extra: String = "") -> [UInt8] {
        response(code, reason, Array(body.utf8), type: "text/plain; charset=utf-8", extra: extra)
    }

    private func response(_ code: Int, _ reason: String, _ body: [UInt8], type: String, extra: String = "", head: Bool = false) -> [UInt8] {
        let header = "HTTP/1.1 \(code) \(reason)\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\n\(extra)Connection: close\r\n\r\n"
        return Array(header.utf8) + (head ? [] : body)
    }
}

/// One scraper's connection: a request in, a response out, closed.
final class MetricsClient: EventHandler {
    package let fd: Int32
    package unowned let worker: MetricsWorker
    package let since: UInt64
    private var input: [UInt8] = []
    private var output: [UInt8] = []
    private var sent = 0
    private(set) var answered = false

    package init(fd: Int32, worker: MetricsWorker) {
        self.fd = fd
        self.worker = worker
        since = worker.loop.now
    }

    override func handleEvents(_ events: UInt32) {
        if answered {
            if events & Events.write != 0 { flush() }
            if events & (Events.read | Events.hangup | Events.error) != 0 { discard() }
            return
        }
        while true {
            switch UnixSocket.read(fd, appendingTo: &input, max: MetricsWorker.maxRequest + 1 - input.count) {
            case .moved:
                if let end = headerEnd() {
                    let line = String(decoding: input[..<(input.firstIndex { $0 == 13 || $0 == 10 } ?? end)], as: UTF8.self)
                    answer(worker.respond(to: line))
                    return
                }
                if input.count > MetricsWorker.maxRequest {
                    answer(Array("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8))
                    return
                }
            case .wouldBlock:
                return
            case .endOfFile, .failed:
                worker.drop(self)
                return
            }
        }
    }

    /// Where the request's header ends (its blank line: CRLF CRLF, or bare LF LF as RFC 9112
    /// lets a server accept), if it came.
    private func headerEnd() -> Int? {
        guard input.count >= 2 else { return nil }
        for i in 1..<input.count where input[i] == 10 {
            if input[i - 1] == 10 { return i }
            if i >= 2 && input[i - 1] == 13 && input[i - 2] == 10 { return i }
        }
        return nil
    }

    /// Closed to make room: a 503 (what fits in the socket at once), then the close.
    package func refuse() {
        let reply = Array("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 25\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many requests at once\n".utf8)
        _ = Socket.send(fd, reply[...])
        Socket.shutdownWrite(fd)
        worker.drop(self)
    }

    private func answer(_ bytes: [UInt8]) {
        answered = true
        output = bytes
        input = []
        flush()
    }

    private func flush() {
        while sent < output.count {
            switch Socket.send(fd, output[sent...]) {
            case .moved(let n): sent += n
            case .wouldBlock:
                worker.loop.modify(fd, mask: Events.write)
                return
            case .endOfFile, .failed:
                worker.drop(self)
                return
            }
        }
        // All written: a FIN, then whatever the client still sends is dropped until it hangs up
        // (closing with unread bytes would reset the response away).
        Socket.shutdownWrite(fd)
        worker.loop.modify(fd, mask: Events.read)
    }

    private func discard() {
        var sink: [UInt8] = []
        while true {
            sink.removeAll(keepingCapacity: true)
            switch UnixSocket.read(fd, appendingTo: &sink, max: 4096) {
            case .moved: continue
            case .wouldBlock: return
            case .endOfFile, .failed:
                worker.drop(self)
                return
            }
        }
    }
}
