// Restart without loss: systemd's fd store. At a restart each worker quiets its relays and stores
// both sockets of each (the oldest first, as many as the store holds), the conid counter beside
// them; at start the stored relays are adopted back, spread over the workers. Runs on the main
// thread; what touches a relay runs on its worker's.
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix
import TCPOpsRelay

final class FDStore {
    /// The store's size in fds (FDSTORE or TCPOPSD_FDSTORE).
    let size: Int
    private let logger: Logger
    private let shared: RelayShared
    /// The conid counter travels in the store as a name (`tn.NEXT`, on a placeholder fd), and with
    /// the number of relays stored once it is known (`tn.NEXT.STORED`): the next tcpopsd never hands
    /// out a conid again, and can tell when systemd refused some of the relays.
    private var conidMarker: String?
    private var workersHandedOver = 0

    /// What a previous tcpopsd left beside its relays: its conid counter (`tn.NEXT`) and, once it
    /// knew, how many relays it stored (`tn.NEXT.STORED`), each on a placeholder fd.
    struct Marker: Sendable {
        var nextConid: UInt64 = 0
        var stored: Int?
        /// Every marker's FDNAME, to be removed from the store.
        var names: [String] = []

        /// Reads one `tn.` name; false when it is not one.
        mutating func take(_ name: String) -> Bool {
            guard name.hasPrefix("tn.") else { return false }
            let parts = name.dropFirst(3).split(separator: ".", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), let next = UInt64(parts[0]) else { return false }
            if parts.count == 2 {
                guard let n = Int(parts[1]) else { return false }
                stored = max(stored ?? 0, n)
            }
            nextConid = max(nextConid, next)
            names.append(name)
            return true
        }
    }

    /// Whether an FDNAME is one the fd store's handover writes (a relay's side, a marker).
    static func isStored(_ name: String) -> Bool {
        var probe = Marker()
        return CarriedSide(name: name) != nil || probe.take(name)
    }

    /// The fds a previous tcpopsd stored, read from their names: the relays' sides, and the
    /// markers (their placeholder fds closed here; nil: none).
    static func read(_ stored: [(fd: Int32, name: String)]) -> (carried: [(fd: Int32, side: CarriedSide)], marker: Marker?) {
        var carried: [(fd: Int32, side: CarriedSide)] = []
        var marker = Marker()
        for (fd, name) in stored {
            if let side = CarriedSide(name: name) {
                carried.append((fd, side))
            } else {
                _ = marker.take(name)  // (isStored read it already)
                closeFD(fd)
            }
        }
        return (carried, marker.names.isEmpty ? nil : marker)
    }

    /// The fd store, when the unit hands relays over on a restart; nil: off.
    init?(logger: Logger, shared: RelayShared) {
        guard let size = FDStore.configuredSize else { return nil }
        self.size = size
        self.logger = logger
        self.shared = shared
    }

    /// The size of systemd's fd store for this service, when the unit hands relays over on a
    /// restart: the unit says it in TCPOPSD_FDSTORE (the same number as its
    /// FileDescriptorStoreMax=); systemd 254 and later say it in $FDSTORE, which wins. nil: off.
    static var configuredSize: Int? {
        guard getenv("NOTIFY_SOCKET") != nil, let v = getenv("TCPOPSD_FDSTORE"), let n = Int(String(cString: v)), n > 0 else { return nil }
        if let s = getenv("FDSTORE"), let real = Int(String(cString: s)), real >= 0 { return real }
        return n
    }

    /// The bytes of fd names a handover may store: LISTEN_FDNAMES= is one environment string,
    /// at most 131,072 bytes (the listeners' and the markers' names share it).
    static let namesBudget = 120_000

    /// How many relays the store can carry: two fds each, and one fd for the conid counter.
    var room: Int { FDStore.carryRoom(storeSize: size) }
    static func carryRoom(storeSize: Int) -> Int { max(0, storeSize - 1) / 2 }

    /// Says at start how many relays a restart carries (and warns when none).
    func announce(fdLimit: UInt64) {
        // A relay holds two fds (and a pipe's two while bytes are in flight): the fd limit's share.
        let fdRelays = Int(min(fdLimit, UInt64(Int.max))) / 2 - 64
        if room == 0 {
            logger.log(.warning, "TCPOPSD_FDSTORE=\(size): systemd's fd store of \(size) fd(s) carries no relay (two fds each, one for "
                       + "the conid counter): a restart closes every relay; set it to the unit's FileDescriptorStoreMax=", id: .started)
        } else {
            logger.log(room < fdRelays ? .notice : .info, "a restart carries up to \(room) relays in systemd's fd store (\(size) fds); "
                       + "more than that are closed at a restart (the oldest are carried)", id: .started,
                       [("TCPOPS_FDSTORE", String(size))])
        }
    }

