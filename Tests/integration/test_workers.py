"""[daemon] workers: one event loop per worker thread, all accepting on the same listening
sockets. Each scenario runs with 1 worker and with 4 (more workers than this machine has CPUs):
bytes relayed intact, conids unique, control requests reaching the worker that owns a conid,
`list`/`stats`/the event stream combining every worker, reload and drain."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from helpers import BIN, CTL, connect, free_port, listener, wait_for


def stats(d):
    return json.loads(d.ctl("stats", "--json").stdout)


@pytest.mark.parametrize("value,ok", [("1", True), ("4", True), ('"auto"', True), ("0", False), ("257", False),
                                      ('"many"', False), ("2.5", False)])
def test_workers_key_is_checked(tmp_path, value, ok):
    p = tmp_path / "t.toml"
    p.write_text(f'[daemon]\nworkers = {value}\n[[listener]]\nname = "a"\nlisten = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\n')
    r = subprocess.run([BIN, "--config", str(p), "--check-config"], capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 78 and f"{p}:2:" in r.stderr and "workers" in r.stderr, r.stderr


@pytest.mark.parametrize("workers", [1, 4])
def test_relays_and_control_across_workers(daemon, echo, workers):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("w", port, up.address)], daemon={"workers": workers})
    assert f"{workers} worker(s)" in d.logtext()

    # Concurrent streams, each checksummed end to end.
    errors, results = [], {}

    def stream(i):
        try:
            s = connect(port)
            data = os.urandom(256 * 1024)
            t = threading.Thread(target=s.sendall, args=(data,))
            t.start()
            got = b""
            while len(got) < len(data):
                chunk = s.recv(65536)
                assert chunk, "closed early"
                got += chunk
            t.join()
            results[i] = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            s.close()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 32 and all(results.values()), (errors, results)

    # Held connections: `list` shows both sides of each, conids unique and in order; each conid can
    # be steered whichever worker holds it.
    held = [connect(port) for _ in range(24)]
    for s in held:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    rows = json.loads(d.ctl("list", "--json").stdout)
    conids = [r["conid"] for r in rows]
    assert len(rows) == 48 and len(set(conids)) == 48 and conids == sorted(conids)
    st = stats(d)
    assert st["relays_open"] == 24 and st["connections_open"] == 48 and st["workers"] == workers
    assert st["accepted"] == 32 + 24
    by_port = {r["remote"]: r["conid"] for r in rows if r["side"] == "client"}
    for s in held[:12]:
        conid = by_port["127.0.0.1:%d" % s.getsockname()[1]]
        assert d.ctl("state", str(conid)).stdout.strip() == "1 ok"
        assert d.ctl("lifetime", str(conid), "600").stdout.strip() == "1"
        assert d.ctl("close", str(conid)).stdout.strip() == "1"
        s.settimeout(10)
        assert s.recv(10) == b""  # closed by tcpopsd
        assert d.ctl("state", str(conid)).stdout.strip() == "-1 gone"
    wait_for(lambda: stats(d)["relays_open"] == 12, what="12 relays left")
    # An unknown conid is gone everywhere.
    assert d.ctl("alive", "999999").stdout.strip() == "-1"
    for s in held[12:]:
        s.close()
    wait_for(lambda: stats(d)["relays_open"] == 0, what="every relay ended")
    st = stats(d)
    assert st["events"]["tcp:closed"] == 2 * 32 + 2 * 12  # both sides of each relay whose peers closed
    assert d.stop() == 0


@pytest.mark.parametrize("workers", [1, 4])
def test_event_stream_numbers_every_event_once(daemon, echo, workers):
    """Events from every worker reach one stream: seq runs 1, 2, 3... without a gap or a repeat,
    and every conid's event is there once."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ev", port, up.address)], daemon={"workers": workers})
    follow = subprocess.Popen([CTL, "events", "--socket", d.control, "--follow", "--json"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    n = 200

    def churn(k):
        for _ in range(k):
            s = connect(port)
            s.sendall(b"ab")
            s.recv(2)
            s.close()

    threads = [threading.Thread(target=churn, args=(n // 8,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    events = []
    end = time.time() + 20
    while len(events) < 2 * n and time.time() < end:
        line = follow.stdout.readline()
        if line:
            events.append(json.loads(line))
    follow.kill()
    follow.wait()
    assert len(events) == 2 * n
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + 2 * n))
    conids = [e["conid"] for e in events]
    assert len(set(conids)) == 2 * n
    assert d.stop() == 0


def test_reload_and_drain_with_4_workers(daemon, echo, tmp_path):
    """Under load from several clients, a reload moves a listener (the old socket retired after
    every worker let go of it): nothing refused or reset. SIGTERM then drains every worker's
    relays and exits 0."""
    up = echo()
    a, b, moved = free_port(), free_port(), free_port()
    d = daemon(listeners=[listener("stay", a, up.address), listener("move", b, up.address)], daemon={"workers": 4})
    stop = threading.Event()
    failures, done = [], [0]

    def churn():
        while not stop.is_set():
            try:
                s = connect(a)
                s.sendall(b"ping")
                assert s.recv(4) == b"ping"
                s.close()
                done[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    with open(d.config_path) as f:
        text = f.read()
    with open(d.config_path, "w") as f:
        f.write(text.replace(f"127.0.0.1:{b}", f"127.0.0.1:{moved}"))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: 'listener "move" on 127.0.0.1:%d removed' % b in d.logtext(), what="the old socket retired")
    s = connect(moved)
    s.sendall(b"moved")
    assert s.recv(5) == b"moved"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", b), timeout=2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(10)
    assert not failures and done[0] > 50, (failures[:3], done[0])
    # Held relays on several workers drain on SIGTERM once their clients finish.
    held = [connect(a) for _ in range(16)]
    for h in held:
        h.sendall(b"h")
        assert h.recv(1) == b"h"
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert d.proc.poll() is None, "a relay was still open: tcpopsd must wait for it"
    for h in held:
        h.sendall(b"last")
        assert h.recv(4) == b"last"
        h.close()
    s.close()
    assert d.proc.wait(15) == 0
    assert "stopped" in d.logtext()
