// The crash keep: what lets the next tcpopsd carry on every relay, byte and counter after this one
// died any death (SIGKILL, a segfault, a watchdog abort, the OOM killer), with nothing to do at
// the moment of death.
//
// - The sockets (and the splice pipes, whose bytes are the relay's) are parked in the receive
//   queue of a unix socket pair (SCM_RIGHTS): a file in flight stays open while its message
//   waits, whoever sent it. The queue's reading end is in systemd's fd store (a few fds a worker,
//   not two a relay: a store costs PID 1 work for every fd already stored, measured in
//   docs/benchmarks.md). A relay's fds are parked once, when its upstream socket is made (batched
//   per loop turn); a pipe's when the pool makes it. A queue holds what its sender's buffer
//   allows (net.core.wmem_max, ~18 bytes a parked fd in full messages): when one is full a new
//   pair (a shard) is made.
// - What changes (phase, conids, lifetimes and last activity, FINs passed, events raised, which pipe
//   holds which direction's bytes) is a fixed-size record in a memory file (memfd, also in the fd
//   store), written in place: at each call's settle point, and where a crash in between would lose
//   or repeat something (a pipe taken or given back, an event raised) at once.
// - Parked copies keep a connection open after tcpopsd's close(), so a kept connection that ends
//   any way but both FINs passed is shut down (or aborted) first. Parked copies of ended relays are
//   dropped by a compaction once the dead outnumber the live: the live ones are parked again in a
//   new shard, then the old shards leave the root and are closed (the kernel drops what only they
//   held). A crash in between leaves both: the next process takes each relay once, its newest copy.
// - The shards' reading ends are themselves parked, in a root pair's queue: only the root is in
//   systemd's fd store, so that a new shard or a compaction costs PID 1 nothing (a store or a
//   removal costed it milliseconds, ~10 µs a relay at 6,000 relays a second).
// - The bytes in flight are in the kernel: a kept relay splices everything (no copy through
//   memory), so a byte is always in exactly one of the source socket, the pipe and the destination.
import CShims
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsLoop
import TCPOpsPosix
import TCPOpsSystemd

/// The process-wide part of the keep (memfd `kg`, one page): counters that must continue.
public final class KeepHeader: @unchecked Sendable {
    package let file: SharedFile
    static let magic: UInt64 = 0x7463_706f_7073_6b67  // "tcpopskg"
    static let size = 4096
    // Offsets of its words.
    static let magicAt = 0, generationAt = 8, conidsReservedAt = 16, nextSeqAt = 24, raisedAt = 32, streamedAt = 40
    static let hooksQueuedAt = 48, hooksStartedAt = 56

    /// A new header (first start).
    public init() throws(SystemError) {
        file = try SharedFile(name: "tcpopsd-keep", size: KeepHeader.size)
        file.u64(KeepHeader.magicAt).pointee = KeepHeader.magic
    }

    /// The header a previous tcpopsd left (nil: not one).
    public init?(fd: Int32) {
        guard let f = try? SharedFile(fd: fd, minimum: KeepHeader.size) else { return nil }
        // Counters past 2^62 are damage, not history: continuing from them would wrap.
        let sane = [KeepHeader.conidsReservedAt, KeepHeader.nextSeqAt, KeepHeader.generationAt].allSatisfy { f.u64($0).pointee < 1 << 62 }
        guard f.u64(KeepHeader.magicAt).pointee == KeepHeader.magic, sane else {
            f.close()
            return nil
        }
        file = f
    }

    public var fd: Int32 { file.fd }

    func load(_ at: Int) -> UInt64 { tcpops_load_u64(file.u64(at)) }
    func store(_ at: Int, _ v: UInt64) { tcpops_store_u64(file.u64(at), v) }
    func add(_ at: Int, _ v: UInt64) { _ = tcpops_fetch_add_u64(file.u64(at), v) }

    /// A new generation number for this process's keeps (names in the fd store).
    public func nextGeneration() -> UInt64 {
        let g = load(KeepHeader.generationAt) + 1
        store(KeepHeader.generationAt, g)
        return g
    }

    /// Conids below this were (or may have been) handed out.
    public var conidsReserved: UInt64 {
        get { load(KeepHeader.conidsReservedAt) }
        set { store(KeepHeader.conidsReservedAt, newValue) }
    }

