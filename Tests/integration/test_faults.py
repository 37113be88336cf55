"""Issue 7, the fault suite: what a hostile network, peers and load do to tcpopsd, each with the
event (or the silence) it must give. Dead peers use network namespaces (root); the rest loopback."""
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import CTL, SANITIZER, AcceptOnce, report, connect, free_port, hooked, listener, recv_all, reset_close, wait_for, write_hook
from netns import NetNS, netns_available


def rss_kb(pid):
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])


class Follower:
    """`tcpopsctl events --follow`: every event, as tcpopsctl prints it."""

    def __init__(self, d):
        self.proc = subprocess.Popen([CTL, "events", "--follow", "--socket", d.control], stdout=subprocess.PIPE, text=True)
        self.events = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_for(lambda: "subscribers 1" in d.ctl("stats").stdout, what="the follower subscribed")

    def _read(self):
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if "event" in obj:
                self.events.append(obj)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def test_churn_checksummed_mixed_closes(daemon, echo):
    """Every byte once and in order, one event per connection side at most, fds back to where they
    started and RSS flat after warm-up: 2,400 relays with FIN, client RST before and after its data,
    and RST mid-stream mixed."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("churn", port, up.address)])
    follower = Follower(d)
    base_fds = d.open_fds()
    outcome = {"fin": 0, "rst": 0, "bytes": 0, "bad": []}
    lock = threading.Lock()

    def one(kind, rng):
        size = rng.choice([1, 32, 1400, 16384, 65536, 300_000])
        payload = rng.randbytes(size)
        s = connect(port)
        try:
            if kind == "fin":
                got = []
                t = threading.Thread(target=lambda: got.append(recv_all(s)))
                t.start()
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                t.join(60)
                ok = got and hashlib.sha256(got[0]).digest() == hashlib.sha256(payload).digest()
                with lock:
                    outcome["fin"] += 1
                    outcome["bytes"] += len(payload) if ok else 0
                    if not ok:
                        outcome["bad"].append((size, len(got[0]) if got else None))
            else:
                s.sendall(payload[: size // 2] if kind == "rst-mid" else payload)
                with lock:
                    outcome["rst"] += 1
        finally:
            if kind != "fin":
                reset_close(s)
            else:
                s.close()

    def worker(seed, n, plan):
        rng = random.Random(seed)
        for i in range(n):
            one(plan[i % len(plan)], rng)

    plan = ["fin", "fin", "rst", "fin", "rst-mid", "fin"]

    def batch(n_each, seed):
        ts = [threading.Thread(target=worker, args=(seed + i, n_each, plan)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(300)

    batch(50, 1)  # warm-up: 400 relays
    wait_for(lambda: d.ctl("stats").stdout.find("relays_open 0") >= 0, timeout=30, what="warm-up relays ended")
    rss_warm = rss_kb(d.proc.pid)
    batch(250, 100)  # 2,000 more
    wait_for(lambda: d.ctl("stats").stdout.find("relays_open 0") >= 0, timeout=60, what="all relays ended")
    rss_end = rss_kb(d.proc.pid)
    total = outcome["fin"] + outcome["rst"]
    assert total == 2400 and not outcome["bad"], outcome
    # Events: at most one per conid; every client side raised exactly its own kind.
    wait_for(lambda: len([e for e in follower.events if e["side"] == "client"]) == total, timeout=30,
             what=f"{total} client events (have {len([e for e in follower.events if e['side'] == 'client'])})")
    time.sleep(0.5)
    conids = [e["conid"] for e in follower.events]
    assert len(conids) == len(set(conids)), "a connection raised two events"
    client = [e for e in follower.events if e["side"] == "client"]
    assert len([e for e in client if e["event"] == "tcp:closed"]) == outcome["fin"]
    assert len([e for e in client if e["event"] == "tcp:reset"]) == outcome["rst"]
    # The echo upstream's FIN comes after all it echoed: by then tcpopsd counted as much in as out.
    upstream_fins = [e for e in follower.events if e["side"] == "upstream" and e["event"] == "tcp:closed"]
    assert len(upstream_fins) == outcome["fin"]
    assert all(e["bytes_in"] == e["bytes_out"] for e in upstream_fins)
    follower.close()
    wait_for(lambda: d.open_fds() <= base_fds + 4, timeout=10, what=f"fds back to {base_fds} (pooled pipes aside)")
    if not SANITIZER:
        assert rss_end - rss_warm < 4096, f"RSS grew {rss_end - rss_warm} KiB after warm-up"
    print(f"churn: {total} relays, {outcome['bytes']} bytes verified, RSS {rss_warm} -> {rss_end} KiB, fds {d.open_fds()}")
    assert d.stop() == 0


def test_upstream_rst_mid_stream(daemon, tmp_path):
    srv = AcceptOnce()
    port = free_port()
    d = daemon(listeners=[listener("urst", port, srv.address)], events=hooked(tmp_path))
    s = connect(port)
    s.sendall(b"x" * 100_000)
    u = srv.wait()
    u.recv(1000)
    u.sendall(b"partial answer")
    t0 = time.monotonic()
    reset_close(u)
    ev = wait_for(lambda: [r for r in d.events() if r["TCPOPS_SIDE"] == "upstream"], timeout=5, what="upstream reset event")
    assert ev[0]["TCPOPS_EVENT"] == "tcp:reset" and ev[0]["TCPOPS_REASON"] == "rst", ev[0]
    report("upstream RST mid-stream", "tcp:reset rst (upstream side)", time.monotonic() - t0)
    assert time.monotonic() - t0 < 2
    # The client gets what the upstream sent before its RST, then a close; it raises nothing.
    assert recv_all(s, 5) == b"partial answer"
    time.sleep(0.3)
    assert [r["TCPOPS_SIDE"] for r in d.events()] == ["upstream"]
    srv.close()
    assert d.stop() == 0


def test_client_that_never_reads_is_ended_by_user_timeout(daemon, tmp_path):
    """A client that stops reading (zero window) while the upstream talks: backpressure holds tcpopsd
    to a bounded amount, and the client's user_timeout ends it (tcp:timeout on the client side)."""
    srv = AcceptOnce()
    port = free_port()
    d = daemon(listeners=[listener("deaf", port, srv.address, user_timeout=2)], events=hooked(tmp_path))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    u = srv.wait()
    u.setblocking(False)
    t0 = time.monotonic()
    sent = 0
    while not d.events() and time.monotonic() - t0 < 20:
        try:
            sent += u.send(b"y" * 65536)
        except (BlockingIOError, OSError):
            time.sleep(0.05)
    ev = d.events()
    assert ev and ev[0]["TCPOPS_SIDE"] == "client", ev
    assert ev[0]["TCPOPS_EVENT"] == "tcp:timeout" and ev[0]["TCPOPS_REASON"] == "keepalive", ev[0]
    report("client never reads (user_timeout 2)", "tcp:timeout keepalive (client side)", time.monotonic() - t0)
    assert time.monotonic() - t0 < 12
    assert sent < 32 * 1024 * 1024, "tcpopsd must stop reading the upstream while the client cannot take more"
    s.close()
    srv.close()
    assert d.stop() == 0


