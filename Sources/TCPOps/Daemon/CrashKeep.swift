// The crash keep's place in the daemon (the keep itself: TCPOpsRelay/RelayKeep.swift). At start,
// on the main thread: the header a previous tcpopsd left in systemd's fd store (`kg`) is taken
// back (what it counted as raised but undelivered is reported), or made and stored; each worker
// gets a new keep (`kq.GEN.W`, `km.GEN.W` in the store); then every relay the previous keeps hold is
// rebuilt, spread over the workers, and once they are parked in the new keeps the old ones leave
// the store. A crash at any point of this leaves the old keeps in the store: the next start takes
// each relay once (the newest generation's copy).
import Glibc
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsLoop
import TCPOpsPosix
import TCPOpsRelay
import TCPOpsSystemd

final class CrashKeep {
    let header: KeepHeader
    private let logger: Logger
    /// What previous processes left: their keeps by generation and worker.
    private var old: [(generation: UInt64, worker: Int, queue: Int32?, records: Int32?, names: [String])] = []
    private(set) var keeps: [RelayKeep] = []

    /// Whether an fd store name is the keep's.
    static func claims(_ name: String) -> Bool { name == "kg" || name.hasPrefix("kq.") || name.hasPrefix("km.") }

    /// Takes what the fd store passed back; makes (and stores) a header when there was none.
    /// nil: the keep is off (`crash_safe = false`, or no fd store) and nothing was left: a keep
    /// left by a previous process is still taken back once when it is off.
    init?(stored: [(fd: Int32, name: String)], enabled: Bool, logger: Logger) {
        self.logger = logger
        var header: KeepHeader?
        var byKey: [String: (generation: UInt64, worker: Int, queue: Int32?, records: Int32?, names: [String])] = [:]
        for (fd, name) in stored {
            if name == "kg" {
                if header == nil, let h = KeepHeader(fd: fd) {
                    header = h
                } else {
                    logger.log(.warning, "the crash keep's header in systemd's fd store is not one tcpopsd can read: conids may repeat", id: .started)
                    closeFD(fd)
                    Notify.send("FDSTOREREMOVE=1\nFDNAME=kg")
                }
                continue
            }
            // kq.GEN.WORKER (the root queue), km.GEN.WORKER (the records).
            let parts = name.split(separator: ".")
            guard parts.count == 3, let g = UInt64(parts[1]), let w = Int(parts[2]) else {
                closeFD(fd)
                Notify.send("FDSTOREREMOVE=1\nFDNAME=\(name)")
                continue
            }
            let key = "\(g).\(w)"
            var entry = byKey[key] ?? (g, w, nil, nil, [])
            if parts[0] == "kq" { entry.queue = fd } else { entry.records = fd }
            entry.names.append(name)
            byKey[key] = entry
        }
        old = byKey.values.sorted { $0.generation > $1.generation }
        if header == nil && enabled {
            do {
                let h = try KeepHeader()
                if Notify.send("FDSTORE=1\nFDPOLL=0\nFDNAME=kg", fds: [h.fd]) {
                    header = h
                } else {
                    logger.log(.warning, "systemd's fd store refused the crash keep: relays will not survive a crash of tcpopsd", id: .started)
                    h.file.close()
                }
            } catch {
                logger.log(.warning, "no crash keep (\(error)): relays will not survive a crash of tcpopsd", id: .started)
            }
        }
        guard let header else {
            for o in old { [o.queue, o.records].compactMap { $0 }.forEach(closeFD) }
            return nil
        }
        self.header = header
        if enabled == false {
            logger.log(.info, "crash_safe = false: the relays a previous tcpopsd kept are taken back, new ones are not kept", id: .started)
        }
    }

    /// Reports what the previous process raised and could not deliver (a crash loses those).
    func reportUndelivered() {
        let (stream, hooks) = header.takeUndelivered()
        guard stream > 0 || hooks > 0 else { return }
        logger.log(.warning, "the previous tcpopsd ended with \(stream) event(s) not yet delivered to the event stream and \(hooks) "
                   + "hook run(s) queued but not started: those are lost (the stream's seq continues after them)", id: .started,
                   [("TCPOPS_LOST_EVENTS", String(stream)), ("TCPOPS_LOST_HOOKS", String(hooks))])
    }

    /// Gives every worker a keep of its own (stored in the fd store), on its thread.
    func install(_ workers: [RelayWorker], relays: Int) {
        let generation = header.nextGeneration()
        for w in workers {
            do {
                let keep = try RelayKeep(generation: generation, worker: w.index, relays: relays, header: header, loop: w.loop, logger: logger)
                let names = RelayKeep.names(generation: generation, worker: w.index)
                guard Notify.send("FDSTORE=1\nFDPOLL=0\nFDNAME=\(names.queue)", fds: [keep.queue]),
                      Notify.send("FDSTORE=1\nFDPOLL=0\nFDNAME=\(names.records)", fds: [keep.records.fd]) else {
                    Notify.send("FDSTOREREMOVE=1\nFDNAME=\(names.queue)")
                    keep.close()
                    logger.log(.warning, "systemd's fd store refused worker \(w.index)'s crash keep: its relays will not survive a crash", id: .started)
                    continue
                }
                keeps.append(keep)
                w.post { $0.ctx.install(keep: keep) }
            } catch {
                logger.log(.warning, "no crash keep for worker \(w.index) (\(error)): its relays will not survive a crash", id: .started)
            }
        }
    }