    /// The event stream's next seq.
    public var nextSeq: UInt64 {
        get { load(KeepHeader.nextSeqAt) }
        set { store(KeepHeader.nextSeqAt, newValue) }
    }

    /// Events raised (by every worker, every process) and numbered for the stream.
    public func raised() { add(KeepHeader.raisedAt, 1) }
    public func streamed(_ n: UInt64) { add(KeepHeader.streamedAt, n) }
    public func hookQueued() { add(KeepHeader.hooksQueuedAt, 1) }
    public func hookStarted() { add(KeepHeader.hooksStartedAt, 1) }

    /// Events a previous process raised but did not number for the stream, and hook runs it queued
    /// but did not start; the counters are evened out (counting goes on from here).
    public func takeUndelivered() -> (stream: UInt64, hooks: UInt64) {
        let raised = load(KeepHeader.raisedAt), streamed = load(KeepHeader.streamedAt)
        let queued = load(KeepHeader.hooksQueuedAt), started = load(KeepHeader.hooksStartedAt)
        store(KeepHeader.streamedAt, raised)
        store(KeepHeader.hooksStartedAt, queued)
        return (raised > streamed ? raised - streamed : 0, queued > started ? queued - started : 0)
    }
}

/// One relay's record in a worker's keep file (offsets in bytes; 0 in clientConid: free).
package enum KeepRecord {
    package static let size = 192
    static let clientConid = 0, upstreamConid = 8, clientOpenedAt = 16, upstreamOpenedAt = 24
    static let clientActivity = 32, upstreamActivity = 40, clientLifetime = 48, upstreamLifetime = 56
    static let clientIn = 64, clientOut = 72, upstreamIn = 80, upstreamOut = 88, listenerHash = 96
    static let pipeToUpstream = 104, pipeToClient = 108, attempt = 112
    static let phase = 116, clientReason = 117, upstreamReason = 118, clientState = 119, upstreamState = 120
    static let flags = 124
    static let proxiedRemote = 128, proxiedLocal = 148  // 20 bytes each: family (4/6), 0, port (2), 16 address bytes

    // Flags.
    static let clientEvents: UInt32 = 1, upstreamEvents: UInt32 = 2, toUpstreamEOF: UInt32 = 4, toUpstreamShut: UInt32 = 8
    static let toClientEOF: UInt32 = 16, toClientShut: UInt32 = 32, clientRaised: UInt32 = 64, upstreamRaised: UInt32 = 128
    static let proxied: UInt32 = 256, balancerOwn: UInt32 = 512, toUpstreamBulk: UInt32 = 1024, toClientBulk: UInt32 = 2048

    /// FNV-1a of a listener's name: how a record names its listener.
    package static func hash(_ name: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return h
    }
}

/// What a parked fd is, in the message that carries it (16 bytes each, in the fds' order).
package struct KeepEntry: Equatable, Sendable {
    package enum Role: UInt8, Sendable { case client = 1, upstream = 2, pipeRead = 3, pipeWrite = 4, shard = 5 }
    package var role: Role
    /// The record's slot (sockets), unused for pipes.
    package var slot: UInt32
    /// The socket's conid; for a pipe, its read end's fd number in the process that parked it.
    package var key: UInt64

    static let size = 16

    package func append(to bytes: inout [UInt8]) {
        bytes.append(role.rawValue)
        bytes.append(contentsOf: [0, 0, 0])
        withUnsafeBytes(of: slot.littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: key.littleEndian) { bytes.append(contentsOf: $0) }
    }

    package static func parse(_ bytes: [UInt8]) -> [KeepEntry] {
        var out: [KeepEntry] = []
        var i = 0
        while i + size <= bytes.count {
            if let role = Role(rawValue: bytes[i]) {
                var slot: UInt32 = 0, key: UInt64 = 0
                for k in 0..<4 { slot |= UInt32(bytes[i + 4 + k]) << (8 * k) }
                for k in 0..<8 { key |= UInt64(bytes[i + 8 + k]) << (8 * k) }
                out.append(KeepEntry(role: role, slot: slot, key: key))
            }
            i += size
        }
        return out
    }
}

