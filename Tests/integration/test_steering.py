"""Issue 19, the module's main use: the service behind tcpopsd steers the connection it talks to, as
Kamailio's script does with the tcpops functions. Every command that takes a CONID takes the
client's address HOST:PORT too (one call from a script; a host name is resolved by tcpopsctl; two
connections with that address are an error naming both); `lifetime` restarts the idle clock from
the call; `[events] opened = true` raises tcp:opened when a relay is established; a failed connect
still reports its local address."""
import json
import socket
import subprocess
import time

from helpers import CTL, connect, echoed, free_port, hooked, listener, wait_for

V1 = "PROXY TCP4 {src} 198.51.100.2 {sport} 5060\r\n"


def rows(d):
    return json.loads(d.ctl("list", "--json").stdout)


def test_commands_take_the_clients_address(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("addr", port, up.address)])
    c = connect(port)
    assert echoed(c, b"hi") == b"hi"
    me = f"127.0.0.1:{c.getsockname()[1]}"
    conid = [r["conid"] for r in rows(d) if r["side"] == "client"][0]
    # One call: the address stands for the conid.
    assert d.ctl("lifetime", me, "30").stdout.strip() == "1"
    assert d.ctl("keepalive-enable", me, "20", "3", "5").stdout.strip() == "1"
    row = [r for r in rows(d) if r["conid"] == conid][0]
    assert row["lifetime"] == 30 and row["keepalive"] == {"idle": 20, "count": 3, "interval": 5}, row
    assert d.ctl("state", me).stdout.strip() == "1 ok"
    assert d.ctl("alive", me).stdout.strip() == "1"
    # A host name is resolved by tcpopsctl (localhost: ::1 and 127.0.0.1; only the latter matches).
    assert d.ctl("state", f"localhost:{c.getsockname()[1]}").stdout.strip() == "1 ok"
    # conid takes host names too, and finds only clients (an upstream's remote is the upstream).
    p = d.ctl("conid", f"localhost:{c.getsockname()[1]}")
    assert (p.returncode, p.stdout.strip()) == (0, str(conid)), p
    p = d.ctl("conid", up.address, "--all")
    assert p.returncode == 1 and p.stdout.strip() == "", p  # the upstream's address: no client has it
    # No connection with that address: as an unknown conid.
    p = d.ctl("state", "127.0.0.1:1")
    assert (p.returncode, p.stdout.strip()) == (1, "-1 gone"), p
    p = d.ctl("lifetime", "127.0.0.1:1", "5")
    assert (p.returncode, p.stdout.strip()) == (1, "-1"), p
    # Not an address: usage errors (64), nothing sent.
    for bad in ("127.0.0.1:99999", "127.0.0.1", "[::1]", "::1"):
        p = d.ctl("state", bad)
        assert p.returncode == 64, (bad, p.returncode, p.stderr)
    p = d.ctl("conid", "127.0.0.1:99999")
    assert p.returncode == 64, p.stderr
    p = d.ctl("state", "no-such-host.invalid:5060")
    assert p.returncode == 1 and "does not resolve" in p.stderr, (p.returncode, p.stderr)
    # close by address.
    assert d.ctl("close", me).stdout.strip() == "1"
    c.settimeout(5)
    assert c.recv(10) == b""
    assert d.stop() == 0


