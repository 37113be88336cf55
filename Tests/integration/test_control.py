"""Issue 3, items 1-4: every tcpopsctl command against live connections."""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from helpers import (hooked, CTL, EchoServer, connect, events_for, find_client_event, free_port, listener, recv_all, wait_for,
                     write_hook, is_root)
from netns import NetNS, netns_available
from sockpeek import find_socket, keepalive_options


def conid_of(d, client_sock):
    """The client-side conid of our socket, found with tcpopsctl conid."""
    ip, port = client_sock.getsockname()[:2]
    p = d.ctl("conid", f"{ip}:{port}")
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip())


def roundtrip(s, data=b"ping"):
    s.sendall(data)
    s.settimeout(5)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        assert chunk, "closed"
        got += chunk
    return got


def test_list_state_alive_and_json(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ls", port, up.address)])
    s = connect(port)
    roundtrip(s)
    c = conid_of(d, s)
    p = d.ctl("list")
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0].split()[:5] == ["CONID", "PEER", "SIDE", "LISTENER", "STATE"]
    assert any(l.split()[0] == str(c) and "client" in l and "ok" in l for l in lines[1:])
    rows = json.loads(d.ctl("list", "--json").stdout)
    mine = [r for r in rows if r["conid"] == c][0]
    assert mine["side"] == "client" and mine["state"] == 1 and mine["remote"] == f"127.0.0.1:{s.getsockname()[1]}"
    assert mine["bytes_in"] == 4 and mine["bytes_out"] == 4
    peer = [r for r in rows if r["conid"] == mine["peer_conid"]][0]
    assert peer["side"] == "upstream" and peer["remote"] == up.address
    assert d.ctl("list", "--listener", "nope").returncode == 2
    p = d.ctl("state", str(c))
    assert (p.returncode, p.stdout.strip()) == (0, "1 ok")
    p = d.ctl("alive", str(c))
    assert (p.returncode, p.stdout.strip()) == (0, "1")
    p = d.ctl("state", "--json", str(c))
    assert json.loads(p.stdout) == {"state": 1, "name": "ok", "keepalive": None, "user_timeout_ms": 0}
    s.close()
    assert d.stop() == 0


def test_state_of_eof_and_never_existing(daemon, echo):
    up = echo(mode="hold")  # the upstream keeps its side open
    port = free_port()
    d = daemon(listeners=[listener("st", port, up.address)])
    s = connect(port)
    c = conid_of(d, s)
    s.shutdown(socket.SHUT_WR)  # our FIN; the relay still drains the other way
    wait_for(lambda: d.ctl("state", str(c)).stdout.strip() == "-2 eof", what="eof state")
    p = d.ctl("state", str(c))
    assert p.returncode == 1
    p = d.ctl("alive", str(c))
    assert (p.returncode, p.stdout.strip()) == (1, "-1")
    p = d.ctl("state", "999999")
    assert (p.returncode, p.stdout.strip()) == (1, "-1 gone")
    p = d.ctl("alive", "999999")
    assert (p.returncode, p.stdout.strip()) == (1, "-1")
    s.close()
    assert d.stop() == 0


def test_keepalive_enable_sets_options_and_disable_clears(daemon, echo):
    if not is_root():
        pytest.skip("reading another process's socket options needs root (pidfd_getfd)")
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ka", port, up.address)])
    s = connect(port)
    c = conid_of(d, s)
    theirs = find_socket(d.proc.pid, s.getsockname()[1])
    assert theirs is not None
    assert keepalive_options(theirs)[0] == 0
    p = d.ctl("keepalive-enable", str(c), "7", "3", "2")
    assert (p.returncode, p.stdout.strip()) == (0, "1")
    assert keepalive_options(theirs) == (1, 7, 3, 2)
    # state --json reads them back from tcpopsd's socket.
    assert json.loads(d.ctl("state", "--json", str(c)).stdout)["keepalive"] == {"idle": 7, "count": 3, "interval": 2}
    p = d.ctl("keepalive-disable", str(c))
    assert (p.returncode, p.stdout.strip()) == (0, "1")
    assert keepalive_options(theirs)[0] == 0
    assert json.loads(d.ctl("state", "--json", str(c)).stdout)["keepalive"] is None
    assert d.ctl("keepalive-enable", "999999", "7", "3", "2").stdout.strip() == "-1"
    bad = d.ctl("keepalive-enable", str(c), "7", "300", "2")
    assert bad.returncode == 64 and "COUNT 300 is out of range" in bad.stderr
    # The daemon checks ranges too, for any client of the protocol.
    a = json.loads(d.request({"cmd": "keepalive-enable", "conid": c, "idle": 7, "count": 300, "interval": 2}))
    assert a["ok"] is False and "out of range" in a["error"]
    theirs.close()
    s.close()
    assert d.stop() == 0