/// One worker's keep: its root and parking queues (shards), and its record file.
public final class RelayKeep: TurnEndHandler {
    public let generation: UInt64
    public let worker: Int
    /// A socket pair whose queue parks fds.
    private struct Pair {
        let send: Int32
        let receive: Int32
    }
    /// The root: its queue holds the shards' reading ends (oldest first); its reading end is in
    /// systemd's fd store as `kq.GEN.WORKER`.
    private let root: Pair
    private var shards: [Pair] = []
    /// The records: in the fd store as `km.GEN.WORKER`.
    package let records: SharedFile
    public let header: KeepHeader
    private let capacity: Int
    private var freeSlots: [Int32] = []
    private var nextSlot: Int32 = 0
    private var pending: [(fd: Int32, entry: KeepEntry)] = []
    private var pendingArmed = false
    /// Fds parked, and of those the fds of ended relays and closed pipes.
    private var parked = 0
    private var dead = 0
    /// Pipes made while this keep ran, by read end (parked with both ends).
    private var pipes: [Int32: PipePool.Pipe] = [:]
    private unowned(unsafe) let loop: EventLoop
    private let logger: Logger
    /// Parking that failed (logged, rate-limited): those relays would not survive a crash.
    public private(set) var unkept: UInt64 = 0
    private var lastFailureLog: UInt64 = 0
    /// Every live relay of this worker (for a compaction): set by the worker.
    package var liveRelays: () -> [Relay] = { [] }

    /// The fd store names of the root's reading end and of the record file.
    public static func names(generation: UInt64, worker: Int) -> (queue: String, records: String) {
        ("kq.\(generation).\(worker)", "km.\(generation).\(worker)")
    }

    /// The root's reading end: to be stored (as `names.queue`).
    public var queue: Int32 { root.receive }

    /// A keep with room for `relays` records (the file is sparse: only records in use cost memory)
    /// and its first shard.
    public init(generation: UInt64, worker: Int, relays: Int, header: KeepHeader, loop: EventLoop, logger: Logger) throws(SystemError) {
        self.generation = generation
        self.worker = worker
        self.header = header
        self.loop = loop
        self.logger = logger
        capacity = max(1024, relays)
        let r = try Parcel.pair()
        root = Pair(send: r.send, receive: r.receive)
        do {
            records = try SharedFile(name: "tcpopsd-keep-\(worker)", size: capacity * KeepRecord.size)
        } catch {
            closeFD(root.send)
            closeFD(root.receive)
            throw error
        }
        if let e = openShard() {
            close()
            throw e
        }
    }

    /// A new shard, its reading end parked in the root (after the others); nil, or why not.
    private func openShard() -> SystemError? {
        let pair: (send: Int32, receive: Int32)
        do {
            pair = try Parcel.pair()
        } catch {
            return error
        }
        Parcel.growSendBuffer(pair.send)
        var bytes: [UInt8] = []
        KeepEntry(role: .shard, slot: 0, key: 0).append(to: &bytes)
        let err = Parcel.send(root.send, bytes: bytes, fds: [pair.receive])
        guard err == 0 else {
            closeFD(pair.send)
            closeFD(pair.receive)
            return SystemError("sendmsg", err)
        }
        shards.append(Pair(send: pair.send, receive: pair.receive))
        return nil
    }

    /// Shards now (for tests and stats).
    public var shardCount: Int { shards.count }

    /// Closes the keep (a clean stop: systemd drops its copies too).
    public func close() {
        for p in shards + [root] {
            closeFD(p.send)
            closeFD(p.receive)
        }
        shards = []
        records.close()
    }

    @inline(__always) func at(_ slot: Int32, _ offset: Int) -> UnsafeMutableRawPointer {
        records.base + Int(slot) * KeepRecord.size + offset
    }

    // MARK: relays

    /// Where the next accept parks its client (tcpops_accept_parked): the newest shard's sending
    /// end and a record slot taken for it (given back by `unreserve` when nothing was accepted).
    package func acceptTarget() -> (park: Int32, slot: Int32)? {
        guard let shard = shards.last, let slot = takeSlot() else { return nil }
        return (shard.send, slot)
    }

    package func unreserve(_ slot: Int32) { freeSlots.append(slot) }

    /// The accept parked its client (in the slot taken for it; its entry names no conid: the
    /// record, written next, does).
    package func acceptParked() { parked += 1 }

    /// The accept could not park its client (the shard was full, say): parked here instead.
    package func parkAccepted(_ fd: Int32, slot: Int32) {
        park(fd, KeepEntry(role: .client, slot: UInt32(slot), key: 0))
        flush()
    }