def test_two_connections_with_one_address_are_an_error(daemon, echo):
    """Behind a balancer two clients can claim one address (a NAT, a misbehaving balancer): a
    command by that address must not pick one. It fails naming both conids, and changes nothing."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("twins", port, up.address, accept_proxy=True, accept_proxy_from=["127.0.0.0/8"])])
    twins = []
    for _ in range(2):
        s = connect(port)
        s.sendall(V1.format(src="10.1.1.1", sport=5000).encode())
        assert echoed(s, b"x") == b"x"
        twins.append(s)
    conids = sorted(r["conid"] for r in rows(d) if r["side"] == "client")
    p = d.ctl("lifetime", "10.1.1.1:5000", "9")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"2 connections have the remote address 10.1.1.1:5000 (conids {conids[0]}, {conids[1]})" in p.stderr, p.stderr
    assert all(r["lifetime"] == 0 for r in rows(d)), "nothing was changed"
    p = d.ctl("conid", "10.1.1.1:5000", "--all")
    assert p.stdout.split() == [str(c) for c in sorted(conids, reverse=True)]
    for s in twins:
        s.close()
    assert d.stop() == 0


def test_lifetime_counts_from_the_call(daemon, echo):
    """Kamailio sets `timeout = now + lifetime`. Before: a connection idle 2 s given `lifetime C 1`
    closed 13 ms later (counted from the last data)."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("life", port, up.address)])
    c = connect(port)
    assert echoed(c, b"hi") == b"hi"
    conid = [r["conid"] for r in rows(d) if r["side"] == "client"][0]
    time.sleep(2)
    t0 = time.monotonic()
    assert d.ctl("lifetime", str(conid), "1").stdout.strip() == "1"
    assert [r["idle_ms"] for r in rows(d) if r["conid"] == conid][0] < 500  # the idle clock restarted
    c.settimeout(5)
    assert c.recv(10) == b""
    took = time.monotonic() - t0
    assert 0.8 <= took < 2, took
    assert d.stop() == 0


def test_tcp_opened_is_opt_in(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("open", port, up.address)], events=hooked(tmp_path, opened=True))
    follow = subprocess.Popen([CTL, "events", "--follow", "--json", "--socket", d.control], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    c = connect(port)
    assert echoed(c, b"hi") == b"hi"
    rec = wait_for(lambda: [r for r in d.events() if r["TCPOPS_EVENT"] == "tcp:opened"], what="the tcp:opened hook")
    conids = {r["side"]: r["conid"] for r in rows(d)}
    r = rec[0]
    assert r["ARGV"] == "tcp:opened" and r["TCPOPS_REASON"] == "established"
    assert r["TCPOPS_CONID"] == str(conids["client"]) and r["TCPOPS_PEER_CONID"] == str(conids["upstream"])
    assert r["TCPOPS_SIDE"] == "client" and r["TCPOPS_REMOTE_PORT"] == str(c.getsockname()[1]) and r["TCPOPS_LOCAL_PORT"] == str(port)
    line = json.loads(follow.stdout.readline())
    assert line["event"] == "tcp:opened" and line["conid"] == conids["client"] and line["peer_conid"] == conids["upstream"]
    follow.terminate()
    # Not in the journal (here: stderr) at the default log level.
    c.close()
    wait_for(lambda: len([r for r in d.events() if r["TCPOPS_EVENT"] == "tcp:closed"]) == 2, what="the closes")
    assert "tcp:opened on conid" not in d.logtext()
    assert d.stop() == 0


def test_no_tcp_opened_unless_asked(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("quiet", port, up.address)], events=hooked(tmp_path), daemon={"log_level": "debug"})
    c = connect(port)
    assert echoed(c, b"hi") == b"hi"
    c.close()
    wait_for(lambda: len(d.events()) == 2, what="the two tcp:closed")
    assert {r["TCPOPS_EVENT"] for r in d.events()} == {"tcp:closed"}
    assert "tcp:opened" not in d.logtext()
    assert d.stop() == 0


def test_a_failed_connect_reports_its_local_address(daemon, tmp_path):
    dead = free_port()
    port = free_port()
    d = daemon(listeners=[listener("fail", port, f"127.0.0.1:{dead}")], events=hooked(tmp_path))
    c = connect(port)
    c.settimeout(5)
    assert c.recv(10) == b""
    ev = wait_for(lambda: [r for r in d.events() if r["TCPOPS_REASON"] == "refused"], what="the refused attempt")[0]
    assert ev["TCPOPS_LOCAL_IP"] == "127.0.0.1" and int(ev["TCPOPS_LOCAL_PORT"]) > 0, ev
    assert d.stop() == 0