@pytest.mark.skipif(netns_available() is not None, reason=netns_available() or "")
def test_keepalive_enable_then_dead_peer_times_out(daemon, echo, tmp_path):
    ns = NetNS()
    try:
        up = echo(mode="hold")
        port = free_port()
        d = daemon(listeners=[{"name": "kad", "listen": f"{ns.host_ip}:{port}", "upstream": up.address}],
                   events=hooked(tmp_path))
        client = ns.popen(sys.executable, "-c", "import socket,sys,time\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n"
                          "print(s.getsockname()[1],flush=True)\ntime.sleep(60)", ns.host_ip, str(port), stdout=subprocess.PIPE, text=True)
        cport = int(client.stdout.readline())
        c = int(d.ctl("conid", f"{ns.ns_ip}:{cport}").stdout)
        assert d.ctl("keepalive-enable", str(c), "1", "2", "1").stdout.strip() == "1"
        ns.cut()
        t0 = time.monotonic()
        wait_for(lambda: find_client_event(d.events(), cport), timeout=12, what="keepalive timeout")
        r = find_client_event(d.events(), cport)[0]
        assert r["TCPOPS_EVENT"] == "tcp:timeout" and r["TCPOPS_REASON"] == "keepalive"
        assert time.monotonic() - t0 < 9
        client.kill()
        assert d.stop() == 0
    finally:
        ns.close()


def test_lifetime_shortens_and_lengthens(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("lt", port, up.address, lifetime=1.5)], events=hooked(tmp_path))
    short, longer = connect(port), connect(port)
    cs, cl = conid_of(d, short), conid_of(d, longer)
    assert d.ctl("lifetime", str(cl), "3600").stdout.strip() == "1"
    assert d.ctl("lifetime", str(cs), "0.5").stdout.strip() == "1"
    t0 = time.monotonic()
    short.settimeout(5)
    assert short.recv(10) == b""
    assert time.monotonic() - t0 < 1.4  # before the listener's own 1.5 s
    time.sleep(2.5)  # past the listener's lifetime
    assert d.ctl("alive", str(cl)).stdout.strip() == "1"
    assert roundtrip(longer) == b"ping"
    ev = events_for(d.events(), cs)
    assert len(ev) == 1 and ev[0]["TCPOPS_EVENT"] == "tcp:timeout" and ev[0]["TCPOPS_REASON"] == "lifetime"
    assert not events_for(d.events(), cl)
    assert d.ctl("lifetime", str(cl), "-1").returncode == 64
    longer.close()
    assert d.stop() == 0


def test_closed_event_enables_one_connection_under_mode_2(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ce", port, up.address, event_sides=["client"])], events=hooked(tmp_path, closed_event=2))
    chosen, other = connect(port), connect(port)
    c = conid_of(d, chosen)
    assert d.ctl("closed-event", str(c)).stdout.strip() == "1"
    chosen.close()
    other.close()
    wait_for(lambda: d.logtext().count("relay ended") == 2, what="relays ended")
    wait_for(lambda: d.events(), what="event")
    time.sleep(0.5)
    recs = d.events()
    assert [r["TCPOPS_CONID"] for r in recs] == [str(c)]
    assert d.stop() == 0


def test_close_fin_and_reset(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("cl", port, up.address)], events=hooked(tmp_path))
    a, b = connect(port), connect(port)
    ca, cb = conid_of(d, a), conid_of(d, b)
    assert d.ctl("close", str(ca)).stdout.strip() == "1"
    a.settimeout(5)
    assert a.recv(10) == b""  # a FIN
    assert d.ctl("close", "--reset", str(cb)).stdout.strip() == "1"
    b.settimeout(5)
    with pytest.raises(ConnectionResetError):
        b.recv(10)
    assert d.ctl("state", str(ca)).stdout.strip() == "-1 gone"
    p = d.ctl("close", str(ca))
    assert (p.returncode, p.stdout.strip()) == (1, "-1")
    time.sleep(0.5)
    assert d.events() == []  # closes tcpopsd starts raise no event
    assert d.stop() == 0