    /// Rebuilds the relays a previous tcpopsd stored (spread over the workers, one after another),
    /// then asks systemd to drop its copies. `listener` finds the settings of a listener by name.
    static func adopt(_ carried: [(fd: Int32, side: CarriedSide)], marker: Marker?, workers: [RelayWorker], shared: RelayShared,
                      logger: Logger, listener: (String) -> ListenerSettings?) {
        if let next = marker?.nextConid, next > 0 { shared.adopted(last: next - 1) }
        for name in marker?.names ?? [] { Notify.send("FDSTOREREMOVE=1\nFDNAME=\(name)") }
        var byPair: [UInt64: [(fd: Int32, side: CarriedSide)]] = [:]
        for c in carried { byPair[c.side.clientConid, default: []].append(c) }
        // The previous tcpopsd stored more than came back whole: systemd refused the rest (its store
        // is smaller than TCPOPSD_FDSTORE says), and those clients were closed with nothing logged.
        let whole = byPair.values.filter { p in p.contains { $0.side.side == .client } && p.contains { $0.side.side == .upstream } }.count
        if let stored = marker?.stored, stored > whole {
            logger.log(.warning, "the previous tcpopsd stored \(stored) relay(s) in systemd's fd store but \(whole) came back: systemd "
                       + "refused the rest (its FileDescriptorStoreMax= is smaller than TCPOPSD_FDSTORE=; set both to the same number)",
                       id: .started, [("TCPOPS_STORED", String(stored)), ("TCPOPS_ADOPTED", String(whole))])
        }
        guard !carried.isEmpty else { return }
        var adopted = 0
        for (_, pair) in byPair.sorted(by: { $0.key < $1.key }) {
            let client = pair.first { $0.side.side == .client }
            let upstream = pair.first { $0.side.side == .upstream }
            if let client, let upstream, let l = listener(client.side.listener) {
                shared.adopted(last: max(client.side.clientConid, client.side.upstreamConid))
                workers[adopted % workers.count].post { w in Relay.adopt(ctx: w.ctx, listener: l, client: client, upstream: upstream) }
                adopted += 1
            } else {
                logger.log(.warning, "a relay stored by the previous tcpopsd cannot be adopted (\(pair.map(\.side.name).joined(separator: ", "))): closed")
                for p in pair { closeFD(p.fd) }
            }
            for p in pair { Notify.send("FDSTOREREMOVE=1\nFDNAME=\(p.side.name)") }
        }
        logger.log(.notice, "adopted \(adopted) relay(s) from the previous tcpopsd", id: .started, [("TCPOPS_ADOPTED", String(adopted))])
    }

    /// Quiets every relay, waits (briefly) until what tcpopsd holds is written out, stores both
    /// sockets of each in the fd store, and calls `done` on the main thread. Each worker hands over
    /// its own relays. The store holds only so many (FileDescriptorStoreMax=; systemd refuses the
    /// rest without telling the sender): past that, the oldest relays are carried (the lowest
    /// client conids: conids grow with time, across restarts too) and the others are closed as at
    /// a stop, counted in the log. Oldest, because a long-lived connection (a registered phone, an
    /// MQTT session) is the costly one to lose, and a young one is the likeliest to end on its own soon.
    func handOver(_ workers: [RelayWorker], relays: Int, shutdownTimeout: Double, done: @escaping () -> Void) {
        let deadline = Clock.monotonicNanoseconds() + min(shutdownTimeout, 5).nanoseconds
        let room = self.room
        logger.log(.notice, "stopping: handing \(relays) relay(s) to systemd's fd store (room for \(room))", id: .stopping)
        // The conid counter first, so that it has its place in the store whatever else fits; it is
        // replaced by the final count once the relays are stored.
        storeConidMarker(stored: nil)
        // Each relay stored by name costs its two names in LISTEN_FDNAMES, which the next tcpopsd
        // gets in its environment: one string of at most 128 KiB (MAX_ARG_STRLEN), past which systemd
        // cannot start it at all (E2BIG: measured at 3,000 relays). Kept relays (the crash keep) need
        // no names.
        let candidates = Locked<[(worker: Int, conid: UInt64, nameBytes: Int)]>([])
        everyWorker(workers, { w in
            let quiet = w.ctx.liveRelays.filter { $0.quiet() }
            candidates.withLock {
                $0 += quiet.map { r in (w.index, r.client.conid, r.keepSlot >= 0 ? 0 : r.carried.reduce(0) { $0 + $1.name.utf8.count + 1 }) }
            }
        }, then: { [self] in
            let all = candidates.withLock { $0 }.filter { $0.nameBytes > 0 }.sorted { $0.conid < $1.conid }
            var quota = [Int](repeating: 0, count: workers.count)
            var taken = 0, bytes = 0
            for c in all {
                // (idle times may gain a digit before they are stored: a margin under 128 KiB)
                guard taken < room, bytes + c.nameBytes <= FDStore.namesBudget else { break }
                quota[c.worker] += 1
                taken += 1
                bytes += c.nameBytes
            }
            let counts = Locked((stored: 0, overflow: 0))
            let main = workers[0]
            everyWorker(workers, { w in
                FDStore.handOver(w, deadline: deadline, quota: quota[w.index], room: room) { stored, overflow in
                    counts.withLock {
                        $0.stored += stored
                        $0.overflow += overflow
                    }
                    main.post { _ in self.workerHandedOver(counts.withLock { $0 }, workers: workers.count, done: done) }
                }
            }, then: {})
        })
    }

