// The crash keep's pieces: fds parked in a socket's queue, the entries that name them, and how a
// previous process's queue and records are read back (the newest copy of an fd wins, ended relays'
// fds are dropped, a damaged record is refused, never trusted).
import Glibc
import Testing
@testable import TCPOpsPosix
@testable import TCPOpsRelay

@Suite struct CrashKeepTests {
    @Test func entriesRoundTrip() {
        let entries = [KeepEntry(role: .client, slot: 7, key: 1 << 40 | 5), KeepEntry(role: .pipeWrite, slot: 0, key: 19)]
        var bytes: [UInt8] = []
        for e in entries { e.append(to: &bytes) }
        #expect(bytes.count == 2 * KeepEntry.size)
        #expect(KeepEntry.parse(bytes) == entries)
        // A role no version wrote is skipped, not guessed.
        bytes[0] = 99
        #expect(KeepEntry.parse(bytes) == [entries[1]])
    }

    @Test func aParkedFileOutlivesItsSenderAndADroppedOneIsClosed() throws {
        let (send, receive) = try Parcel.pair()
        defer { closeFD(receive) }
        var p: [Int32] = [-1, -1]
        #expect(pipe(&p) == 0)
        #expect(Parcel.send(send, bytes: [1], fds: [p[1]]) == 0)
        #expect(Parcel.send(send, bytes: [2], fds: [p[1]]) == 0)
        closeFD(p[1])
        closeFD(send)  // the sender is gone: its messages stay
        // The first copy comes back and writes into the pipe.
        let first = try #require(Parcel.receive(receive, keepFDs: true))
        #expect(first.bytes == [1] && first.fds.count == 1)
        #expect(Glibc.write(first.fds[0], "x", 1) == 1)
        closeFD(first.fds[0])
        var c: UInt8 = 0
        #expect(Glibc.read(p[0], &c, 1) == 1 && c == UInt8(ascii: "x"))
        // The second is dropped unseen: the pipe's last writer is gone, its reader sees the end.
        #expect(Parcel.receive(receive, capacity: 1, keepFDs: false) != nil)
        #expect(Glibc.read(p[0], &c, 1) == 0)
        #expect(Parcel.receive(receive, keepFDs: true) == nil)
        closeFD(p[0])
    }

    /// A record at `slot` as RelayKeep.save writes it (the fields takeBack reads).
    private func record(_ file: SharedFile, slot: Int, client: UInt64, upstream: UInt64, phase: Relay.Phase = .relaying) {
        let p = file.base + slot * KeepRecord.size
        p.storeBytes(of: upstream, toByteOffset: KeepRecord.upstreamConid, as: UInt64.self)
        p.storeBytes(of: phase.rawValue, toByteOffset: KeepRecord.phase, as: UInt8.self)
        p.storeBytes(of: Int8(ConnectionState.ok.rawValue), toByteOffset: KeepRecord.clientState, as: Int8.self)
        p.storeBytes(of: Int8(ConnectionState.ok.rawValue), toByteOffset: KeepRecord.upstreamState, as: Int8.self)
        p.storeBytes(of: client, toByteOffset: KeepRecord.clientConid, as: UInt64.self)
    }