    /// An accepted and parked client was refused (max_connections): its slot is free again, its
    /// parked copy dead.
    package func refused(slot: Int32) {
        freeSlots.append(slot)
        died(1)
    }

    /// A client was just accepted: its socket is parked at once (with whatever else waits), so
    /// that a death from here on cannot reset it; the next tcpopsd connects its upstream if this
    /// one did not get that far. False: no room (it runs unkept).
    @discardableResult
    package func admitClient(_ r: Relay) -> Bool {
        guard r.keepSlot < 0, r.client.fdOpen, let slot = takeSlot() else { return false }
        r.keepSlot = slot
        save(r)
        park(r.client.fd, KeepEntry(role: .client, slot: UInt32(slot), key: r.client.conid))
        flush()
        return true
    }

    /// A relay's upstream socket was made (the first attempt, or a later one): it is parked (with
    /// the client's, if the client was not parked at its accept) and the record written. False: no
    /// room (it runs unkept).
    @discardableResult
    package func admit(_ r: Relay) -> Bool {
        guard let up = r.upstream, up.fdOpen else { return false }
        if r.keepSlot < 0 {
            guard let slot = takeSlot() else { return false }
            r.keepSlot = slot
            park(r.client.fd, KeepEntry(role: .client, slot: UInt32(slot), key: r.client.conid))
        }
        park(up.fd, KeepEntry(role: .upstream, slot: UInt32(r.keepSlot), key: up.conid))
        save(r)
        return true
    }

    private func takeSlot() -> Int32? {
        guard let slot = freeSlots.popLast() ?? (Int(nextSlot) < capacity ? nextSlot : nil) else {
            failed("no room for more than \(capacity) relays in the keep")
            return nil
        }
        if slot == nextSlot { nextSlot += 1 }
        return slot
    }

    /// The relay ended: its record is freed; its parked fds are dead (dropped by a compaction).
    package func release(_ r: Relay, parkedFDs: Int) {
        guard r.keepSlot >= 0 else { return }
        at(r.keepSlot, KeepRecord.clientConid).storeBytes(of: 0, as: UInt64.self)
        at(r.keepSlot, KeepRecord.pipeToUpstream).storeBytes(of: 0, as: Int32.self)
        at(r.keepSlot, KeepRecord.pipeToClient).storeBytes(of: 0, as: Int32.self)
        freeSlots.append(r.keepSlot)
        r.keepSlot = -1
        died(parkedFDs)
    }

    /// An upstream attempt's socket was closed (its parked copy is dead).
    package func attemptClosed() { died(1) }

    private func died(_ n: Int) {
        dead += n
        if dead > max(512, parked - dead) { armTurnEnd() }
    }

    /// Where the record keeps which pipe holds a direction's bytes (written the moment a pipe is
    /// taken or given back: a crash between a splice and the settle point must not lose them).
    @inline(__always) package func pipeMark(_ r: Relay, _ way: Relay.Way) -> UnsafeMutablePointer<Int32> {
        at(r.keepSlot, way == .toUpstream ? KeepRecord.pipeToUpstream : KeepRecord.pipeToClient).assumingMemoryBound(to: Int32.self)
    }

