"""Issue 2, items 4 and 5: peers that go silent. A client in a network namespace whose link is cut
after connecting; keepalive and TCP_USER_TIMEOUT turn that silence into tcp:timeout; an upstream
that never answers SYN gives connect-timeout."""
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import AcceptOnce, report, EchoServer, free_port, find_client_event, hooked, listener, wait_for, write_hook, events_for
from netns import NetNS, netns_available

why = netns_available()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")

CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.getsockname()[1], flush=True)
s.settimeout(None)
time.sleep(120)
"""


@pytest.fixture
def ns():
    n = NetNS()
    yield n
    n.close()


def start_client(ns, host, port):
    p = ns.popen(sys.executable, "-c", CLIENT, host, str(port), stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip().isdigit(), f"client in namespace did not connect: {line!r}"
    return p, int(line)


def test_keepalive_detects_dead_peer(daemon, echo, ns, tmp_path):
    up = echo(mode="hold")
    port = free_port()
    d = daemon(listeners=[{"name": "ka", "listen": f"{ns.host_ip}:{port}", "upstream": up.address,
                           "keepalive": {"idle": 1, "count": 2, "interval": 1}}], events=hooked(tmp_path))
    client, cport = start_client(ns, ns.host_ip, port)
    try:
        time.sleep(0.3)
        ns.cut()
        t0 = time.monotonic()
        wait_for(lambda: find_client_event(d.events(), cport), timeout=12, what="keepalive timeout")
        elapsed = time.monotonic() - t0
        r = find_client_event(d.events(), cport)
        assert len(r) == 1
        assert r[0]["TCPOPS_EVENT"] == "tcp:timeout" and r[0]["TCPOPS_REASON"] == "keepalive", r[0]
        report("client silent (keepalive 1/2/1)", "tcp:timeout keepalive", elapsed)
        assert 2 <= elapsed <= 8, elapsed
        assert r[0]["TCPOPS_REMOTE_IP"] == ns.ns_ip
        # tcpopsd closed the upstream side itself: no event for it.
        time.sleep(0.3)
        assert not events_for(d.events(), r[0]["TCPOPS_PEER_CONID"])
    finally:
        client.kill()
    assert d.stop() == 0


def test_no_keepalive_means_no_timeout(daemon, echo, ns, tmp_path):
    """The control case: without keepalive a silent peer goes unnoticed for the same time."""
    up = echo(mode="hold")
    port = free_port()
    d = daemon(listeners=[{"name": "noka", "listen": f"{ns.host_ip}:{port}", "upstream": up.address}],
               events=hooked(tmp_path))
    client, cport = start_client(ns, ns.host_ip, port)
    try:
        time.sleep(0.3)
        ns.cut()
        time.sleep(6)
        assert not find_client_event(d.events(), cport)
    finally:
        client.kill()
    assert d.stop() == 0


def test_user_timeout_detects_peer_not_acknowledging(daemon, ns, tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(srv.accept()[0]), daemon=True).start()
    port = free_port()
    d = daemon(listeners=[{"name": "ut", "listen": f"{ns.host_ip}:{port}", "upstream": f"127.0.0.1:{srv.getsockname()[1]}",
                           "user_timeout": 2}], events=hooked(tmp_path))
    client, cport = start_client(ns, ns.host_ip, port)
    try:
        wait_for(lambda: accepted, what="upstream accept")
        ns.cut()
        t0 = time.monotonic()
        accepted[0].sendall(b"data nobody will acknowledge" * 100)  # tcpopsd must deliver it to the silent client
        wait_for(lambda: find_client_event(d.events(), cport), timeout=12, what="user timeout")
        elapsed = time.monotonic() - t0
        r = find_client_event(d.events(), cport)
        assert r[0]["TCPOPS_EVENT"] == "tcp:timeout" and r[0]["TCPOPS_REASON"] == "keepalive", r[0]
        report("client silent with data in flight (user_timeout 2)", "tcp:timeout keepalive", elapsed)
        assert 1.5 <= elapsed <= 8, elapsed
    finally:
        client.kill()
        srv.close()
    assert d.stop() == 0


def test_upstream_never_answering_syn_is_connect_timeout(daemon, ns, tmp_path):
    ns.cut()  # the upstream address lives in the namespace, whose link is down: SYNs vanish
    port = free_port()
    d = daemon(listeners=[listener("ct", port, f"{ns.ns_ip}:9", connect_timeout=1)], events=hooked(tmp_path))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    s.settimeout(6)
    assert s.recv(10) == b""  # the client is closed once the connect times out
    elapsed = time.monotonic() - t0
    report("upstream never answers SYN (connect_timeout 1)", "tcp:timeout connect-timeout", elapsed)
    assert 0.8 <= elapsed <= 3, elapsed
    wait_for(lambda: d.events(), what="connect-timeout event")
    time.sleep(0.3)
    recs = d.events()
    assert len(recs) == 1
    r = recs[0]
    assert r["TCPOPS_EVENT"] == "tcp:timeout" and r["TCPOPS_REASON"] == "connect-timeout"
    assert r["TCPOPS_SIDE"] == "upstream" and r["TCPOPS_REMOTE_IP"] == ns.ns_ip
    assert d.stop() == 0


def test_upstream_user_timeout_detects_blackholed_upstream(daemon, ns, tmp_path):
    """Issue 7, item 4: an upstream that goes dark with data in flight raises tcp:timeout on the
    upstream side within upstream_user_timeout (it used to go unnoticed: the option only existed for
    the client side)."""
    uport = 7000 + free_port() % 1000
    srv = ns.echo_server(uport)
    try:
        port = free_port()
        d = daemon(listeners=[listener("dark", port, f"{ns.ns_ip}:{uport}", upstream_user_timeout=2)], events=hooked(tmp_path))
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"hello")
        assert s.recv(5) == b"hello"
        ns.cut()
        t0 = time.monotonic()
        s.sendall(b"into the void" * 100)
        ev = wait_for(lambda: [r for r in d.events() if r["TCPOPS_SIDE"] == "upstream"], timeout=15, what="upstream timeout")
        elapsed = time.monotonic() - t0
        assert ev[0]["TCPOPS_EVENT"] == "tcp:timeout" and ev[0]["TCPOPS_REASON"] == "keepalive", ev[0]
        assert ev[0]["TCPOPS_REMOTE_IP"] == ns.ns_ip
        report("upstream black-holed with data in flight (upstream_user_timeout 2)", "tcp:timeout keepalive", elapsed)
        assert 1.5 <= elapsed <= 10, elapsed
        s.settimeout(5)
        assert s.recv(10) == b""  # the relay ended: the client side is closed by tcpopsd
        s.close()
        assert d.stop() == 0
    finally:
        srv.kill()


def test_upstream_user_timeout_ends_a_zero_window_upstream(daemon, tmp_path):
    """An upstream that stays up but stops reading (zero window) is bounded the same way."""
    srv = AcceptOnce(rcvbuf=4096)
    port = free_port()
    d = daemon(listeners=[listener("zw", port, srv.address, upstream_user_timeout=2)], events=hooked(tmp_path))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    srv.wait()
    s.setblocking(False)
    t0 = time.monotonic()
    while not [r for r in d.events() if r["TCPOPS_SIDE"] == "upstream"] and time.monotonic() - t0 < 20:
        try:
            s.send(b"z" * 65536)
        except (BlockingIOError, OSError):
            time.sleep(0.05)
    ev = [r for r in d.events() if r["TCPOPS_SIDE"] == "upstream"]
    assert ev, "no event for an upstream with a zero window for 20 s"
    assert ev[0]["TCPOPS_EVENT"] == "tcp:timeout" and ev[0]["TCPOPS_REASON"] == "keepalive", ev[0]
    report("upstream zero window (upstream_user_timeout 2)", "tcp:timeout keepalive", time.monotonic() - t0)
    assert time.monotonic() - t0 <= 12
    s.close()
    srv.close()
    assert d.stop() == 0
