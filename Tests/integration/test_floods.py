"""Issue 18, items 3 to 5: no client can starve another. PROXY listeners trust only the sources they
are told to (accept_proxy_from); connections awaiting their PROXY header count against no
max_connections and are bounded per listener (proxy_header_max_pending), so a flood of incomplete
headers never refuses another listener's clients; a listener can have its own max_connections; the
header wait is a key (proxy_header_timeout). The metrics endpoint serves a real scrape through
slowloris and held-connection floods. Every log line a peer or a local user can repeat per
connection is rate-limited with a count."""
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

from helpers import CTL, connect, echoed, free_port, listener, wait_for

V1 = b"PROXY TCP4 10.66.66.66 198.51.100.2 41000 5060\r\n"


def closed_without_relay(s, timeout=5):
    """True when tcpopsd closed `s` (FIN or RST) without relaying anything to it."""
    s.settimeout(timeout)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def refused(port, data=b""):
    """Connects, sends `data`: True when tcpopsd closed the connection without relaying (the reset
    may even reach the client before its connect() returns)."""
    try:
        s = connect(port)
        if data:
            s.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        return True
    try:
        return closed_without_relay(s)
    finally:
        s.close()


def stats(d):
    return json.loads(d.ctl("stats", "--json").stdout)


def rows(d, name):
    return [r for r in json.loads(d.ctl("list", "--json").stdout) if r["listener"] == name]


def test_accept_proxy_from_decides_who_may_send_a_header(daemon, echo):
    up = echo()
    strict, open_, lo = free_port(), free_port(), free_port()
    d = daemon(listeners=[listener("strict", strict, up.address, accept_proxy=True, accept_proxy_from=["192.0.2.0/24", "2001:db8::/32"]),
                          listener("lo", lo, up.address, accept_proxy=True, accept_proxy_from=["127.0.0.0/8"]),
                          listener("open", open_, up.address, accept_proxy=True)])
    # The listener without a list is allowed, with a warning that it trusts anyone.
    assert 'listener "open": accept_proxy without accept_proxy_from' in d.logtext()
    # 127.0.0.1 is not a balancer of "strict": its claim to be 10.66.66.66 goes nowhere.
    assert refused(strict, V1 + b"hello")
    wait_for(lambda: "accept_proxy_from: refused a connection from 127.0.0.1" in d.logtext(), what="the refusal logged")
    assert rows(d, "strict") == []
    # It is one for "lo": relayed, and the claimed address is the client's.
    s = connect(lo)
    s.sendall(V1)
    assert echoed(s, b"hello") == b"hello"
    assert [r["remote"] for r in rows(d, "lo") if r["side"] == "client"] == ["10.66.66.66:41000"]
    metrics = d.ctl("stats", "--openmetrics").stdout
    assert re.search(r'tcpopsd_rejected_total\{[^}]*cause="proxy_source"[^}]*\} 1', metrics) or \
        re.search(r'tcpopsd_rejected_total\{[^}]*listener="strict"[^}]*cause="proxy_source"[^}]*\} 1', metrics), metrics[:3000]
    assert d.stop() == 0


def test_a_header_flood_never_refuses_another_listeners_clients(daemon, echo):
    """Before: connections awaiting their header counted against the global max_connections;
    4,100 that sent only "PROX" against a limit of 4,000 made every client of another listener get
    an RST. Here the same at a tenth of the size."""
    up = echo()
    ap, ap2, plain = free_port(), free_port(), free_port()
    # One worker: "the oldest" is then one order (with more, each worker evicts among its own).
    d = daemon(daemon={"max_connections": 400, "workers": 1},
               listeners=[listener("ap", ap, up.address, accept_proxy=True, accept_proxy_from=["127.0.0.0/8"]),
                          listener("ap2", ap2, up.address, accept_proxy=True, accept_proxy_from=["127.0.0.0/8"],
                                   proxy_header_timeout=30, proxy_header_max_pending=100),
                          listener("plain", plain, up.address)])
    flood = []
    for _ in range(410):
        s = connect(ap)
        s.sendall(b"PROX")
        flood.append(s)
    wait_for(lambda: len(rows(d, "ap")) == 410, what="the flood accepted")
    # Every client of the other listener is served.
    plains = [connect(plain) for _ in range(46)]
    for s in plains:
        assert echoed(s, b"served") == b"served"
    # And a well-behaved client of the flooded listener too.
    good = connect(ap)
    good.sendall(V1)
    assert echoed(good, b"me too") == b"me too"
    # proxy_header_max_pending: past 100 awaiting on ap2, the one waiting longest goes.
    flood2 = []
    for _ in range(150):
        s = connect(ap2)
        s.sendall(b"PROX")
        flood2.append(s)
    wait_for(lambda: sum(1 for s in flood2[:50] if closed_without_relay(s, timeout=0.01)) == 50, timeout=10,
             what="the 50 oldest evicted")
    assert not [i for i, s in enumerate(flood2[50:]) if closed_without_relay(s, timeout=0.01)]
    assert len(rows(d, "ap2")) == 100
    good2 = connect(ap2)
    good2.sendall(V1)
    assert echoed(good2, b"served") == b"served"
    log = d.logtext()
    assert "proxy_header_max_pending (100) reached on ap2" in log
    # One line for the 51 evictions, not 51 (the count follows after 5 s).
    assert log.count("proxy_header_max_pending (100) reached") == 1, log.count("proxy_header_max_pending (100) reached")
    wait_for(lambda: "(and 49 more like it in the last 5 s)" in d.logtext(), timeout=8, what="the count of the evictions")
    for s in flood + flood2 + plains + [good, good2]:
        s.close()
    wait_for(lambda: stats(d)["relays_open"] == 0, what="all gone")
    assert d.stop() == 0