    /// Writes what may have changed of the relay into its record.
    package func save(_ r: Relay) {
        let s = r.keepSlot
        guard s >= 0 else { return }
        let c = r.client
        func put(_ o: Int, _ v: UInt64) { at(s, o).storeBytes(of: v, as: UInt64.self) }
        put(KeepRecord.upstreamConid, r.upstream?.conid ?? 0)
        put(KeepRecord.clientOpenedAt, c.openedAt)
        put(KeepRecord.clientActivity, c.lastActivity)
        put(KeepRecord.clientLifetime, c.lifetime)
        put(KeepRecord.clientIn, c.bytesIn)
        put(KeepRecord.clientOut, c.bytesOut)
        if let u = r.upstream {
            put(KeepRecord.upstreamOpenedAt, u.openedAt)
            put(KeepRecord.upstreamActivity, u.lastActivity)
            put(KeepRecord.upstreamLifetime, u.lifetime)
            put(KeepRecord.upstreamIn, u.bytesIn)
            put(KeepRecord.upstreamOut, u.bytesOut)
        }
        put(KeepRecord.listenerHash, KeepRecord.hash(r.listener.name))
        at(s, KeepRecord.attempt).storeBytes(of: Int32(r.attempt), as: Int32.self)
        at(s, KeepRecord.phase).storeBytes(of: r.phase.rawValue, as: UInt8.self)
        at(s, KeepRecord.clientReason).storeBytes(of: RelayKeep.code(c.closeReason), as: UInt8.self)
        at(s, KeepRecord.upstreamReason).storeBytes(of: RelayKeep.code(r.upstream?.closeReason), as: UInt8.self)
        at(s, KeepRecord.clientState).storeBytes(of: Int8(c.state.rawValue), as: Int8.self)
        at(s, KeepRecord.upstreamState).storeBytes(of: Int8(r.upstream?.state.rawValue ?? 0), as: Int8.self)
        var f: UInt32 = 0
        if c.eventsEnabled { f |= KeepRecord.clientEvents }
        if r.upstream?.eventsEnabled == true { f |= KeepRecord.upstreamEvents }
        if r.toUpstream.eof { f |= KeepRecord.toUpstreamEOF }
        if r.toUpstream.shut { f |= KeepRecord.toUpstreamShut }
        if r.toClient.eof { f |= KeepRecord.toClientEOF }
        if r.toClient.shut { f |= KeepRecord.toClientShut }
        if c.raisedEvent { f |= KeepRecord.clientRaised }
        if r.upstream?.raisedEvent == true { f |= KeepRecord.upstreamRaised }
        if c.balancerOwn { f |= KeepRecord.balancerOwn }
        if r.toUpstream.bulk { f |= KeepRecord.toUpstreamBulk }
        if r.toClient.bulk { f |= KeepRecord.toClientBulk }
        if r.listener.acceptProxy, !c.balancerOwn, let remote = c.remote, let local = c.local {
            f |= KeepRecord.proxied
            RelayKeep.write(remote, at(s, KeepRecord.proxiedRemote))
            RelayKeep.write(local, at(s, KeepRecord.proxiedLocal))
        }
        at(s, KeepRecord.flags).storeBytes(of: f, as: UInt32.self)
        // Last: the record is live once its conid is there.
        put(KeepRecord.clientConid, c.conid)
    }

    /// `allCases` once: the synthesized property makes an array at each use, and `save` runs at
    /// every settle point.
    private static let reasons = CloseReason.allCases

    static func code(_ r: CloseReason?) -> UInt8 {
        guard let r, let i = reasons.firstIndex(of: r) else { return 0 }
        return UInt8(i + 1)
    }

    static func reason(_ code: UInt8) -> CloseReason? {
        code == 0 || Int(code) > reasons.count ? nil : reasons[Int(code) - 1]
    }

    static func write(_ a: SocketAddress, _ p: UnsafeMutableRawPointer) {
        p.storeBytes(of: a.family == .v4 ? 4 : 6, as: UInt8.self)
        p.storeBytes(of: a.port, toByteOffset: 2, as: UInt16.self)
        let bytes = a.bytes
        for i in 0..<16 { p.storeBytes(of: i < bytes.count ? bytes[i] : 0, toByteOffset: 4 + i, as: UInt8.self) }
    }

    static func read(_ p: UnsafeRawPointer) -> SocketAddress? {
        let family = p.load(as: UInt8.self)
        guard family == 4 || family == 6 else { return nil }
        let port = p.load(fromByteOffset: 2, as: UInt16.self)
        let bytes = (0..<(family == 4 ? 4 : 16)).map { p.load(fromByteOffset: 4 + $0, as: UInt8.self) }
        return SocketAddress(family: family == 4 ? .v4 : .v6, bytes: bytes, port: port)
    }

    // MARK: pipes

    /// The pool made a pipe: parked at once (bytes may go into it before the turn ends).
    package func pipeMade(_ p: PipePool.Pipe) {
        pipes[p.read] = p
        park(p.read, KeepEntry(role: .pipeRead, slot: 0, key: UInt64(p.read)))
        park(p.write, KeepEntry(role: .pipeWrite, slot: 0, key: UInt64(p.read)))
        flush()
    }

    package func pipeClosed(_ p: PipePool.Pipe) {
        guard pipes.removeValue(forKey: p.read) != nil else { return }
        died(2)
    }