    private func socketPair() -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds)
        return (fds[0], fds[1])
    }

    private func inode(_ fd: Int32) -> ino_t {
        var st = stat()
        _ = fstat(fd, &st)
        return st.st_ino
    }

    @Test func takingBackMatchesFdsToRecordsNewestFirstAndRefusesWhatDoesNotFit() throws {
        let file = try SharedFile(name: "keep-test", size: 5 * KeepRecord.size)
        defer { file.close() }
        record(file, slot: 0, client: 5, upstream: 6)
        record(file, slot: 1, client: 9, upstream: 10, phase: .draining)  // not a phase a relay comes back in
        record(file, slot: 2, client: 11, upstream: 12)  // its upstream never came: refused
        record(file, slot: 3, client: 13, upstream: 14)  // a lifetime no relay has: refused, not trapped on
        (file.base + 3 * KeepRecord.size).storeBytes(of: UInt64.max, toByteOffset: KeepRecord.clientLifetime, as: UInt64.self)
        let (old, _) = socketPair(), (c, _) = socketPair(), (u, _) = socketPair(), (dead, _) = socketPair()
        let (d1, _) = socketPair(), (d2, _) = socketPair(), (lone, _) = socketPair(), (t1, _) = socketPair(), (t2, _) = socketPair()
        let older = try Parcel.pair(), newer = try Parcel.pair()
        func send(_ q: (send: Int32, receive: Int32), _ items: [(Int32, KeepEntry)]) {
            var bytes: [UInt8] = []
            for (_, e) in items { e.append(to: &bytes) }
            #expect(Parcel.send(q.send, bytes: bytes, fds: items.map(\.0)) == 0)
        }
        // An older shard holds a stale copy of the client and an ended relay's socket; the newer
        // shard the live copies (a compaction that a death interrupted leaves both).
        send(older, [(old, KeepEntry(role: .client, slot: 0, key: 5)), (dead, KeepEntry(role: .client, slot: 3, key: 77))])
        send(newer, [(c, KeepEntry(role: .client, slot: 0, key: 5)), (u, KeepEntry(role: .upstream, slot: 0, key: 6)),
                     (d1, KeepEntry(role: .client, slot: 1, key: 9)), (d2, KeepEntry(role: .upstream, slot: 1, key: 10)),
                     (lone, KeepEntry(role: .client, slot: 2, key: 11)),
                     (t1, KeepEntry(role: .client, slot: 3, key: 13)), (t2, KeepEntry(role: .upstream, slot: 3, key: 14))])
        let back = RelayKeep.takeBack(queues: [older.receive, newer.receive], records: file)
        #expect(back.relays.count == 1)
        let r = try #require(back.relays.first)
        #expect(r.clientConid == 5 && r.upstreamConid == 6)
        #expect(inode(r.clientFD) == inode(c) && inode(r.upstreamFD) == inode(u))
        #expect(back.broken.count == 3)
        #expect(back.broken.contains { $0.contains("conid 13") && $0.contains("times") })
        #expect(back.broken.contains { $0.contains("conid 9") && $0.contains("phase") })
        #expect(back.broken.contains { $0.contains("conid 11") && $0.contains("upstream socket did not come back") })
        #expect(back.strays == 2)  // the stale client copy and the ended relay's socket
        for fd in [r.clientFD, r.upstreamFD, old, c, u, dead, d1, d2, lone, t1, t2, older.send, older.receive, newer.send, newer.receive] { closeFD(fd) }
    }

    @Test func aConnectingRelayWhoseUpstreamWasNotParkedIsTakenBackToConnectAgain() throws {
        let file = try SharedFile(name: "keep-test", size: KeepRecord.size)
        defer { file.close() }
        record(file, slot: 0, client: 21, upstream: 0, phase: .connecting)
        let (c, _) = socketPair()
        let q = try Parcel.pair()
        var bytes: [UInt8] = []
        KeepEntry(role: .client, slot: 0, key: 21).append(to: &bytes)
        #expect(Parcel.send(q.send, bytes: bytes, fds: [c]) == 0)
        let back = RelayKeep.takeBack(queues: [q.receive], records: file)
        #expect(back.relays.count == 1 && back.relays[0].upstreamFD == -1 && back.broken.isEmpty)
        for fd in back.relays.map(\.clientFD) + [c, q.send, q.receive] { closeFD(fd) }
    }

    @Test func theHeaderCarriesItsCountersAndADamagedOneIsRefused() throws {
        let h = try KeepHeader()
        defer { h.file.close() }
        h.conidsReserved = 8192
        h.nextSeq = 77
        h.raised()
        h.raised()
        h.streamed(1)
        let back = try #require(KeepHeader(fd: dup(h.fd)))
        #expect(back.conidsReserved == 8192 && back.nextSeq == 77)
        #expect(back.takeUndelivered() == (stream: 1, hooks: 0))
        #expect(back.takeUndelivered() == (stream: 0, hooks: 0))  // counted once
        back.file.close()
        h.conidsReserved = 1 << 63  // would wrap the conid counter: not trusted
        #expect(KeepHeader(fd: dup(h.fd)) == nil)
    }

    @Test func aClientParkedAtItsAcceptWithoutARecordIsStartedAnewWhileAnEndedOneIsDropped() throws {
        let file = try SharedFile(name: "keep-test", size: 3 * KeepRecord.size)
        defer { file.close() }
        let lfd = try Socket.listen(SocketAddress(family: .v4, bytes: [127, 0, 0, 1], port: 0), backlog: 4)
        defer { closeFD(lfd) }
        let at = try #require(Socket.localAddress(lfd))
        func accepted() throws -> (mine: Int32, theirs: Int32) {
            let (mine, _) = try Socket.connect(at)
            for _ in 0..<1000 {
                if let (c, _) = try Socket.accept(lfd) { return (mine, c) }
                usleep(1000)
            }
            throw SystemError("accept", EAGAIN)
        }
        let alive = try accepted(), ended = try accepted(), bare = try accepted(), recorded = try accepted()
        Socket.shutdownBoth(ended.theirs)  // as a kept relay's end does
        // Slot 1 holds a relay recorded after its accept parked it (its entry names no conid), and
        // an older entry of the slot (an ended relay's) before it.
        record(file, slot: 1, client: 51, upstream: 52, phase: .connecting)
        let q = try Parcel.pair()
        var bytes: [UInt8] = []
        KeepEntry(role: .client, slot: 0, key: 41).append(to: &bytes)
        KeepEntry(role: .client, slot: 0, key: 40).append(to: &bytes)
        KeepEntry(role: .client, slot: 2, key: 0).append(to: &bytes)  // parked by its accept, no record yet
        KeepEntry(role: .client, slot: 1, key: 0).append(to: &bytes)  // the older one
        KeepEntry(role: .client, slot: 1, key: 0).append(to: &bytes)
        #expect(Parcel.send(q.send, bytes: bytes, fds: [alive.theirs, ended.theirs, bare.theirs, ended.theirs, recorded.theirs]) == 0)
        let back = RelayKeep.takeBack(queues: [q.receive], records: file)
        #expect(back.broken.isEmpty)
        #expect(back.relays.count == 1 && back.relays.first?.clientConid == 51 && back.relays.first?.upstreamFD == -1)
        #expect(inode(try #require(back.relays.first).clientFD) == inode(recorded.theirs))
        #expect(Set(back.accepted.map(\.conid)) == [41, 0] && back.strays == 2)
        for fd in back.accepted.map(\.fd) + back.relays.map(\.clientFD)
            + [alive.mine, alive.theirs, ended.mine, ended.theirs, bare.mine, bare.theirs, recorded.mine, recorded.theirs, q.send, q.receive] {
            closeFD(fd)
        }
    }
}
