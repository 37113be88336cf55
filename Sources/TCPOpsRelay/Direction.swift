// One way of a relay: the bytes from a source socket to a destination socket. A direction holds
// its pipe (taken from the pool only while bytes are in flight), what is in it, bytes held in
// memory, and its FIN state; `pump` moves what it can without blocking and says in one report what
// happened. It knows nothing of connections, events or the loop: the relay applies the report
// (counters, events, failures, epoll interest), and a direction is tested alone over a socketpair.
//
// Bulk bytes move with splice() through the pipe; a small read into an empty direction is copied
// through the worker's scratch buffer straight to the destination (cheaper than two splices for a
// small message). Backpressure is state: the source is read only while the pipe has room, nothing
// is held in memory and the destination is not blocked.
//
// The relay's sockets are edge-triggered: epoll tells of new bytes once. So a direction stops
// reading its source only when the source is known empty (`sourceDry`: a copy came back short, or
// a read said EAGAIN with the pipe empty) or when it must wait for room (then the destination's
// EPOLLOUT resumes it, and it reads again). A short splice proves nothing (a pipe also fills by
// its slots, one per socket buffer fragment, before its bytes): the pipe is written out and the
// source asked again.
import Glibc
import TCPOpsPosix
import TCPOpsEvents
import TCPOpsSystemd

/// What the last edge said of a source's end.
package enum SourceEnding: UInt8 {
    case none
    /// Its FIN came (EPOLLRDHUP, no error): every byte before it is in the socket, so a read that
    /// comes back short has them all, and the FIN is next (no read that says 0 is needed).
    case fin
    /// It failed (EPOLLERR), or hung up without a FIN seen: it is read until it says how (0 or
    /// its error).
    case unknown
}

