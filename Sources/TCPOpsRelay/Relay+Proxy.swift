// accept_proxy: a client of such a listener must begin with a PROXY protocol header (a balancer in
// front sends it); its addresses become the connection's remote and local address everywhere.
// The header is read within bounds (536 bytes, proxy_header_timeout) before the upstream is
// connected; anything else closes the connection, logged with the reason, and no relay is made.
// Until its header came a connection counts against no max_connections (only against its
// listener's proxy_header_max_pending): then it needs room like any new relay.
import TCPOpsLoop
import TCPOpsMetrics
import TCPOpsEvents
import TCPOpsSystemd
import TCPOpsPosix
import TCPOpsProtocol

extension Relay {
    package func awaitProxyHeader() {
        enter(.awaitingHeader)
        armPhaseTimer(at: ctx.loop.now + listener.proxyHeaderTimeout.nanoseconds)  // (timerFired says what came)
    }

    /// Too many await their header on this listener, and this one waited longest: closed.
    package func evictAwaiting() {
        ctx.proxyRejected += 1
        end(failed: nil, reason: .local, why: "closed while awaiting its PROXY header: proxy_header_max_pending (\(listener.proxyHeaderMaxPending)) reached",
            quietly: true)
    }

    /// The client is readable while its header is awaited: read until the header is whole, the
    /// client has nothing more now (edge-triggered: a FIN behind a partial header has no edge of
    /// its own), or it ends.
    package func readProxyHeader() {
        while phase == .awaitingHeader && readProxyHeaderOnce() {}
    }

    /// One read of the awaited header; true when the header is still incomplete and the client may
    /// have more now.
    private func readProxyHeaderOnce() -> Bool {
        var input = proxyInput
        let room = ProxyProtocol.maxHeader - input.count
        switch Socket.receive(client.fd, into: UnsafeMutableRawBufferPointer(rebasing: ctx.scratch[0..<room])) {
        case .moved(let n):
            client.bytesIn &+= UInt64(n)
            client.lastActivity = ctx.loop.now
            input.append(contentsOf: UnsafeRawBufferPointer(rebasing: ctx.scratch[0..<n]))
        case .wouldBlock:
            return false
        case .endOfFile:
            rejectProxy("the client closed before its header was complete (\(input.count) bytes came)")
            return false
        case .failed(let e):
            rejectProxy("the client's connection failed before its header was complete: \(errnoName(e))")
            return false
        }
        switch ProxyProtocol.parse(input) {
        case .needMore:
            proxyInput = input  // parse says invalid before the buffer could exceed the limit
            return true
        case .invalid(let why):
            rejectProxy(why)
            return false
        case .header(let h):
            cancelPhaseTimer()
            enter(.connecting)
            // Now it becomes a relay: it needs room (the client is counted; its upstream will be).
            guard ctx.hasRoom(for: 1), RelayContext.listenerHasRoom(listener, metrics, for: 1) else {
                ctx.rejected += 1
                metrics.rejectedMaxConnections.increment()
                ctx.proxyRejectLog.log(.warning, "max_connections reached: a connection whose PROXY header came was refused",
                                       id: .listener, [("TCPOPS_LISTENER", listener.name), ("TCPOPS_REJECTED", String(ctx.rejected))])
                Socket.resetOnClose(client.fd)
                end(failed: nil, reason: .local, why: "max_connections reached when its PROXY header came", quietly: true)
                return false
            }
            if let source = h.source, let destination = h.destination {
                client.remote = source
                client.local = destination
            } else {
                // LOCAL / UNKNOWN: a health check (HAProxy's `check` with send-proxy-v2 sends one
                // and ends it with an RST); it is relayed, but its end is no client's event.
                client.balancerOwn = true
            }
            // What the client sent after its header is its first bytes for the upstream.
            toUpstream.held = Array(input[h.length...])
            ctx.logger.log(.debug, "PROXY \(h.version.rawValue) header: client \(client.remote?.description ?? "?")", fields(client))
            connectUpstream()
            return false
        }
    }

    package func rejectProxy(_ why: String) {
        ctx.proxyRejected += 1
        metrics.rejectedProxyHeader.increment()
        ctx.proxyRejectLog.log(.warning, "accept_proxy: closed a connection without a valid PROXY header: \(why)",
                               id: .connectionClosed, fields(client) + [("TCPOPS_PROXY_REJECTED", String(ctx.proxyRejected))])
        end(failed: nil, reason: .local, why: "no valid PROXY header: \(why)", quietly: true)
    }

    /// proxy_protocol: the header the upstream gets before anything else, once it is connected.
    package func sendProxyHeader() {
        guard let version = listener.proxyProtocol else { return }
        let header = ProxyProtocol.header(version, source: client.remote, destination: client.local, conid: client.conid)
        toUpstream.held.insert(contentsOf: header, at: toUpstream.heldSent)
    }
}
