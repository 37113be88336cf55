// A listener whose address a reload drops is retired: the clients already in its accept queue
// (their handshake done) are accepted and relayed, not reset. Real sockets on loopback; the loop is
// never run, so the queue stays full until retire() drains it.
import Glibc
import Testing
@testable import TCPOps
@testable import TCPOpsSystemd
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsRelay
@testable import TCPOpsProtocol

@Suite(.serialized) struct ListenerTests {
    @Test func retiringRelaysWhatWaitsInTheQueue() throws {
        let loop = try EventLoop()
        let logger = Logger(target: .stderr, level: .error)
        let ctx = RelayContext(loop: loop, logger: logger, events: EventDispatcher(logger: logger, hooks: nil),
                               closedEventMode: 1, maxConnections: 1000)
        let any = try SocketAddress.parse("127.0.0.1:1")
        let upstreamFD = try Socket.listen(SocketAddress(family: .v4, bytes: any.bytes, port: 0))
        defer { closeFD(upstreamFD) }
        let upstream = try #require(Socket.localAddress(upstreamFD))
        let listenFD = try Socket.listen(SocketAddress(family: .v4, bytes: any.bytes, port: 0))
        let listener = try Listener(settings: ListenerSettings(name: "old", listen: SocketAddress(family: .v4, bytes: any.bytes, port: 0),
                                                               upstream: upstream), ctx: ctx, fd: listenFD, exclusive: false)
        let address = try #require(Socket.localAddress(listener.fd))
        var clients: [Int32] = []
        defer { for c in clients { closeFD(c) } }
        for _ in 0..<10 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            let r = address.withSockaddr { Glibc.connect(fd, $0, $1) }
            #expect(r == 0)  // completed in the kernel's queue: nobody accepted yet
            clients.append(fd)
        }
        #expect(ctx.accepted == 0)
        let taken = listener.retire()
        closeFD(listenFD)  // as its ListenerGroup does once every worker let go of it
        #expect(taken == 10)
        #expect(ctx.accepted == 10 && ctx.relays == 10 && ctx.trackedCount == 20 && ctx.trackedConnections.count == 20)
        // The listening socket is gone: a new client is refused, the old ones are not reset.
        let late = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { closeFD(late) }
        #expect(address.withSockaddr { Glibc.connect(late, $0, $1) } == -1 && errno == ECONNREFUSED)
        for c in clients {
            var byte: UInt8 = 0
            let n = recv(c, &byte, 1, Int32(MSG_DONTWAIT))
            #expect(n == -1 && errno == EAGAIN, "a relayed client reads nothing yet (no reset, no FIN)")
        }
        // Every tracked connection is found by its conid, and no other conid is.
        for c in ctx.trackedConnections { #expect(ctx.connection(c.conid) === c) }
        #expect(ctx.connection(ctx.peekNextConid) == nil)
        ctx.closeAll()
        #expect(ctx.relays == 0 && ctx.trackedCount == 0 && ctx.trackedConnections.isEmpty)
        loop.close()
    }
}
