"""Issue 3, items 5 and 6: the live event stream (every event, in order, to every subscriber; a
subscriber that stops reading is cut off), and hostile input on the control socket."""
import json
import os
import shutil
import tempfile
import socket
import subprocess
import time

import pytest

from helpers import CTL, connect, free_port, listener, wait_for, is_root


def churn(port, n):
    for _ in range(n):
        connect(port).close()


def echo_ok(port):
    s = connect(port)
    s.sendall(b"alive?")
    s.settimeout(5)
    ok = s.recv(10) == b"alive?"
    s.close()
    return ok


def stat(d, key):
    return json.loads(d.ctl("stats", "--json").stdout)[key]


def test_followers_see_every_event_in_order(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ev", port, up.address, event_sides=["client"])])
    followers = [subprocess.Popen([CTL, "events", "--follow", "--socket", d.control], stdout=subprocess.PIPE, text=True)
                 for _ in range(3)]
    wait_for(lambda: stat(d, "subscribers") == 3, what="3 subscribers")
    churn(port, 1000)
    wait_for(lambda: stat(d, "events")["tcp:closed"] == 1000, timeout=30, what="1000 events")
    for f in followers:
        lines = [f.stdout.readline() for _ in range(1000)]
        events = [json.loads(l) for l in lines]
        assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + 1000))
        assert len({e["conid"] for e in events}) == 1000
        assert all(e["event"] == "tcp:closed" and e["reason"] == "fin" and e["listener"] == "ev" for e in events)
        assert set(events[0]) >= {"event", "reason", "conid", "peer_conid", "side", "listener", "local", "remote",
                                  "duration_ms", "bytes_in", "bytes_out"}
        f.kill()
    # Without --follow: the recent events, and an exit.
    p = d.ctl("events")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 1000
    assert d.stop() == 0


def test_subscriber_that_stops_reading_is_cut_off(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("slow", port, up.address)])
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(d.control)
    stuck.sendall(b'{"cmd":"events","follow":true}\n')
    # The good subscriber writes to a file: its pace is tcpopsctl's own, not that of a Python thread
    # competing with the churn below for the interpreter (a full pipe would stall tcpopsctl, and
    # tcpopsd would rightly cut it off too).
    out_path = os.path.join(d.tmp, "good.out")
    good = subprocess.Popen([CTL, "events", "--follow", "--socket", d.control], stdout=open(out_path, "w"))
    wait_for(lambda: stat(d, "subscribers") == 2, what="2 subscribers")

    def seen():
        with open(out_path) as f:
            return [l for l in f.read().splitlines() if l]
    t0 = time.monotonic()
    n = 0
    while "subscriber" not in d.logtext() or "cut off" not in d.logtext():
        churn(port, 200)
        n += 200
        assert time.monotonic() - t0 < 120, "the stuck subscriber was never cut off"
    assert stat(d, "subscribers") == 1, ([l for l in d.loglines() if "control" in l or "subscriber" in l], good.poll(), len(seen()))
    assert echo_ok(port)  # the relay kept working all along
    # Once every relay has ended, the good subscriber has seen every event, in order.
    wait_for(lambda: stat(d, "relays_open") == 0, timeout=60, what="every relay ended")
    events = stat(d, "events")
    total = sum(events.values())
    # Two events a relay (each side's FIN), one where the upstream connect timed out (a slow,
    # sanitized run overwhelms the Python echo server): the client side is then closed by tcpopsd.
    assert total >= 2 * n - events["tcp:timeout"]
    wait_for(lambda: len(seen()) == total, timeout=30, what="the good subscriber saw every event")
    seqs = [json.loads(l)["seq"] for l in seen()]
    assert seqs == list(range(1, total + 1))
    good.kill()
    stuck.close()
    assert d.stop() == 0


def test_hostile_requests_get_errors_and_daemon_keeps_relaying(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("h", port, up.address)])
    cases = {
        "not json at all": "malformed",
        "{\"cmd\": 5}": "wrong type",
        "{\"id\": 3, \"cmd\": \"state\", \"conid\": \"twelve\"}": "wrong type",
        "{\"id\": 4, \"cmd\": \"nonsense\"}": "unknown command",
        "{\"id\": 5}": "missing 'cmd'",
        "[1,2,3]": "",
        "{\"cmd\": \"state\"}": "missing 'conid'",
        "{\"cmd\": \"lifetime\", \"conid\": 1, \"seconds\": -4}": "seconds",
        "{\"cmd\": \"send\", \"conid\": 1, \"data\": \"***\"}": "base64",
        "{\"cmd\": \"conid\", \"host\": \"1.2.3.4\", \"port\": 99999}": "out of range",
    }
    for line, word in cases.items():
        a = json.loads(d.request(line))
        assert a["ok"] is False and word in a["error"], (line, a)
    a = json.loads(d.request('{"id": 3, "cmd": "state", "conid": "twelve"}'))
    assert a["id"] == 3
    a = json.loads(d.request('{"id": 7, "cmd": "state", "conid": 12}'))
    assert a == {"id": 7, "ok": True, "result": -1, "state": "gone"}
    # Several requests on one connection are answered in order.
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.control)
    s.sendall(b'{"id":1,"cmd":"stats"}\n{"id":2,"cmd":"bogus"}\n{"id":3,"cmd":"alive","conid":1}\n')
    f = s.makefile()
    assert [json.loads(f.readline())["id"] for _ in range(3)] == [1, 2, 3]
    s.close()
    assert echo_ok(port)
    assert d.stop() == 0