def test_send_reaches_only_that_client_after_queued_bytes(daemon, tmp_path):
    # An upstream that answers each client with a large block: send must not cut into it.
    block = bytes(range(256)) * 4096  # 1 MiB
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    held = []

    def answer(c):
        held.append(c)  # the upstream keeps its side open after the block
        try:
            if c.recv(10):
                c.sendall(block)
        except OSError:
            pass

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    port = free_port()
    d = daemon(listeners=[listener("send", port, f"127.0.0.1:{srv.getsockname()[1]}")])
    a, b = connect(port), connect(port)
    ca = conid_of(d, a)
    a.sendall(b"go")
    time.sleep(0.3)  # the block is in flight, much of it still queued in tcpopsd and the kernel
    p = d.ctl("send", str(ca), "HELLO-FROM-TCPOPSCTL")
    assert (p.returncode, p.stdout.strip()) == (0, "1")
    p = subprocess.run([CTL, "send", "--socket", d.control, str(ca), "-"], input="from-stdin", capture_output=True, text=True)
    assert p.stdout.strip() == "1"
    f = tmp_path / "payload"
    f.write_bytes(b"\x00\x01binary\xff")
    assert d.ctl("send", str(ca), "--file", str(f)).stdout.strip() == "1"
    a.settimeout(5)
    got = b""
    want = block + b"HELLO-FROM-TCPOPSCTL" + b"from-stdin" + b"\x00\x01binary\xff"
    while len(got) < len(want):
        got += a.recv(65536)
    assert got == want
    b.settimeout(0.5)
    with pytest.raises(socket.timeout):
        b.recv(10)  # the other client got nothing
    assert d.ctl("send", "999999", "x").stdout.strip() == "-1"
    a.close()
    b.close()
    srv.close()
    assert d.stop() == 0


def test_conid_lookup_any_port_and_all(daemon, echo):
    up = echo()
    p1, p2 = free_port(), free_port()
    d = daemon(listeners=[listener("one", p1, up.address), listener("two", p2, up.address)])
    s = connect(p1)
    assert d.ctl("conid", f"127.0.0.1:{s.getsockname()[1]}").stdout.strip() == str(conid_of(d, s))
    # Clients from 127.0.0.3, one to each listener: without a port any port matches; --all lists
    # both, newest first.
    clients = []
    for p in (p1, p2):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("127.0.0.3", 0))
        c.connect(("127.0.0.1", p))
        roundtrip(c)
        clients.append(c)
    rows = {r["conid"]: r for r in json.loads(d.ctl("list", "--json").stdout)}
    sip = sorted((c for c, r in rows.items() if r["remote"].startswith("127.0.0.3:")), reverse=True)
    assert len(sip) == 2
    port_of_older = rows[sip[1]]["remote"].split(":")[1]
    p = d.ctl("conid", f"127.0.0.3:{port_of_older}")
    assert (p.returncode, p.stdout.strip()) == (0, str(sip[1]))
    p = d.ctl("conid", "127.0.0.3")
    assert (p.returncode, p.stdout.strip()) == (0, str(sip[0]))
    p = d.ctl("conid", "127.0.0.3", "--all")
    assert p.stdout.split() == [str(x) for x in sip]
    p = d.ctl("conid", "127.0.0.9")
    assert p.returncode == 1
    # Host names are taken (as Kamailio's tcp_get_conid does): one that does not resolve matches
    # no connection (1, saying why); what is no host at all is a usage error.
    p = d.ctl("conid", "not-an-ip.invalid")
    assert p.returncode == 1 and "does not resolve" in p.stderr, (p.returncode, p.stderr)
    p = d.ctl("conid", "127.0.0.3:port")
    assert p.returncode == 64, (p.returncode, p.stderr)
    for c in clients + [s]:
        c.close()
    assert d.stop() == 0


def test_hook_acts_on_its_own_connection(daemon, tmp_path):
    """tcp:closed is raised at the client's FIN; the hook asks for its state and closes the relay."""
    up_srv = socket.socket()
    up_srv.bind(("127.0.0.1", 0))
    up_srv.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(up_srv.accept()[0]), daemon=True).start()
    out = tmp_path / "hook.out"
    hook = tmp_path / "h.sh"
    hook.write_text(f"#!/bin/sh\n{{ {CTL} state; echo \"state-exit=$?\"; {CTL} close; }} >> {out} 2>&1\n")
    os.chmod(hook, 0o755)
    port = free_port()
    d = daemon(listeners=[listener("self", port, f"127.0.0.1:{up_srv.getsockname()[1]}", event_sides=["client"])],
               events={"callback": [str(hook)]})
    s = connect(port)
    wait_for(lambda: accepted, what="upstream accept")
    s.shutdown(socket.SHUT_WR)
    wait_for(lambda: out.exists() and len(out.read_text().split()) >= 4, what="hook output")
    assert out.read_text().split() == ["-2", "eof", "state-exit=1", "1"]
    up = accepted[0]
    up.settimeout(5)
    assert up.recv(10) == b""  # the hook's close ended the relay
    s.close()
    assert d.stop() == 0


