// Config parsing and validation: values, defaults and line-numbered errors.
import Testing
@testable import TCPOps
@testable import TCPOpsConfig
@testable import TCPOpsLoop
@testable import TCPOpsPosix
@testable import TCPOpsProtocol

@Suite struct ConfigTests {
    let minimal = """
    [[listener]]
    name = "sip"
    listen = "0.0.0.0:5060"
    upstream = "127.0.0.1:5070"
    """

    @Test func defaultsFilled() throws {
        let c = try ConfigLoader.parse(minimal, path: "t.toml")
        #expect(c.daemon.controlSocket == "/run/tcpopsd/control.sock")
        #expect(c.daemon.controlMode == 0o660)
        #expect(c.daemon.maxConnections == 100_000)
        #expect(c.daemon.shutdownTimeout == 10)
        #expect(c.events.closedEvent == 1)
        #expect(c.events.maxRunningHooks == 16 && c.events.queueLimit == 10_000 && c.events.hookTimeout == 10)
        let l = try #require(c.listeners.first)
        #expect(l.name == "sip" && l.listen.port == 5060 && l.upstreamText == "127.0.0.1:5070")
        #expect(l.connectTimeout == 5 && l.lifetime == 0 && l.keepalive == nil && l.userTimeout == 0)
        #expect(l.eventSides == [.client, .upstream] && !l.closedEvent)
    }

    @Test func everyKeyParsed() throws {
        let text = """
        [daemon]
        control_socket = "/tmp/x.sock"
        control_mode = "0600"
        max_connections = 500
        log_level = "debug"
        shutdown_timeout = 2.5
        [events]
        closed_event = 2
        callback = ["/bin/true"]
        hook_timeout = 0.5
        max_running_hooks = 3
        queue_limit = 7
        [events.route]
        "tcp:reset" = ["/bin/true", "x"]
        [[listener]]
        name = "a"
        listen = "[::1]:6000"
        upstream = "127.0.0.1:6001"
        connect_timeout = 0.25
        lifetime = 120
        keepalive = { idle = 60, count = 5, interval = 5 }
        user_timeout = 30
        closed_event = true
        event_sides = ["upstream"]
        upstream_keepalive = { idle = 1, count = 2, interval = 3 }
        upstream_user_timeout = 4.5
        proxy_protocol = "v2"
        accept_proxy = true
        [[listener]]
        name = "b"
        listen = "127.0.0.1:6002"
        upstream = ["db.example:5070", "[::1]:5071", "10.0.0.1:5072"]
        """
        let c = try ConfigLoader.parse(text, path: "t.toml")
        #expect(c.daemon.controlMode == 0o600 && c.daemon.logLevel == .debug && c.daemon.shutdownTimeout == 2.5)
        #expect(c.events.closedEvent == 2 && c.events.callback == ["/bin/true"] && c.events.routes["tcp:reset"] == ["/bin/true", "x"])
        let l = c.listeners[0]
        #expect(l.listen.family == .v6 && l.listen.description == "[::1]:6000")
        #expect(l.keepalive == KeepaliveSettings(idle: 60, count: 5, interval: 5))
        #expect(l.upstreamKeepalive == KeepaliveSettings(idle: 1, count: 2, interval: 3) && l.upstreamUserTimeout == 4.5)
        #expect(l.proxyProtocol == .v2 && l.acceptProxy)
        let b = c.listeners[1]
        #expect(b.upstreams.map(\.description) == ["db.example:5070", "[::1]:5071", "10.0.0.1:5072"])
        #expect(b.upstreams.map(\.isName) == [true, false, false] && b.upstreams[0].addresses.isEmpty)
        #expect(l.connectTimeout == 0.25 && l.lifetime == 120 && l.userTimeout == 30 && l.closedEvent && l.eventSides == [.upstream])
    }

    func problems(_ text: String) -> [ConfigError.Problem] {
        do {
            _ = try ConfigLoader.parse(text, path: "t.toml")
            return []
        } catch {
            return error.problems
        }
    }

