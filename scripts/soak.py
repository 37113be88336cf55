#!/usr/bin/env python3
"""The soak (`make soak MINUTES=N`): tcpopsd (the release build) under churn, faults and reloads for
N minutes, on loopback. Prints a sample every 10 s (RSS, fds, relays, events) and a summary; exits 1
if a byte arrived wrong, a client of the stable listener was refused or reset, a connection raised
two events, or RSS or fds kept growing after warm-up.

What runs at once:
- churn: 6 threads connect, send a random payload (1 B to 256 KiB), read the echo, check it (sha256),
  and close with FIN, or reset before or halfway through the payload;
- streams: 4 long-lived connections echoing 64 KiB blocks, checked;
- faults: an upstream that resets mid-answer, a listener whose upstream refuses, clients that go idle
  past the lifetime, clients that stop reading;
- reloads: every 2 s, alternating the stable listener's options and moving another listener;
- tcpopsctl: list and stats every 5 s; an events follower checks one event per connection side.
"""
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "integration"))
os.environ.setdefault("TCPOPSD", os.path.join(HERE, "..", ".build", "release", "tcpopsd"))
os.environ.setdefault("TCPOPSCTL", os.path.join(HERE, "..", ".build", "release", "tcpopsctl"))
import helpers  # noqa: E402
from helpers import CTL, Daemon, EchoServer, free_port, listener, render_config, reset_close  # noqa: E402

MINUTES = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.v = {}

    def add(self, k, n=1):
        with self.lock:
            self.v[k] = self.v.get(k, 0) + n

    def get(self, k):
        with self.lock:
            return self.v.get(k, 0)


counts = Counts()
stop = threading.Event()


def recv_exact(s, n, timeout=30):
    s.settimeout(timeout)
    got = bytearray()
    while len(got) < n:
        d = s.recv(min(262144, n - len(got)))
        if not d:
            break
        got += d
    return bytes(got)