def test_header_timeout_is_a_key(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("quick", port, up.address, accept_proxy=True, accept_proxy_from=["127.0.0.1"],
                                   proxy_header_timeout=0.5)])
    s = connect(port)
    t0 = time.monotonic()
    s.sendall(b"PROXY TCP4 ")
    assert closed_without_relay(s, timeout=5)
    took = time.monotonic() - t0
    assert 0.4 <= took < 2, took
    wait_for(lambda: "no complete header within 0.5 s" in d.logtext(), what="the reason logged")
    assert d.stop() == 0


def test_a_listeners_own_max_connections(daemon, echo):
    up = echo()
    small, other = free_port(), free_port()
    d = daemon(daemon={"max_connections": 1000},
               listeners=[listener("small", small, up.address, max_connections=10), listener("other", other, up.address)])
    held = [connect(small) for _ in range(5)]
    for s in held:
        assert echoed(s, b"in") == b"in"
    assert refused(small)
    wait_for(lambda: "listener max_connections (10) reached" in d.logtext(), what="the refusal logged")
    others = [connect(other) for _ in range(20)]
    for s in others:
        assert echoed(s, b"unaffected") == b"unaffected"
    held[0].close()
    wait_for(lambda: len(rows(d, "small")) == 8, what="room again")
    again = connect(small)
    assert echoed(again, b"in again") == b"in again"
    assert d.stop() == 0


def scrape(port, timeout=5):
    """One GET /metrics as Prometheus makes it: the status, or the error."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n")
        s.settimeout(timeout)
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") and b"tcpopsd_build_info" in data else data[:60]
    except OSError as e:
        return repr(e)


def test_metrics_serve_a_scrape_through_slowloris_and_held_connections(daemon, echo):
    """Before: 16 slowloris connections (a byte a second, reconnecting every 5 s) let 0 of 40
    scrapes through; held connections made every scrape fail; the 17th client got a reset."""
    up = echo()
    port, mport = free_port(), free_port()
    d = daemon(listeners=[listener("m", port, up.address)], config_extra=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    stop = threading.Event()

    def slowloris():
        while not stop.is_set():
            conns = []
            for _ in range(16):
                try:
                    s = socket.create_connection(("127.0.0.1", mport), timeout=2)
                    s.sendall(b"GET /metrics HTTP/1.1\r\nX-a: ")
                    conns.append(s)
                except OSError:
                    pass
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5 and not stop.is_set():
                for s in conns:
                    try:
                        s.send(b"b")
                    except OSError:
                        pass
                stop.wait(1)
            for s in conns:
                s.close()

    t = threading.Thread(target=slowloris)
    t.start()
    time.sleep(0.5)
    results = []
    for _ in range(40):
        results.append(scrape(mport))
        time.sleep(0.2)
    stop.set()
    t.join()
    assert results == [200] * 40, f"{results.count(200)} of 40 scrapes succeeded: {[r for r in results if r != 200][:3]}"

    # Held connections: opened as fast as they can be, never a byte sent, kept open.
    held, stop = [], threading.Event()

    def hold():
        while not stop.is_set() and len(held) < 10000:
            try:
                held.append(socket.create_connection(("127.0.0.1", mport), timeout=2))
            except OSError:
                time.sleep(0.01)

    t = threading.Thread(target=hold)
    t.start()
    results = []
    deadline = time.monotonic() + 30
    while t.is_alive() and time.monotonic() < deadline:
        results.append(scrape(mport))
        time.sleep(0.1)
    stop.set()
    t.join()
    results += [scrape(mport) for _ in range(5)]
    print(f"\nmetrics: {len(held)} held connections, {results.count(200)} of {len(results)} scrapes succeeded meanwhile")
    assert results == [200] * len(results), f"{results.count(200)} of {len(results)}: {[r for r in results if r != 200][:3]}"
    # An evicted client got an answer, not just a reset: the oldest held ones read a 503.
    answers = set()
    for s in held[:50]:
        s.settimeout(0.2)
        try:
            answers.add(s.recv(12))
        except OSError:
            pass
    assert b"HTTP/1.1 503" in answers, answers
    for s in held:
        s.close()
    # A request ending in bare LF LF is answered at once.
    s = socket.create_connection(("127.0.0.1", mport), timeout=5)
    t0 = time.monotonic()
    s.sendall(b"GET /metrics HTTP/1.1\n\n")
    s.settimeout(5)
    assert s.recv(12) == b"HTTP/1.1 200"
    assert time.monotonic() - t0 < 1
    s.close()
    # The evictions were logged, once per 5 s with the count, not once each.
    assert d.logtext().count("metrics: 16 requests under way") <= 6
    assert d.stop() == 0


FLOOD_AS_STRANGER = r"""
import socket, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.recv(200)
        n += 1
    except OSError:
        pass
    s.close()