    @Test func unknownKeyNamesLine() {
        let p = problems(minimal + "\nlifetimee = 3\n")
        #expect(p.count == 1)
        #expect(p.first?.line == 5)
        #expect(p.first?.message.contains("lifetimee") == true)
    }

    @Test func wrongTypesAndRanges() {
        let p = problems("""
        [daemon]
        max_connections = 1.5
        [events]
        closed_event = 3
        [[listener]]
        name = "x"
        listen = "1.2.3.4:0"
        upstream = "local_host:80"
        lifetime = "forever"
        """)
        #expect(p.map(\.line) == [2, 4, 7, 8, 9])
    }

    @Test func duplicateNameAndAddress() {
        let p = problems(minimal + "\n[[listener]]\nname = \"sip\"\nlisten = \"0.0.0.0:5061\"\nupstream = \"127.0.0.1:1\"\n"
                         + "[[listener]]\nname = \"other\"\nlisten = \"0.0.0.0:5060\"\nupstream = \"127.0.0.1:1\"\n")
        #expect(p.count == 2)
        #expect(p[0].line == 6 && p[0].message.contains("duplicate listener name"))
        #expect(p[1].line == 11 && p[1].message.contains("already used"))
    }

    @Test func noListener() {
        #expect(problems("[daemon]\nlog_level = \"info\"\n").first?.message.contains("no [[listener]]") == true)
    }

    @Test func syntaxErrorLine() {
        let p = problems("[daemon]\nlog_level = \n")
        #expect(p.count == 1 && p[0].line == 2 && p[0].message.contains("syntax"))
    }

    @Test func errorText() {
        let e = ConfigError(path: "/etc/x.toml", problems: [.init(line: 3, message: "bad")])
        #expect(e.description == "/etc/x.toml:3: bad")
    }

    func problems(bytes: [UInt8]) -> [ConfigError.Problem] {
        do {
            _ = try ConfigLoader.parse(bytes: bytes, path: "t.toml")
            return []
        } catch {
            return error.problems
        }
    }

    @Test func nulAndInvalidUTF8AreProblemsWithTheirLines() {
        var text = Array((minimal + "\n# one\n# two\n").utf8)
        text[text.count - 3] = 0  // in "# two"
        let p = problems(bytes: text)
        #expect(p.count == 1 && p[0].line == 6 && p[0].message.contains("NUL"))
        let bad = Array("# caf".utf8) + [0xE9] + Array(("\n" + minimal).utf8)
        let q = problems(bytes: bad)
        #expect(q.count == 1 && q[0].line == 1 && q[0].message.contains("UTF-8"))
        #expect(problems(bytes: Array(minimal.utf8)).isEmpty)
    }

    @Test func durationsBetweenOneMillisecondAndAYear() {
        for bad in ["1e-320", "0.0000001", "0.0009", "-0.5", "31536000.5", "inf", "nan"] {
            let p = problems(minimal + "\nlifetime = \(bad)\n")
            #expect(p.count == 1 && p.first?.line == 5, "lifetime = \(bad)")
        }
        for good in ["0", "0.001", "1", "31536000"] {
            #expect(problems(minimal + "\nlifetime = \(good)\n").isEmpty, "lifetime = \(good)")
        }
        #expect(problems(minimal + "\nconnect_timeout = 0\n").first?.message.contains("greater than 0") == true)
    }

    @Test func wholeFileProblemHasNoLine() {
        let e = ConfigError(path: "/etc/x.toml", problems: [.init(line: 0, message: "cannot read the file: ENOENT")])
        #expect(e.description == "/etc/x.toml: cannot read the file: ENOENT")
    }

    @Test func listenerBoundsAndTrustedSources() throws {
        let c = try ConfigLoader.parse("""
        [[listener]]
        name = "lb"
        listen = "0.0.0.0:5061"
        upstream = "127.0.0.1:5070"
        accept_proxy = true
        accept_proxy_from = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
        proxy_header_timeout = 0.5
        proxy_header_max_pending = 50
        max_connections = 200
        connect_attempts = 2
        connect_deadline = 4
        """, path: "t.toml")
        let l = try #require(c.listeners.first)
        #expect(l.acceptProxyFrom?.map(\.description) == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"])
        #expect(l.proxyHeaderTimeout == 0.5 && l.proxyHeaderMaxPending == 50 && l.maxConnections == 200)
        #expect(l.connectAttempts == 2 && l.connectDeadline == 4)
        let d = try ConfigLoader.parse(minimal, path: "t.toml").listeners[0]
        #expect(d.acceptProxyFrom == nil && d.proxyHeaderTimeout == 3 && d.proxyHeaderMaxPending == 1000 && d.maxConnections == nil)
        #expect(d.connectAttempts == 3 && d.connectDeadline == 10)
    }