def churn(port, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        kind = rng.choice(["fin", "fin", "fin", "rst", "rst-mid"])
        payload = rng.randbytes(rng.choice([1, 64, 1400, 16384, 65536, 262144]))
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            counts.add("churn_refused")
            continue
        except OSError:
            counts.add("churn_connect_errors")
            continue
        try:
            if kind == "fin":
                s.sendall(payload)
                got = recv_exact(s, len(payload))
                s.shutdown(socket.SHUT_WR)
                if hashlib.sha256(got).digest() == hashlib.sha256(payload).digest() and s.recv(1) == b"":
                    counts.add("bytes_verified", len(payload))
                    counts.add("churn_fin")
                else:
                    counts.add("churn_wrong_bytes")
                s.close()
            else:
                s.sendall(payload if kind == "rst" else payload[: len(payload) // 2])
                reset_close(s)
                counts.add("churn_rst")
        except ConnectionResetError:
            counts.add("churn_reset")
            s.close()
        except OSError:
            counts.add("churn_other_errors")
            s.close()


def stream(port):
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            counts.add("streams_opened")
            while not stop.is_set():
                block = os.urandom(65536)
                s.sendall(block)
                if recv_exact(s, len(block)) != block:
                    counts.add("stream_wrong_bytes")
                    break
                counts.add("bytes_verified", len(block))
            s.close()
        except OSError:
            counts.add("stream_errors")
            time.sleep(0.5)


def rst_upstream():
    """An upstream that answers half and resets."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)

    def serve():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            try:
                c.settimeout(5)
                c.recv(65536)
                c.sendall(b"half an answer")
            except OSError:
                pass
            reset_close(c)

    threading.Thread(target=serve, daemon=True).start()
    return srv


def faults(port_rst, port_refused, port_idle):
    rng = random.Random(7)
    idle = []
    deaf = []
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port_rst), timeout=5)
            s.sendall(b"question")
            s.settimeout(5)
            while s.recv(65536):
                pass
            s.close()
            counts.add("fault_upstream_rst")
        except OSError:
            counts.add("fault_upstream_rst")
        try:
            s = socket.create_connection(("127.0.0.1", port_refused), timeout=5)
            s.settimeout(5)
            s.recv(10)
            s.close()
            counts.add("fault_refused")
        except OSError:
            counts.add("fault_refused")
        try:
            idle.append(socket.create_connection(("127.0.0.1", port_idle), timeout=5))  # lifetime ends them
            counts.add("fault_idle")
            d = socket.socket()
            d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            d.connect(("127.0.0.1", port_idle))
            d.sendall(os.urandom(rng.choice([100_000, 1_000_000])))  # echoed back; never read
            deaf.append(d)
            counts.add("fault_deaf")
        except OSError:
            pass
        for lst in (idle, deaf):
            while len(lst) > 50:
                lst.pop(0).close()
        time.sleep(0.2)
    for s in idle + deaf:
        s.close()


def rss_kb(pid):
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])


def main():
    tmp = tempfile.mkdtemp(prefix="tcpopsd-soak-")
    up = EchoServer()
    rst = rst_upstream()
    p_stable, p_move_a, p_move_b, p_rst, p_refused, p_idle = (free_port() for _ in range(6))
    dead = free_port()
    hook = os.path.join(tmp, "hook.sh")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(hook, 0o755)
    events = {"callback": [hook], "max_running_hooks": 4, "queue_limit": 2000, "hook_timeout": 5}

    def listeners(i):
        stable = {"lifetime": 60, "keepalive": {"idle": 30, "count": 3, "interval": 5}} if i % 2 else {"connect_timeout": 3}
        return [listener("stable", p_stable, up.address, **stable),
                listener("moving", p_move_a if i % 2 == 0 else p_move_b, up.address),
                listener("rst", p_rst, f"127.0.0.1:{rst.getsockname()[1]}"),
                listener("refused", p_refused, f"127.0.0.1:{dead}"),
                listener("idle", p_idle, up.address, lifetime=2, user_timeout=10)]

    d = Daemon(tmp, listeners=listeners(0), events=events, daemon={"max_connections": 20000, "log_level": "notice"})
    d.start()
    follower = subprocess.Popen([CTL, "events", "--follow", "--socket", d.control], stdout=subprocess.PIPE, text=True)
    seen = {}
    dup = []

    def follow():
        for line in follower.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            counts.add(f"event {e['event']} {e['reason']} {e['side']}")
            if e["conid"] in seen:
                dup.append(e)
            seen[e["conid"]] = True

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.5)
    threads = [threading.Thread(target=churn, args=(p_stable, i)) for i in range(6)]
    threads += [threading.Thread(target=stream, args=(p_stable,)) for _ in range(4)]
    threads += [threading.Thread(target=faults, args=(p_rst, p_refused, p_idle))]
    for t in threads:
        t.daemon = True
        t.start()
    start = time.monotonic()
    end = start + MINUTES * 60
    reloads = 0
    samples = []
    next_sample = start + 10
    next_reload = start + 2
    next_ctl = start + 5
    print(f"soak: {MINUTES:g} min, tcpopsd pid {d.proc.pid}, {os.environ['TCPOPSD']}", flush=True)
    while time.monotonic() < end and d.proc.poll() is None:
        now = time.monotonic()
        if now >= next_reload:
            reloads += 1
            with open(d.config_path, "w") as f:
                f.write(render_config({"control_socket": d.control, "shutdown_timeout": 5, "max_connections": 20000,
                                       "log_level": "notice"}, events, None, listeners(reloads)))
            d.proc.send_signal(signal.SIGHUP)
            next_reload = now + 2
        if now >= next_ctl:
            for cmd in ("list", "stats"):
                r = subprocess.run([CTL, cmd, "--socket", d.control, "--timeout", "5"], capture_output=True, text=True)
                counts.add("ctl_ok" if r.returncode == 0 else "ctl_failed")
            next_ctl = now + 5
        if now >= next_sample:
            stats = dict(l.split(" ", 1) for l in subprocess.run([CTL, "stats", "--socket", d.control], capture_output=True,
                                                                   text=True).stdout.splitlines() if " " in l)
            sample = (round(now - start), rss_kb(d.proc.pid), len(os.listdir(f"/proc/{d.proc.pid}/fd")),
                      stats.get("relays_open", "?"), stats.get("accepted", "?"), stats.get("hooks.queued", "?"))
            samples.append(sample)
            print(f"t={sample[0]:>5}s rss={sample[1]} KiB fds={sample[2]} relays={sample[3]} accepted={sample[4]} "
                  f"hooks_queued={sample[5]} verified={counts.get('bytes_verified') / 1e9:.2f} GB reloads={reloads}", flush=True)
            next_sample = now + 10
        time.sleep(0.05)
    alive = d.proc.poll() is None
    stop.set()
    for t in threads:
        t.join(30)
    time.sleep(2)
    follower.kill()
    rc = d.stop() if alive else d.proc.returncode
    errors_in_log = [l for l in d.loglines() if l.startswith("ERROR")]
    print("\n== soak summary")
    print(f"minutes {MINUTES:g}; reloads {reloads}; tcpopsd exit {rc}")
    for k in sorted(counts.v):
        print(f"  {k}: {counts.v[k]}")
    warm = [s for s in samples if s[0] >= 60] or samples
    if warm:
        rss = [s[1] for s in warm]
        fds = [s[2] for s in warm]
        print(f"RSS after warm-up: min {min(rss)} KiB, max {max(rss)} KiB, last {rss[-1]} KiB; fds min {min(fds)} max {max(fds)}")
    failures = []
    if not alive:
        failures.append("tcpopsd died")
    if rc != 0:
        failures.append(f"tcpopsd exited {rc}")
    for k in ("churn_wrong_bytes", "stream_wrong_bytes", "churn_refused", "churn_reset", "churn_other_errors", "ctl_failed"):
        if counts.get(k):
            failures.append(f"{k} = {counts.get(k)}")
    if dup:
        failures.append(f"{len(dup)} connections raised a second event, e.g. {dup[0]}")
    if errors_in_log:
        failures.append(f"{len(errors_in_log)} ERROR lines in the log, e.g. {errors_in_log[0]}")
    if len(warm) >= 6:
        half = len(warm) // 2
        first, second = warm[:half], warm[half:]
        if min(s[1] for s in second) > max(s[1] for s in first) + 8192:
            failures.append("RSS kept growing after warm-up")
    print("soak: " + ("FAILED: " + "; ".join(failures) if failures else "passed"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