print(n)
"""


def lines(d, text):
    return [l for l in d.loglines() if text in l]


def counted(d, text):
    """How many occurrences the lines containing `text` stand for: 1 for a line of its own, 1 + N
    for a summary "(and N more like it ...)"."""
    total = 0
    for l in lines(d, text):
        m = re.search(r"\(and (\d+) more like it in the last", l)
        total += 1 + (int(m.group(1)) if m else 0)
    return total


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect to the control socket as another user")
def test_log_lines_a_peer_can_repeat_are_rate_limited(daemon, echo, tmp_path):
    """Before: control_mode = "0666" and a disallowed uid connecting in a loop wrote 14,049
    WARNING lines in 5 s. Every line a peer or a local user can cause per connection is now one
    line at once, then one per 5 s that counts the rest; nothing is lost from the count."""
    import shutil
    import tempfile
    up = echo()
    reachable = tempfile.mkdtemp(prefix="tcpopsd-flood-")
    os.chmod(reachable, 0o755)
    dead1, dead2 = free_port(), free_port()
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    full, ap, strict, down = free_port(), free_port(), free_port(), free_port()
    d = daemon(daemon={"workers": 1, "control_mode": "0666", "control_socket": f"{reachable}/control.sock"},
               events={"callback": [str(hook)]},
               listeners=[listener("full", full, up.address, max_connections=4),
                          listener("ap", ap, up.address, accept_proxy=True, accept_proxy_from=["127.0.0.0/8"]),
                          listener("strict", strict, up.address, accept_proxy=True, accept_proxy_from=["192.0.2.0/24"]),
                          listener("down", down, [f"127.0.0.1:{dead1}", f"127.0.0.1:{dead2}"], connect_attempts=2)])
    hook.unlink()  # every event's hook now fails to start
    t0 = time.monotonic()
    # 1. A stranger connects to the control socket in a loop (3 s).
    stranger = subprocess.run(["setpriv", "--reuid=12345", "--regid=12345", "--clear-groups", "python3", "-c", FLOOD_AS_STRANGER,
                               f"{reachable}/control.sock", "3"], capture_output=True, text=True, timeout=30)
    refusals = int(stranger.stdout.strip())
    # 2. Floods of the relay's refusals: full listener, bad headers, untrusted sources, dead upstreams.
    held = [connect(full) for _ in range(2)]
    for s in held:
        assert echoed(s, b"x") == b"x"
    for _ in range(200):
        refused(full)
    bad = []
    for _ in range(200):
        s = connect(ap)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        bad.append(s)
    for _ in range(200):
        refused(strict, V1)
    for _ in range(100):
        assert refused(down)  # both upstreams refused: 100 "trying" lines, 200 events, 200 hooks that cannot start
    for s in bad:
        closed_without_relay(s)
    # One line at once, then one per 5-s window that had more (a slow machine may take more than one).
    most = 2 + int((time.monotonic() - t0) / 5)
    time.sleep(5.5)  # the summaries
    cases = {"control socket: refused a client": refusals, "listener max_connections (4) reached": 200,
             "without a valid PROXY header": 200, "accept_proxy_from: refused a connection": 200,
             "failed (connect: ECONNREFUSED): trying": 100, "hook could not start": 200}
    for text, n in cases.items():
        print(f"\n{text}: {n} occurrences, {len(lines(d, text))} line(s)")
        assert n >= 100, (text, n)
        assert len(lines(d, text)) <= most, (text, lines(d, text)[:3])
        wait_for(lambda: counted(d, text) == n, timeout=3, what=f"{text}: all {n} counted")
    for s in held + bad:
        s.close()
    assert d.stop() == 0
    shutil.rmtree(reachable, ignore_errors=True)