    /// A pipe that came back from a previous process, now this keep's (parked at the next flush).
    package func pipeAdopted(_ p: PipePool.Pipe) {
        pipes[p.read] = p
        park(p.read, KeepEntry(role: .pipeRead, slot: 0, key: UInt64(p.read)))
        park(p.write, KeepEntry(role: .pipeWrite, slot: 0, key: UInt64(p.read)))
    }

    // MARK: parking

    private func park(_ fd: Int32, _ e: KeepEntry) {
        pending.append((fd, e))
        armTurnEnd()
    }

    private func armTurnEnd() {
        guard !pendingArmed else { return }
        pendingArmed = true
        loop.atTurnEnd(self)
    }

    public func turnEnded() {
        pendingArmed = false
        flush()
        if dead > max(512, parked - dead) { compact() }
    }

    /// Sends what waits to be parked (an accept batch's relays: one message for up to 126).
    package func flush() {
        guard !pending.isEmpty else { return }
        let batch = pending
        pending.removeAll(keepingCapacity: true)
        if send(batch) { return }
        // The queue is full, or too many fds are in flight: drop the dead, then try once more.
        compact()
    }

    /// Sends entries in messages of at most Parcel.maxFDs fds, into the newest shard (a new one
    /// when it is full); false at the first that fails.
    private func send(_ entries: [(fd: Int32, entry: KeepEntry)]) -> Bool {
        var i = 0
        var fresh = false
        while i < entries.count {
            guard let shard = shards.last else { return false }
            let chunk = entries[i..<min(entries.count, i + Parcel.maxFDs)]
            var bytes: [UInt8] = []
            bytes.reserveCapacity(chunk.count * KeepEntry.size)
            for c in chunk { c.entry.append(to: &bytes) }
            let err = Parcel.send(shard.send, bytes: bytes, fds: chunk.map(\.fd))
            if err == EAGAIN || err == ENOBUFS, !fresh {
                // This shard's buffer is full: the next one.
                if let e = openShard() {
                    lastError = e.errno
                    return false
                }
                fresh = true
                continue
            }
            if err != 0 {
                lastError = err
                return false
            }
            fresh = false
            parked += chunk.count
            i += chunk.count
        }
        return true
    }

    private var lastError: Int32 = 0

    /// Parks every live relay's fds and every pipe in a new shard, then takes the old shards out
    /// of the root and closes them (the kernel drops what only they held). A crash in between
    /// leaves both: the next process takes each relay once.
    package func compact() {
        pending.removeAll(keepingCapacity: true)
        var live: [(fd: Int32, entry: KeepEntry)] = []
        for r in liveRelays() where r.keepSlot >= 0 {
            if r.client.fdOpen { live.append((r.client.fd, KeepEntry(role: .client, slot: UInt32(r.keepSlot), key: r.client.conid))) }
            if let u = r.upstream, u.fdOpen { live.append((u.fd, KeepEntry(role: .upstream, slot: UInt32(r.keepSlot), key: u.conid))) }
        }
        for p in pipes.values {
            live.append((p.read, KeepEntry(role: .pipeRead, slot: 0, key: UInt64(p.read))))
            live.append((p.write, KeepEntry(role: .pipeWrite, slot: 0, key: UInt64(p.read))))
        }
        let old = shards
        shards = []
        if let e = openShard() {
            shards = old  // the old ones stay: better the dead kept than the live lost
            failed("a new shard for a compaction: \(e)")
            return
        }
        parked = 0
        let sent = send(live)
        // The root holds the old shards first, then the new ones: the old ones' messages go (the
        // kernel drops those copies of their reading ends), then our own ends are closed.
        for _ in old where Parcel.receive(root.receive, capacity: 1, keepFDs: false) != nil {}
        for p in old {
            closeFD(p.send)
            closeFD(p.receive)
        }
        dead = 0
        if !sent {
            failed("parking \(live.count) fds failed: \(errnoName(lastError))")
        }
    }

    private func failed(_ why: String) {
        unkept += 1
        let now = loop.now
        if lastFailureLog == 0 || now - lastFailureLog >= 5_000_000_000 {
            lastFailureLog = now
            logger.log(.warning, "crash keep: \(why); relays not kept would not survive a crash of tcpopsd",
                       [("TCPOPS_UNKEPT", String(unkept))])
        }
    }

    /// Fds parked now, and of those dead (for tests and stats).
    public var parkedCount: (fds: Int, dead: Int) { (parked, dead) }
}