    @Test func trustedSourcesAreChecked() {
        let bad = """
        [[listener]]
        name = "lb"
        listen = "0.0.0.0:5061"
        upstream = "127.0.0.1:5070"
        accept_proxy_from = ["10.1.2.3/8", "nonsense", "10.0.0.0/33"]
        proxy_header_timeout = 1
        """
        #expect { try ConfigLoader.parse(bad, path: "t.toml") } throws: { e in
            let text = "\(e)"
            return text.contains("t.toml:5: [[listener]] #1 key 'accept_proxy_from': \"10.1.2.3/8\": bits are set past the prefix length (did you mean 10.0.0.0/8?)")
                && text.contains("t.toml:5: [[listener]] #1 key 'accept_proxy_from': applies only with accept_proxy = true")
                && text.contains("t.toml:6: [[listener]] #1 key 'proxy_header_timeout': applies only with accept_proxy = true")
        }
        for (text, why) in [("nonsense", "is not an IPv4 or IPv6 address"), ("10.0.0.0/33", "prefix length \"33\""), ("::/129", "prefix length")] {
            #expect(throws: AddressRange.ParseError.self) { try AddressRange.parse(text) }
            do { _ = try AddressRange.parse(text) } catch { #expect("\(error)".contains(why)) }
        }
    }

    @Test func addressRangesMatch() throws {
        let v4 = try AddressRange.parse("10.0.0.0/8")
        #expect(v4.contains(try SocketAddress.parse("10.200.3.4:1")))
        #expect(!v4.contains(try SocketAddress.parse("11.0.0.1:1")))
        #expect(v4.contains(try SocketAddress.parse("[::ffff:10.1.1.1]:1")))  // IPv4 on an IPv6 socket
        #expect(!v4.contains(try SocketAddress.parse("[::1]:1")))
        let odd = try AddressRange.parse("192.168.4.0/22")
        #expect(odd.contains(try SocketAddress.parse("192.168.7.255:1")))
        #expect(!odd.contains(try SocketAddress.parse("192.168.8.0:1")))
        let v6 = try AddressRange.parse("2001:db8::/32")
        #expect(v6.contains(try SocketAddress.parse("[2001:db8:ffff::1]:1")))
        #expect(!v6.contains(try SocketAddress.parse("[2001:db9::1]:1")))
        let all = try AddressRange.parse("0.0.0.0/0"), one = try AddressRange.parse("127.0.0.1")
        let a = try SocketAddress.parse("203.0.113.1:1"), b = try SocketAddress.parse("127.0.0.1:9"), c = try SocketAddress.parse("127.0.0.2:9")
        #expect(all.contains(a) && one.contains(b) && !one.contains(c))
    }

    /// Left out, max_connections fits the open-files limit (a default that every start warned
    /// about was no default); given, it is what the file says.
    @Test func maxConnectionsDefaultFitsTheFdLimit() throws {
        let d = try ConfigLoader.parse(minimal, path: "t.toml").daemon
        #expect(d.maxConnectionsGiven == nil)
        #expect(d.maxConnections(fdLimit: 20_000) == 19_936)
        #expect(d.maxConnections(fdLimit: 65_536) == 65_472)
        #expect(d.maxConnections(fdLimit: 1 << 20) == 100_000)
        #expect(d.maxConnections(fdLimit: 10) == 2)
        let given = try ConfigLoader.parse("[daemon]\nmax_connections = 500\n" + minimal, path: "t.toml").daemon
        #expect(given.maxConnections(fdLimit: 20_000) == 500 && given.maxConnectionsGiven == 500)
    }
}