def test_hook_that_never_ends_under_an_event_storm(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    hook = write_hook(tmp_path / "h.sh", tmp_path / "records", extra="sleep 3600")
    d = daemon(listeners=[listener("storm", port, up.address, event_sides=["client"])],
               events={"callback": [hook], "hook_timeout": 1, "max_running_hooks": 2, "queue_limit": 20})
    for _ in range(500):
        s = connect(port)
        s.close()
    # The relay never waits on the hooks: a bulk transfer goes through at once.
    s = connect(port)
    data = os.urandom(4 * 1024 * 1024)
    got = []
    t = threading.Thread(target=lambda: got.append(recv_all(s)))
    t.start()
    t0 = time.monotonic()
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    t.join(30)
    assert got and got[0] == data and time.monotonic() - t0 < 10
    wait_for(lambda: "hook killed" in d.logtext(), timeout=5, what="a hook killed at hook_timeout")
    wait_for(lambda: "hook queue full" in d.logtext(), timeout=5, what="drops past queue_limit")
    r = d.ctl("stats")
    stats = dict(l.split(" ", 1) for l in r.stdout.splitlines())
    assert int(stats["hooks.dropped"]) > 0 and int(stats["hooks.killed"]) >= 1, stats
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 8  # queued hooks get what is left of shutdown_timeout (5 s), no more


netns_why = netns_available()
needs_netns = pytest.mark.skipif(netns_why is not None, reason=netns_why or "")

@pytest.fixture
def ns():
    n = NetNS()
    yield n
    n.close()


@needs_netns
def test_upstream_blackholed_while_idle_is_found_by_upstream_keepalive(daemon, ns, tmp_path):
    uport = 7000 + free_port() % 1000
    srv = ns.echo_server(uport)
    try:
        port = free_port()
        d = daemon(listeners=[listener("idleup", port, f"{ns.ns_ip}:{uport}",
                                       upstream_keepalive={"idle": 1, "count": 2, "interval": 1})], events=hooked(tmp_path))
        s = connect(port)
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"
        ns.cut()
        t0 = time.monotonic()
        ev = wait_for(lambda: [r for r in d.events() if r["TCPOPS_SIDE"] == "upstream"], timeout=15, what="keepalive on the upstream")
        assert ev[0]["TCPOPS_EVENT"] == "tcp:timeout" and ev[0]["TCPOPS_REASON"] == "keepalive", ev[0]
        report("upstream black-holed while idle (upstream_keepalive 1/2/1)", "tcp:timeout keepalive", time.monotonic() - t0)
        assert 2 <= time.monotonic() - t0 <= 10
        s.settimeout(5)
        assert s.recv(10) == b""
        assert d.stop() == 0
    finally:
        srv.kill()


@needs_netns
def test_icmp_unreachable_on_connect_and_in_flight(daemon, ns, tmp_path):
    """An ICMP host-unreachable (here from an nftables reject in the upstream's namespace): at
    connect it ends the attempt at once; with data in flight it names the user timeout's cause."""
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        pytest.skip("nft (Debian nftables) is not installed")
    uport = 7000 + free_port() % 1000
    srv = ns.echo_server(uport)
    try:
        port = free_port()
        d = daemon(listeners=[listener("icmp", port, f"{ns.ns_ip}:{uport}", upstream_user_timeout=2, connect_timeout=5)],
                   events=hooked(tmp_path))
        held = connect(port)
        held.sendall(b"up")
        assert held.recv(2) == b"up"
        ns.run("nft", "add table inet t")
        ns.run("nft", "add chain inet t in { type filter hook input priority 0; }")
        ns.run("nft", f"add rule inet t in tcp dport {uport} reject with icmp type host-unreachable")
        # A new relay: the SYN draws the ICMP error, the attempt ends at once.
        t0 = time.monotonic()
        s = connect(port)
        s.settimeout(5)
        assert s.recv(10) == b""
        report("ICMP host-unreachable at connect", "tcp:timeout unreachable", time.monotonic() - t0)
        assert time.monotonic() - t0 < 2
        # The established one: its next bytes draw ICMP errors until the user timeout ends it.
        held.sendall(b"more")
        t1 = time.monotonic()
        wait_for(lambda: len([r for r in d.events() if r["TCPOPS_SIDE"] == "upstream"]) == 2, timeout=15,
                      what="both upstream events")
        ups = [r for r in d.events() if r["TCPOPS_SIDE"] == "upstream"]
        assert all(r["TCPOPS_EVENT"] == "tcp:timeout" and r["TCPOPS_REASON"] == "unreachable" for r in ups), ups
        report("ICMP host-unreachable with data in flight (upstream_user_timeout 2)", "tcp:timeout unreachable", time.monotonic() - t1)
        assert d.stop() == 0
    finally:
        srv.kill()
