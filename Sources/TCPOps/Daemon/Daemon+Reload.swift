// Reload on SIGHUP: the file is read and resolved off the main thread, the listening sockets are
// reconciled (ListenerReconciliation), and one new configuration generation goes to every part.
import TCPOpsConfig
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsPosix
import TCPOpsRelay

extension Daemon {
    /// Brings the listening sockets to `wanted` (ListenerReconciliation says how, without
    /// refusing or resetting a client), logs each step, and retires the old sockets no listener
    /// keeps (their accept queues relayed first). Returns what could not be applied, one line each.
    private func applyListeners(_ wanted: [ListenerSettings], unusable: [String: String] = [:]) -> [String] {
        let workers = self.workers
        let plan = ListenerReconciliation<ListenerGroup>(current: listeners.mapValues { ($0, $0.settings) }, wanted: wanted,
                                                         unusable: unusable) { [unowned self] s in
            let g = try ListenerGroup(settings: s, workers: workers)
            storeListening(g.fd, s.listen)
            return g
        }
        for step in plan.steps {
            switch step {
            case let .kept(s, changed):
                plan.next[s.name]?.group.update(s)
                if changed {
                    logger.log(.info, "listener \"\(s.name)\" on \(s.listen): new settings apply to new connections", id: .listener,
                               [("TCPOPS_LISTENER", s.name), ("TCPOPS_LOCAL", s.listen.description)])
                }
            case let .bound(s):
                logger.log(.info, "listening on \(s.listen) for \"\(s.name)\", relaying to \(s.upstreamText)", id: .listener,
                           [("TCPOPS_LISTENER", s.name), ("TCPOPS_LOCAL", s.listen.description)])
            case let .failed(name, listen, line, _):
                logger.log(.error, "reload: \(line)", id: .listener, [("TCPOPS_LISTENER", name)] + (listen.map { [("TCPOPS_LOCAL", $0.description)] } ?? []))
            }
        }
        // Every address still wanted is listening: only now do the others go.
        for old in plan.retire {
            unstoreListening(old.settings.listen)
            let (name, address, logger) = (old.settings.name, old.settings.listen, logger)
            retirementsInFlight += 1
            old.group.retire { [unowned self] taken in
                logger.log(.info, "listener \"\(name)\" on \(address) removed\(taken > 0 ? " (\(taken) waiting client(s) relayed first)" : "")",
                           id: .listener, [("TCPOPS_LISTENER", name), ("TCPOPS_LOCAL", address.description)])
                self.retirementsInFlight -= 1
                if self.retirementsInFlight == 0 && self.reloadQueued && self.reloadWorker == nil {
                    self.reloadQueued = false
                    self.reload()
                }
            }
        }
        listeners = plan.next.mapValues(\.group)
        return plan.failures
    }

    /// SIGHUP: the file is read and its names resolved in a thread of its own (DNS and the disk may
    /// take their time; the loop does not wait), then applied here. A SIGHUP during a reload runs
    /// another one after it.
    func reload() {
        guard !stopping else { return }
        // One at a time, and not before the last one's old listening sockets are closed: a reload
        // that moves a listener back to an address it just left must find it free (the old
        // socket is closed once every worker let go of it, which a busy worker can delay).
        if reloadWorker != nil || retirementsInFlight > 0 {
            reloadQueued = true
            return
        }
        Notify.send("RELOADING=1\nMONOTONIC_USEC=\(Clock.monotonicNanoseconds() / 1000)")
        let path = config.path
        let previous = config
        let inbox = loop.inbox
        let me = Handoff(self)
        let worker = PosixThread(name: "tcpops-reload")
        reloadWorker = worker
        do {
            try worker.start {
                let result: Result<ConfigResolver.Outcome, ConfigError>
                do throws(ConfigError) {
                    result = .success(try ConfigResolver.resolve(try ConfigLoader.load(path: path), mode: .reload(previous: previous)))
                } catch {
                    result = .failure(error)
                }
                inbox.post { _ in me.value.finishReload(result) }
            }
        } catch {
            reloadWorker = nil
            logger.log(.error, "reload failed: \(error)", id: .configInvalid)
            Notify.send("READY=1\nSTATUS=reload failed: \(error); \(statusLine())")
        }
    }

    private func finishReload(_ result: Result<ConfigResolver.Outcome, ConfigError>) {
        reloadWorker?.join()
        reloadWorker = nil
        guard !stopping else { return }
        defer {
            if reloadQueued {
                reloadQueued = false
                reload()
            }
        }
        let outcome: ConfigResolver.Outcome
        switch result {
        case .success(let o): outcome = o
        case .failure(let error):
            logger.log(.error, "reload failed, keeping the running configuration: \(error)", id: .configInvalid)
            metrics.reloaded("failed")
            Notify.send("READY=1\nSTATUS=reload failed: configuration invalid; \(statusLine())")
            return
        }
        for w in outcome.warnings { logger.log(.warning, "reload: \(w)", id: .configInvalid) }
        let next = outcome.config
        var failures = applyListeners(next.listeners, unusable: outcome.unusable)
        if let error = serveMetrics(next.metrics.listen), let at = next.metrics.listen {
            let keeps = metricsAddress.map { "; /metrics stays on \($0)" } ?? ""
            failures.append("[metrics]: cannot listen on \(at): \(error)\(keeps)")
            logger.log(.error, "reload: [metrics]: cannot listen on \(at): \(error)\(keeps)")
        }
        if next.daemon.controlSocket != config.daemon.controlSocket || next.daemon.controlMode != config.daemon.controlMode
            || next.daemon.controlGroup != config.daemon.controlGroup {
            logger.log(.notice, "control_socket, control_mode and control_group changes take effect at the next start")
        }
        config = next
        if next.daemon.workerCount != workers.count {
            logger.log(.notice, "workers: \(workers.count) event loop(s) run; a change takes effect at the next start")
        }
        // One generation, handed to every part once: the listeners as they listen now (a failed
        // one keeps its previous settings), the control socket the daemon serves.
        apply(Generation(number: generation.number + 1, config: next, fdLimit: fdLimit, listening: listeners.values.map(\.settings),
                         controlSocket: control?.path ?? next.daemon.controlSocket))
        metrics.reloaded(failures.isEmpty ? "ok" : "partial")
        let summary = failures.isEmpty ? "reloaded" : "reloaded with errors (\(failures.count)): \(failures.joined(separator: "; "))"
        logger.log(failures.isEmpty ? .notice : .error, "configuration \(summary)", id: .started)
        Notify.send("READY=1\nSTATUS=\(summary); \(statusLine())")
    }
}