def test_missing_conid_and_bad_usage(daemon, echo):
    up = echo()
    d = daemon(listeners=[listener("u", free_port(), up.address)])
    p = d.ctl("state")
    assert p.returncode == 64 and "TCPOPS_CONID" in p.stderr
    p = d.ctl("state", env={"TCPOPS_CONID": "424242"})
    assert (p.returncode, p.stdout.strip()) == (1, "-1 gone")
    p = d.ctl("keepalive-enable", "1", "2")
    assert p.returncode == 64
    p = subprocess.run([CTL, "stats", "--socket", "/nonexistent/control.sock"], capture_output=True, text=True)
    assert p.returncode == 69 and "cannot reach" in p.stderr
    p = subprocess.run([CTL, "stats"], capture_output=True, text=True, env={**os.environ, "TCPOPS_CONTROL_SOCKET": d.control})
    assert p.returncode == 0 and "connections_open" in p.stdout
    assert d.stop() == 0


def test_bytes_held_when_upstream_resets_still_reach_the_client(daemon, tmp_path):
    """The upstream sends, then resets. What tcpopsd had read from it is still delivered to the
    client (which reads late); meanwhile the upstream conid is in the table as -3 error."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    payload = os.urandom(32 * 1024 * 1024)

    def serve():
        c, _ = srv.accept()
        c.recv(10)
        c.setblocking(False)
        sent, t_end = 0, time.monotonic() + 1.0
        while time.monotonic() < t_end and sent < len(payload):  # as much as the path takes in 1 s
            try:
                sent += c.send(payload[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST: what it sent but tcpopsd has not read yet is lost; what tcpopsd read is not

    threading.Thread(target=serve, daemon=True).start()
    port = free_port()
    d = daemon(listeners=[listener("rst", port, f"127.0.0.1:{srv.getsockname()[1]}")], events=hooked(tmp_path))
    s = connect(port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c = conid_of(d, s)
    upstream = json.loads(d.ctl("list", "--json").stdout)
    up_conid = [r["conid"] for r in upstream if r["peer_conid"] == c][0]
    s.sendall(b"go")
    wait_for(lambda: events_for(d.events(), up_conid), timeout=15, what="the upstream's reset")
    ev = events_for(d.events(), up_conid)[0]
    assert ev["TCPOPS_EVENT"] == "tcp:reset" and ev["TCPOPS_REASON"] == "rst"
    held = int(ev["TCPOPS_BYTES_IN"])
    assert held > 0
    p = d.ctl("state", str(up_conid))
    assert p.stdout.strip() == "-3 error" and p.returncode == 1
    got = recv_all(s, timeout=10)
    assert got == payload[:held], (len(got), held)
    wait_for(lambda: d.ctl("state", str(up_conid)).stdout.strip() == "-1 gone", what="relay ended")
    assert not find_client_event(d.events(), s.getsockname()[1])  # the client side was closed by tcpopsd
    s.close()
    srv.close()
    assert d.stop() == 0


@pytest.mark.skipif(netns_available() is not None, reason=netns_available() or "")
def test_states_accepting_and_connecting(daemon):
    """While the upstream connect hangs (SYNs vanish), the client is 2 accepting and the
    upstream 3 connecting; both are alive."""
    ns = NetNS()
    try:
        ns.cut()
        port = free_port()
        d = daemon(listeners=[listener("slow", port, f"{ns.ns_ip}:9", connect_timeout=5)])
        s = connect(port)
        rows = wait_for(lambda: json.loads(d.ctl("list", "--json").stdout), what="the relay listed")
        by_side = {r["side"]: r for r in rows}
        assert by_side["client"]["state"] == 2 and by_side["client"]["state_name"] == "accepting"
        assert by_side["upstream"]["state"] == 3 and by_side["upstream"]["state_name"] == "connecting"
        p = d.ctl("state", str(by_side["upstream"]["conid"]))
        assert (p.returncode, p.stdout.strip()) == (0, "3 connecting")
        assert d.ctl("alive", str(by_side["client"]["conid"])).stdout.strip() == "1"
        s.close()
        assert d.stop() == 0
    finally:
        ns.close()