def test_huge_line_silent_client_and_200_clients(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("big", port, up.address)])
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(d.control)
    # A 10 MiB line: an error, then the connection is closed.
    big = socket.socket(socket.AF_UNIX)
    big.connect(d.control)
    big.settimeout(10)
    try:
        big.sendall(b"{\"cmd\":\"" + b"x" * (10 * 1024 * 1024) + b"\"}\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    try:
        while True:
            chunk = big.recv(4096)
            if not chunk:
                break
            answer += chunk
    except ConnectionResetError:
        pass
    assert b"longer than 65536" in answer
    big.close()
    assert echo_ok(port)
    # 200 clients at once, each asking for stats: each gets an answer (or an error), none hangs.
    socks = []
    for _ in range(200):
        c = socket.socket(socket.AF_UNIX)
        c.connect(d.control)
        socks.append(c)
    for c in socks:
        c.sendall(b'{"cmd":"stats"}\n')
    answered = 0
    for c in socks:
        c.settimeout(10)
        a = json.loads(c.makefile().readline())
        assert "ok" in a
        answered += a["ok"]
        c.close()
    assert answered == 200
    assert echo_ok(port)
    # The silent client is closed after its idle time; meanwhile nothing waited on it.
    silent.settimeout(20)
    t0 = time.monotonic()
    rest = silent.recv(4096)
    assert b"idle" in rest and time.monotonic() - t0 < 15
    assert d.stop() == 0


@pytest.mark.skipif(not is_root(), reason="needs root to run tcpopsctl as other users")
def test_peer_credentials_decide_access(tmp_path, daemon, echo):
    up = echo()
    # Mode 0666 lets anyone connect: SO_PEERCRED alone decides. nogroup's members are allowed.
    reachable = tempfile.mkdtemp(prefix="tcpopsd-auth-")  # other users can reach a socket here
    os.chmod(reachable, 0o755)
    d = daemon(listeners=[listener("auth", free_port(), up.address)],
               daemon={"control_mode": "0666", "control_group": "nogroup", "control_socket": f"{reachable}/control.sock"})

    ctl = os.path.join(reachable, "tcpopsctl")  # wherever the build is, other users can run this copy
    shutil.copy(CTL, ctl)

    def as_user(uid, gid):
        def drop():
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        return subprocess.run([ctl, "stats", "--socket", d.control], capture_output=True, text=True, preexec_fn=drop, cwd="/")

    stranger = as_user(12345, 12345)
    assert stranger.returncode == 2 and "permission denied" in stranger.stderr, stranger
    member = as_user(65534, 65534)  # nobody, whose group is nogroup
    assert member.returncode == 0 and "connections_open" in member.stdout, member
    assert "refused a client" in d.logtext()
    assert d.stop() == 0
    shutil.rmtree(reachable, ignore_errors=True)


def test_idle_clients_cannot_lock_the_control_socket(daemon, echo):
    """Issue 7, item 6: 3,000 authorised but idle clients used to make every tcpopsctl fail with
    "too many control clients" for up to 10 s. Now the longest-idle client makes room."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    up = echo()
    d = daemon(listeners=[listener("idle", free_port(), up.address)])
    idle = []
    for _ in range(3000):
        c = socket.socket(socket.AF_UNIX)
        c.setblocking(False)
        try:
            c.connect(d.control)
        except BlockingIOError:
            pass
        idle.append(c)
    t0 = time.monotonic()
    for i in range(5):
        r = d.ctl("stats", "--timeout", "5")
        assert r.returncode == 0 and "connections_open" in r.stdout, (i, r.returncode, r.stderr)
    assert time.monotonic() - t0 < 10
    for c in idle:
        c.close()
    assert d.stop() == 0


def test_a_trickling_client_does_not_keep_its_slot(daemon, echo):
    """A request line must be complete within 10 s of connecting (or of the last answer), however
    the bytes trickle in: one byte every 2 s used to keep a slot forever."""
    up = echo()
    d = daemon(listeners=[listener("slow", free_port(), up.address)])
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(d.control)
    slow.settimeout(0.2)
    t0 = time.monotonic()
    request = b'{"cmd":"stats"}' + b" " * 20 + b"\n"
    got = b""
    for i in range(len(request) - 1):  # never the newline
        try:
            slow.send(request[i:i + 1])
        except OSError:
            break
        # Reading all the while (not sleeping): a client tcpopsd closes has a second to take its
        # last line before it is dropped.
        until = time.monotonic() + 2
        while not got and time.monotonic() < until:
            try:
                got = slow.recv(4096)
                if not got:
                    break
            except socket.timeout:
                pass
            except OSError:
                break
        if got:
            break
    elapsed = time.monotonic() - t0
    assert b"no complete request line" in got, got
    assert 9 <= elapsed <= 14, elapsed
    slow.close()
    assert d.stop() == 0