    /// A worker finished its handover (on the main thread); the last one ends it.
    private func workerHandedOver(_ counts: (stored: Int, overflow: Int), workers: Int, done: () -> Void) {
        workersHandedOver += 1
        guard workersHandedOver == workers else { return }
        storeConidMarker(stored: counts.stored)
        logger.log(.notice, "handed \(counts.stored) relay(s) to systemd's fd store", id: .stopping, [("TCPOPS_STORED", String(counts.stored))])
        if counts.overflow > 0 {
            logger.log(.warning, "\(counts.overflow) relay(s) did not fit in systemd's fd store (\(size) fds: room for "
                       + "\(room) relays), or in the names systemd passes to the next tcpopsd (LISTEN_FDNAMES, under 128 KiB: "
                       + "a few thousand relays), and were closed; the oldest were carried. "
                       + "crash_safe = true carries every relay without names", id: .stopping,
                       [("TCPOPS_NOT_CARRIED", String(counts.overflow)), ("TCPOPS_FDSTORE", String(size))])
        }
        done()
    }

    private func storeConidMarker(stored: Int?) {
        // At once, not through the notify thread: the new marker may need the old one's place.
        if let old = conidMarker { _ = Notify.send("FDSTOREREMOVE=1\nFDNAME=\(old)", fds: []) }
        conidMarker = nil
        let marker = Socket.placeholder()
        guard marker >= 0 else { return }
        let name = "tn.\(shared.peekNextConid)" + (stored.map { ".\($0)" } ?? "")
        if Notify.send("FDSTORE=1\nFDPOLL=0\nFDNAME=\(name)", fds: [marker]) { conidMarker = name }
        closeFD(marker)
    }

    /// On `w`'s thread: waits until each quieted relay is ready to carry (or the deadline), stores
    /// the `quota` oldest in the fd store (two fds each), closes the rest, and tells `done` how many
    /// it stored and how many it closed for want of room in the store.
    private static func handOver(_ w: RelayWorker, deadline: UInt64, quota: Int, room: Int, done: @escaping (Int, Int) -> Void) {
        let ctx = w.ctx
        func attempt() {
            let live = ctx.liveRelays
            if ctx.loop.now < deadline && !live.allSatisfy(\.readyToCarry) {
                ctx.loop.timers.schedule(at: ctx.loop.now + 20_000_000) { attempt() }
                return
            }
            var stored = 0, overflow = 0, kept = 0
            for r in live.sorted(by: { $0.client.conid < $1.client.conid }) {
                guard r.readyToCarry else {
                    r.end(failed: nil, reason: .local, why: "bytes still held at the handover deadline: closed")
                    continue
                }
                // Kept (the crash keep): its fds are parked already, its record is there; nothing
                // is stored, and the store's size does not bound it.
                if r.keepSlot >= 0 {
                    r.handedOver()
                    kept += 1
                    continue
                }
                guard stored < quota else {
                    overflow += 1
                    r.end(failed: nil, reason: .local, why: "no room in systemd's fd store (\(room) relays): closed at the restart")
                    continue
                }
                let sides = r.carried
                var done: [String] = []
                for s in sides where Notify.send("FDSTORE=1\nFDPOLL=0\nFDNAME=\(s.name)", fds: [s.fd]) { done.append(s.name) }
                if done.count == sides.count {
                    r.handedOver()
                    stored += 1
                } else {
                    for n in done { Notify.send("FDSTOREREMOVE=1\nFDNAME=\(n)") }
                    r.end(failed: nil, reason: .local, why: "the fd store refused it: closed")
                }
            }
            done(stored + kept, overflow)
        }
        attempt()
    }
}
