// One client of the control socket, on the control thread: its input lines, its output (answers,
// or the event stream of a subscriber), and how it is closed. A client closed by tcpopsd gets its
// last line, then a FIN, and is kept until it hangs up (at most a second): closing with unread
// input would reset the connection and could discard that line before the client reads it.
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix
import TCPOpsRelay
import TCPOpsProtocol

final class ControlClient: EventHandler {
    let id: UInt64
    let fd: Int32
    unowned let worker: ControlWorker
    var input: [UInt8] = []
    var output: [UInt8] = []
    var outputSent = 0
    var subscribed = false
    var pending = 0
    /// No further requests are read; closed once the output is out.
    var closing = false
    private var mayLinger = false
    /// Our FIN is sent; the client's own hang-up is awaited.
    private var lingering = false
    /// When closing began: a client that does not take its last line, or does not hang up, within
    /// a second is dropped.
    var closingSince: UInt64 = 0
    /// Since when a complete request line is awaited: the connect, or the last answer.
    var requestSince: UInt64
    /// Accepted on the fd held in reserve (at the fd limit).
    var usesReserve = false

    init(id: UInt64, fd: Int32, worker: ControlWorker) {
        self.id = id
        self.fd = fd
        self.worker = worker
        requestSince = worker.loop.now
    }

    var backlog: Int { output.count - outputSent }

    // Answers go out in the order of the requests, however long each took (a request that every
    // worker must answer takes longer than one refused at once).
    private var nextTicket: UInt64 = 0
    private var nextToSend: UInt64 = 0
    private var ready: [UInt64: [String]] = [:]

    /// The place in line of a request just read.
    func ticket() -> UInt64 {
        defer { nextTicket += 1 }
        return nextTicket
    }

    /// The answer (lines) to request `t`: sent once every earlier request's answer is.
    func answer(_ t: UInt64, _ lines: [String]) {
        ready[t] = lines
        while let next = ready.removeValue(forKey: nextToSend) {
            for l in next { send(l) }
            nextToSend += 1
        }
    }

    override func handleEvents(_ events: UInt32) {
        if lingering {
            discardUntilHangup()
            return
        }
        if events & Events.write != 0 { flush() }
        if events & (Events.read | Events.hangup | Events.error) != 0 && !closing { readLines() }
    }

    private func readLines() {
        while true {
            switch UnixSocket.read(fd, appendingTo: &input, max: 65536) {
            case .moved:
                var start = 0
                while let nl = input[start...].firstIndex(of: 10) {
                    let line = Array(input[start..<nl])
                    start = nl + 1
                    if !line.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 9 }) { worker.request(self, line) }
                    if closing { return }
                }
                input.removeFirst(start)
                if input.count > ControlProtocol.maxLine {
                    input = []
                    closeAfterFlush(error: "request longer than \(ControlProtocol.maxLine) bytes")
                    return
                }
            case .wouldBlock:
                return
            case .endOfFile, .failed:
                // The client hung up: answers it still waits for are written, then it is dropped.
                if pending == 0 && backlog == 0 || subscribed {
                    worker.drop(self)
                } else {
                    if !closing {
                        mayLinger = false
                        _ = worker.closing(self)
                        closingSince = worker.loop.now
                    }
                    closing = true
                    worker.loop.modify(fd, mask: Events.write)
                }
                return
            }
        }
    }

    func send(_ line: String) {
        output.append(contentsOf: line.utf8)
        output.append(10)
        flush()
    }

    func flush() {
        while outputSent < output.count {
            switch Socket.send(fd, output[outputSent...]) {
            case .moved(let n): outputSent += n
            case .wouldBlock:
                worker.loop.modify(fd, mask: (closing ? 0 : Events.read) | Events.write)
                return
            case .endOfFile, .failed:
                worker.drop(self)
                return
            }
        }
        output.removeAll(keepingCapacity: output.count < 65536)
        outputSent = 0
        if closing && pending == 0 {
            finishClosing()
        } else {
            worker.loop.modify(fd, mask: closing ? 0 : Events.read)
        }
    }

    /// Sends an error line, then closes once it is written (and the client hung up).
    func closeAfterFlush(error: String) {
        guard !closing else { return }
        closing = true
        closingSince = worker.loop.now
        mayLinger = worker.closing(self)
        input = []
        send(ControlAnswer.error(nil, error))
    }

    private func finishClosing() {
        guard mayLinger else {
            worker.drop(self)
            return
        }
        Socket.shutdownWrite(fd)
        lingering = true
        worker.loop.modify(fd, mask: Events.read)
    }

    /// After our FIN: whatever the client still sends is read and dropped until it hangs up.
    private func discardUntilHangup() {
        var sink: [UInt8] = []
        while true {
            sink.removeAll(keepingCapacity: true)
            switch UnixSocket.read(fd, appendingTo: &sink, max: 65536) {
            case .moved: continue
            case .wouldBlock: return
            case .endOfFile, .failed:
                worker.drop(self)
                return
            }
        }
    }

    /// A subscriber too far behind: its backlog is dropped, one error line is tried without
    /// waiting, and it is closed.
    func cutOff() {
        var line = Array(ControlAnswer.error(nil, "events subscriber too slow: cut off").utf8)
        line.append(10)
        _ = Socket.send(fd, line[...])
        worker.drop(self)
    }
}
