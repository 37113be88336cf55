"""Issue 8: the PROXY protocol both ways. proxy_protocol = "v1"/"v2": the upstream gets a header
with the client's real addresses first (v2 with the client conid in TLV 0xE0). accept_proxy = true:
the client's header is read within bounds, and its addresses are what events, hooks, the journal,
`list` and `conid` report; a missing, malformed, oversized, truncated or slow header closes the
connection with a logged reason and no relay, and nothing else is disturbed."""
import json
import socket
import struct
import threading
import time

import pytest

from helpers import connect, echoed, free_port, hooked, listener, wait_for

SIG = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])


def v2_header(src, sport, dst, dport, tlvs=b""):
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)
    return SIG + bytes([0x21, 0x11]) + struct.pack(">H", len(addrs) + len(tlvs)) + addrs + tlvs


class HeaderUpstream:
    """An upstream that reads a PROXY header (v1 or v2), records it, then echoes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.headers = []
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        buf = b""
        while len(buf) < 16:
            d = c.recv(4096)
            if not d:
                return
            buf += d
        if buf.startswith(SIG):
            total = 16 + struct.unpack(">H", buf[14:16])[0]
            while len(buf) < total:
                buf += c.recv(4096)
            body = buf[16:total]
            src, dst = socket.inet_ntoa(body[0:4]), socket.inet_ntoa(body[4:8])
            sport, dport = struct.unpack(">HH", body[8:12])
            tlvs, off = {}, 12
            while off < len(body):
                t, ln = body[off], struct.unpack(">H", body[off + 1:off + 3])[0]
                tlvs[t] = body[off + 3:off + 3 + ln]
                off += 3 + ln
            self.headers.append({"version": 2, "src": f"{src}:{sport}", "dst": f"{dst}:{dport}", "tlvs": tlvs})
            rest = buf[total:]
        else:
            while b"\r\n" not in buf:
                buf += c.recv(4096)
            line, rest = buf.split(b"\r\n", 1)
            f = line.decode().split(" ")
            self.headers.append({"version": 1, "src": f"{f[2]}:{f[4]}", "dst": f"{f[3]}:{f[5]}", "line": line.decode()})
        try:
            if rest:
                c.sendall(rest)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        c.close()

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_tells_the_upstream_who_the_client_is(daemon, version):
    up = HeaderUpstream()
    port = free_port()
    d = daemon(listeners=[listener("pp", port, up.address, proxy_protocol=version)])
    s = connect(port)
    assert echoed(s, b"hello") == b"hello"
    h = wait_for(lambda: up.headers, what="a header at the upstream")[0]
    assert h["version"] == int(version[1])
    assert h["src"] == f"127.0.0.1:{s.getsockname()[1]}" and h["dst"] == f"127.0.0.1:{port}", h
    if version == "v2":
        conid = int(d.ctl("conid", f"127.0.0.1:{s.getsockname()[1]}").stdout)
        assert h["tlvs"][0xE0] == str(conid).encode(), h
    # Bytes sent at once (before the upstream is connected) still come after the header, in order.
    s2 = socket.create_connection(("127.0.0.1", port))
    s2.sendall(b"early bytes")
    got = b""
    s2.settimeout(5)
    while len(got) < 11:
        got += s2.recv(100)
    assert got == b"early bytes"
    assert [h["src"] for h in up.headers][-1] == f"127.0.0.1:{s2.getsockname()[1]}"
    s.close()
    s2.close()
    assert d.stop() == 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_accept_proxy_reports_the_real_client_everywhere(daemon, echo, tmp_path, version):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ap", port, up.address, accept_proxy=True, event_sides=["client"])], events=hooked(tmp_path))
    s = connect(port)
    header = (b"PROXY TCP4 203.0.113.9 198.51.100.2 41000 5060\r\n" if version == "v1"
              else v2_header("203.0.113.9", 41000, "198.51.100.2", 5060))
    s.sendall(header + b"first bytes")  # header and data in one segment: the data is relayed
    got = b""
    s.settimeout(5)
    while len(got) < 11:
        got += s.recv(100)
    assert got == b"first bytes"
    rows = json.loads(d.ctl("list", "--json").stdout)
    client = [r for r in rows if r["side"] == "client"][0]
    assert client["remote"] == "203.0.113.9:41000" and client["local"] == "198.51.100.2:5060", client
    assert d.ctl("conid", "203.0.113.9").stdout.strip() == str(client["conid"])
    s.close()
    ev = wait_for(lambda: d.events(), what="the client's event")[0]
    assert ev["TCPOPS_REMOTE_IP"] == "203.0.113.9" and ev["TCPOPS_REMOTE_PORT"] == "41000"
    assert ev["TCPOPS_LOCAL_IP"] == "198.51.100.2" and ev["TCPOPS_LOCAL_PORT"] == "5060"
    assert ev["TCPOPS_BYTES_IN"] == str(len(header) + 11)
    assert d.stop() == 0


BAD = {
    "missing": (b"INVITE sip:bob@example.com SIP/2.0\r\n", "not a PROXY"),
    "wrong v2 signature": (SIG[:5] + b"\x0e" + SIG[6:] + b"\x21\x11\x00\x0c" + bytes(12), "not a PROXY"),
    "v1 too long": (b"PROXY TCP4 " + b"1" * 120, "longer than 107"),
    "v2 oversized": (SIG + b"\x21\x11\x02\x10" + bytes(64), "536"),
    "v1 bad address": (b"PROXY TCP4 300.1.1.1 198.51.100.2 1 2\r\n", "IPv4"),
    "truncated, then closed": (b"PROXY TCP4 203.0.113.9 19", "closed before its header was complete"),
}


def test_bad_headers_are_refused_and_nothing_else_is_disturbed(daemon, echo):
    up = echo()
    port, plain = free_port(), free_port()
    # At debug each refused connection's end names its reason (at info, a warning every 5 s counts
    # them: a flood of bad headers is not a flood of entries; test_floods.py).
    d = daemon(listeners=[listener("ap", port, up.address, accept_proxy=True), listener("plain", plain, up.address)],
               daemon={"log_level": "debug"})
    steady = connect(plain)
    assert echoed(steady, b"hello") == b"hello"
    for name, (data, why) in BAD.items():
        s = connect(port)
        s.sendall(data)
        if name.startswith("truncated"):
            s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        try:
            assert s.recv(100) == b"", name  # closed, nothing relayed
        except ConnectionResetError:
            pass
        s.close()
        wait_for(lambda: why in d.logtext(), timeout=5, what=f"the reason for {name!r} logged")
    assert json.loads(d.ctl("stats", "--json").stdout)["relays_open"] == 1  # only the steady one
    assert echoed(steady, b"still fine") == b"still fine"
    assert d.stop() == 0


def test_a_slow_header_is_cut_at_3_s(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("slow", port, up.address, accept_proxy=True)])
    s = connect(port)
    header = b"PROXY TCP4 203.0.113.9 198.51.100.2 41000 5060\r\n"
    t0 = time.monotonic()
    closed = None
    for i in range(len(header)):
        try:
            s.send(header[i:i + 1])
        except OSError:
            closed = time.monotonic() - t0
            break
        s.settimeout(0.01)
        try:
            if s.recv(10) == b"":
                closed = time.monotonic() - t0
                break
        except socket.timeout:
            pass
        time.sleep(0.5)  # two bytes a second
    assert closed is not None and 2.5 <= closed <= 5, closed
    assert "no complete header within 3 s" in d.logtext()
    assert d.stop() == 0


def test_a_balancers_health_check_raises_no_event(daemon, echo, tmp_path):
    """A connection whose PROXY header says the balancer speaks for itself (v2 LOCAL, v1 UNKNOWN),
    as HAProxy's `check` with send-proxy-v2 does before it resets the connection, is relayed but
    raises no tcp:* event: a health check is not a client gone. A client's reset beside it does."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ap", port, up.address, accept_proxy=True)], events=hooked(tmp_path))
    local = SIG + bytes([0x20, 0x00]) + struct.pack(">H", 0)  # v2, command LOCAL, no addresses
    for header in (local, b"PROXY UNKNOWN\r\n"):
        s = connect(port)
        s.sendall(header + b"ping")
        s.settimeout(5)
        assert s.recv(10) == b"ping"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    s = connect(port)
    s.sendall(v2_header("203.0.113.9", 41000, "198.51.100.2", 5060) + b"ping")
    s.settimeout(5)
    assert s.recv(10) == b"ping"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_for(lambda: d.events(), what="the client's reset")
    time.sleep(0.5)  # the checks' would have come first
    evs = d.events()
    assert [(e["TCPOPS_EVENT"], e["TCPOPS_REMOTE_IP"]) for e in evs] == [("tcp:reset", "203.0.113.9")], evs
    stats = d.ctl("stats").stdout
    assert "accepted 3" in stats and "events.tcp:reset 1" in stats, stats
    assert d.stop() == 0