package struct Direction {
    // Stored properties widest first (Swift lays them out in this order): 31 bytes, held inline in
    // the relay. Counts are 32-bit (a pipe holds at most 1 MiB, held bytes at most what
    // `tcpopsctl send` may queue plus one read).
    /// Bytes in memory, written after the pipe's: given by `tcpopsctl send`, read while the
    /// destination was still connecting, or left over from a copy when no pipe could be had. The
    /// source is not read while any wait.
    package var held: [UInt8] = []
    private var fillCount: Int32 = 0
    private var heldSentCount: Int32 = 0
    package var pipe: PipePool.Pipe?
    /// Bytes in the pipe.
    package var fill: Int {
        get { Int(fillCount) }
        set { fillCount = Int32(newValue) }
    }
    /// Bytes of `held` already written.
    package var heldSent: Int {
        get { Int(heldSentCount) }
        set { heldSentCount = Int32(newValue) }
    }
    /// The source sent FIN (or is gone: nothing more will come from it).
    package var eof = false
    /// The FIN was passed on to the destination.
    package var shut = false
    /// The destination said EAGAIN; wait for EPOLLOUT before moving more.
    package var blocked = false
    /// The source is empty: its last read came back short or said EAGAIN, and no EPOLLIN came
    /// since. Set only when that is sure: its edge came and went (edge-triggered), so a direction
    /// that thought its source dry while bytes waited would never read them.
    package var sourceDry = false
    /// What epoll said of the source's end (edge-triggered, the end that came with the last bytes
    /// has no edge of its own: a short read must not leave it unread).
    package var ending = SourceEnding.none
    /// The last read filled its buffer: bulk data, moved by splice. Otherwise a read into an
    /// empty direction copies through a small buffer.
    package var bulk = false
    /// The pipe was grown to the pool's bulkCapacity while this direction streams.
    package var grown = false

    /// Reads of at most this many bytes into an empty direction are copied, not spliced (the size
    /// of a worker's scratch buffer).
    package static let copyLimit = 16384

    /// What one pump did: its status, whether the source's FIN arrived, and what moved before the
    /// pump stopped (applied by the relay even when a side failed).
    package struct Report {
        enum Status: Equatable {
            /// Moved what could be moved; waiting for the source, the destination or a write slot.
            case moving
            /// Reading the source failed with this errno.
            case sourceFailed(Int32)
            /// Writing the destination failed with this errno.
            case destinationFailed(Int32)
        }
        var status = Status.moving
        /// The source's FIN arrived in this pump (it is passed on once everything before it is).
        var finArrived = false
        /// Bytes taken from the source.
        var read = 0
        /// Bytes given to the destination.
        var written = 0
        /// A pipe was wanted and none could be made (out of fds): bulk was copied instead.
        var pipeShortage: SystemError?
    }

    /// Nothing waits to be written to the destination.
    package var drained: Bool { fill == 0 && held.isEmpty }

    /// Bytes waiting for the destination.
    package var pending: Int { fill + held.count - heldSent }

    /// The source may be read: not ended, room in the pipe, nothing held, the destination not blocked.
    package func wantsSource(pipes: PipePool) -> Bool { !eof && !blocked && held.isEmpty && fill < capacity(pipes) }

    /// What this direction's pipe holds: grown while it streams.
    @inline(__always) package func capacity(_ pipes: PipePool) -> Int { grown ? pipes.bulkCapacity : pipes.capacity }

    /// Bytes wait and the destination said EAGAIN: its EPOLLOUT resumes this direction.
    package var wantsDestination: Bool { !drained && blocked }

    /// Moves bytes from `source` to `destination` while either step progresses, then passes a FIN
    /// on once the source ended and everything before it is written.
    /// - canWrite: the destination is connected (bytes read while it connects are held).
    /// - mayRead: the source may be read (false while the relay quiets for a handover).
    /// - closeSendsFIN: the relay ends as soon as this FIN is passed on, and its close() sends it;
    ///   no shutdown() is needed.
    /// - keepMark: the relay is kept for a crash (RelayKeep): every byte goes through a pipe (none
    ///   waits in memory), and which pipe holds them is written here the moment it is taken (its
    ///   read end + 1; 0 once it is given back).
    package mutating func pump(from source: Int32, to destination: Int32, pipes: PipePool, scratch: UnsafeMutableRawBufferPointer,
                       canWrite: Bool, mayRead: Bool = true, closeSendsFIN: Bool = false,
                       keepMark: UnsafeMutablePointer<Int32>? = nil) -> Report {
        var report = Report()
        var capacity = self.capacity(pipes)
        var readDrained = sourceDry
        // A splice that came back short, or said EAGAIN, while the pipe held bytes: the source is
        // asked again once they are all written (the pipe may have been full by its slots; an
        // EAGAIN into an empty pipe is the source's).
        var askAgainWhenWritten = false
        while true {
            var progress = false
            if mayRead && !readDrained && wantsSource(pipes: pipes) {
                let mode = readMode(canWrite: canWrite, pipes: pipes, report: &report, keepMark: keepMark)
                capacity = self.capacity(pipes)  // the pipe readMode took may be a grown one
                let want = mode == .splice ? capacity - fill : scratch.count
                let result = mode == .splice ? Splice.move(from: source, to: pipe!.write, length: want)
                                             : Socket.receive(source, into: scratch)
                switch result {
                case .moved(let n):
                    report.read += n
                    progress = true
                    if n < want {
                        readDrained = true
                        if mode == .splice {
                            askAgainWhenWritten = true
                        } else if ending == .fin {
                            eof = true  // (the read that would say 0 is not needed)
                            report.finArrived = true
                        } else if ending == .unknown {
                            readDrained = false  // asked again: it says 0 or its error
                        } else {
                            sourceDry = true
                        }
                    }
                    bulk = n >= Direction.copyLimit
                    switch mode {
                    case .copy:
                        guard forward(n, to: destination, pipes: pipes, scratch: scratch, report: &report, keepMark: keepMark) else { return report }
                    case .hold:
                        held.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
                    case .splice:
                        fill += n
                        // One read filled the whole pipe: the source streams. A bigger pipe moves
                        // more per splice (once; the pool bounds how many grow).
                        if !grown && fill == capacity && n == want && pipes.grow(pipe!) {
                            grown = true
                            capacity = pipes.bulkCapacity
                        }
                    }
                case .endOfFile:
                    eof = true
                    report.finArrived = true
                case .wouldBlock:
                    readDrained = true
                    if mode == .splice && fill > 0 { askAgainWhenWritten = true } else { sourceDry = true }
                case .failed(let e):
                    report.status = .sourceFailed(e)
                    return report
                }
            }
            if fill > 0 && canWrite && !blocked, let p = pipe {
                guard let n = wrote(Splice.move(from: p.read, to: destination, length: fill), &report) else { return report }
                fill -= n
                progress = progress || n > 0
                if fill == 0 && askAgainWhenWritten {
                    askAgainWhenWritten = false
                    readDrained = false
                }
            } else if fill == 0 && !held.isEmpty && canWrite && !blocked {
                guard let n = wrote(Socket.send(destination, held[heldSent...]), &report) else { return report }
                heldSent += n
                if heldSent == held.count {
                    held = []
                    heldSent = 0
                }
                progress = progress || n > 0
            }
            if !progress { break }
        }
        // An empty pipe goes back to the pool (a grown one to the pool's grown ones: the next pump
        // of a stream takes it again).
        if fill == 0, let p = pipe {
            keepMark?.pointee = 0
            if grown {
                grown = false
                pipes.give(grown: p)
            } else {
                pipes.give(p)
            }
            pipe = nil
        }
        if eof && drained && !shut && canWrite {
            if !closeSendsFIN { Socket.shutdownWrite(destination) }
            shut = true
        }
        return report
    }

    /// Queues bytes given by hand (`tcpopsctl send`) after those already queued; false when the
    /// FIN was already passed on or more than `limit` bytes would wait in memory.
    package mutating func inject(_ bytes: [UInt8], limit: Int) -> Bool {
        guard !shut, held.count - heldSent + bytes.count <= limit else { return false }
        held.append(contentsOf: bytes)
        return true
    }

    /// Gives the pipe back at the relay's end (closed instead when bytes are still in it).
    package mutating func releasePipe(to pipes: PipePool) {
        guard let p = pipe else { return }
        switch (fill == 0, grown) {
        case (true, false): pipes.give(p)
        case (true, true): pipes.give(grown: p)
        case (false, false): pipes.close(p)
        case (false, true): pipes.close(grown: p)
        }
        pipe = nil
        grown = false
    }

    private enum ReadMode { case copy, splice, hold }

    /// How the next read moves its bytes: small reads into an empty direction are copied straight
    /// to a writable destination; bulk reads are spliced through a pipe; bytes that arrive while
    /// the destination is still connecting are held in memory (one read's worth). Without a pipe
    /// (out of fds), bulk is copied too: slower, never a reset.
    private mutating func readMode(canWrite: Bool, pipes: PipePool, report: inout Report, keepMark: UnsafeMutablePointer<Int32>?) -> ReadMode {
        if fill == 0 && keepMark == nil {
            if !canWrite { return .hold }
            if !bulk { return .copy }
        }
        if takePipe(pipes, &report, keepMark) { return .splice }
        return canWrite ? .copy : .hold  // no pipe means an empty direction: fill is 0
    }

    private mutating func takePipe(_ pipes: PipePool, _ report: inout Report, _ keepMark: UnsafeMutablePointer<Int32>?) -> Bool {
        guard pipe == nil else { return true }
        if bulk, let p = pipes.takeGrown() {
            pipe = p
            grown = true
            keepMark?.pointee = p.read + 1
            return true
        }
        do {
            let p = try pipes.take()
            pipe = p
            keepMark?.pointee = p.read + 1
            return true
        } catch {
            report.pipeShortage = error
            return false
        }
    }

    /// The book-keeping of one write: the bytes it took (0: it must wait for EPOLLOUT), or nil when
    /// the destination broke (the report says so).
    private mutating func wrote(_ result: IOResult, _ report: inout Report) -> Int? {
        switch result {
        case .moved(let n):
            report.written += n
            return n
        case .wouldBlock:
            blocked = true
            return 0
        case .endOfFile:
            return 0
        case .failed(let e):
            report.status = .destinationFailed(e)
            return nil
        }
    }

    /// Sends `n` bytes just read into the scratch buffer; what the destination cannot take now
    /// goes into the pipe, ahead of anything read later.
    private mutating func forward(_ n: Int, to destination: Int32, pipes: PipePool, scratch: UnsafeMutableRawBufferPointer,
                                  report: inout Report, keepMark: UnsafeMutablePointer<Int32>?) -> Bool {
        guard let sent = wrote(Socket.send(destination, UnsafeRawBufferPointer(rebasing: scratch[0..<n])), &report) else {
            return false
        }
        if sent < n {
            blocked = true  // a short send: the socket buffer is full
            let rest = UnsafeRawBufferPointer(rebasing: scratch[sent..<n])
            // Into the (empty) pipe as far as it takes them, what it does not take into memory
            // after them: `fill` counts exactly what the pipe holds, so a pipe is never given back
            // with bytes in it.
            let loaded = takePipe(pipes, &report, keepMark) ? pipes.load(pipe!, rest) : 0
            fill += loaded
            if loaded < rest.count { held.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[loaded...])) }
        }
        return true
    }
}