    /// Rebuilds the relays previous processes kept, spread over the workers; the old keeps leave
    /// the store once the relays are parked in the new ones. `listener` finds a listener's
    /// settings by its name's hash.
    /// `listenerAt` finds the listener a client reached by its local address (for clients parked at
    /// their accept, before their relay was recorded).
    func takeBack(_ workers: [RelayWorker], listener: @escaping (UInt64) -> ListenerSettings?,
                  listenerAt: @escaping (SocketAddress) -> ListenerSettings?) {
        guard !old.isEmpty else { return }
        let started = Clock.monotonicNanoseconds()
        var seen = Set<UInt64>()
        var taken: [KeptRelay] = []
        var broken: [String] = []
        var strays = 0
        var accepted: [(fd: Int32, conid: UInt64)] = []
        var unknown = 0
        for o in old {
            guard let q = o.queue, let m = o.records, let file = try? SharedFile(fd: m, minimum: KeepRecord.size) else {
                // Without its records nothing it parked can be placed: dropped (and closed by the kernel).
                broken.append("keep \(o.generation).\(o.worker) came back incomplete")
                if let q = o.queue { while Parcel.receive(q, capacity: 1, keepFDs: false) != nil {} }
                if let m = o.records { closeFD(m) }
                continue
            }
            let back = RelayKeep.takeBack(root: q, records: file)
            file.close()  // (closes `m`)
            broken += back.broken
            strays += back.strays
            accepted += back.accepted
            for k in back.relays {
                // The newest generation's copy of a relay wins (a crash while taking back leaves two).
                guard seen.insert(k.clientConid).inserted else {
                    for fd in k.fds { closeFD(fd) }
                    continue
                }
                taken.append(k)
            }
        }
        var placed: [[(KeptRelay, ListenerSettings)]] = Array(repeating: [], count: workers.count)
        for (i, k) in taken.enumerated() {
            guard let l = listener(k.listenerHash) else {
                unknown += 1
                k.discard()
                continue
            }
            placed[i % workers.count].append((k, l))
        }
        // Clients accepted just before the death, their relays not begun: begun now (new conids:
        // nobody saw theirs).
        var fresh: [[(Int32, ListenerSettings, SocketAddress?)]] = Array(repeating: [], count: workers.count)
        for (i, a) in accepted.enumerated() {
            let local = Socket.localAddress(a.fd)
            guard let local, let l = listenerAt(local) else {
                unknown += 1
                Socket.shutdownBoth(a.fd)
                closeFD(a.fd)
                continue
            }
            fresh[i % workers.count].append((a.fd, l, local))
        }
        for b in broken.prefix(20) { logger.log(.warning, "a relay kept by the previous tcpopsd cannot be taken back: \(b); closed", id: .started) }
        if unknown > 0 {
            logger.log(.warning, "\(unknown) relay(s) kept by the previous tcpopsd belong to a listener no longer configured: closed", id: .started)
        }
        let jobs = placed.map { Handoff($0) }
        let starts = fresh.map { Handoff($0) }
        let revived = Locked(0)
        let names = old.flatMap(\.names)
        // The queues, closed once their relays are parked anew (the record files are closed already).
        let oldFDs = old.compactMap(\.queue)
        old = []
        everyWorker(workers, { w in
            var n = 0
            for (k, l) in jobs[w.index].value {
                if Relay.revive(ctx: w.ctx, listener: l, kept: k) { n += 1 }
            }
            for (fd, l, local) in starts[w.index].value {
                Socket.adoptFD(fd)
                Relay.start(ctx: w.ctx, listener: l, metrics: w.ctx.metrics.listener(l.name), clientFD: fd, local: local,
                            remote: Socket.peerAddress(fd))
                n += 1
            }
            w.ctx.keep?.flush()
            revived.withLock { $0 += n }
        }, then: { [logger] in
            for name in names { Notify.send("FDSTOREREMOVE=1\nFDNAME=\(name)") }
            for fd in oldFDs { closeFD(fd) }
            let n = revived.withLock { $0 }
            let ms = (Clock.monotonicNanoseconds() - started) / 1_000_000
            logger.log(.notice, "took back \(n) relay(s) kept by the previous tcpopsd in \(ms) ms (\(broken.count + unknown) closed, "
                       + "\(strays) parked fds of ended relays dropped)", id: .started,
                       [("TCPOPS_ADOPTED", String(n)), ("TCPOPS_DURATION_MS", String(ms))])
        })
    }
}
