"""Issue 22: a crash loses nothing. tcpopsd is killed (SIGKILL, SIGSEGV, SIGABRT) under a
supervisor that keeps its fd store and restarts it as systemd does (fakestore.py; the real systemd
run is in test_container.py): relays, bytes, conids, late events and the event counters survive."""
import json
import os
import signal
import socket
import subprocess
import threading
import time

from fakestore import Supervisor
from helpers import CTL, connect, free_port, listener, read_records, render_config, wait_for, write_hook


def pattern(i, start, length):
    return bytes((i * 7 + k) % 251 for k in range(start, start + length))


class Streamer:
    """A client that sends a checksummed pattern in chunks and reads its echo back."""

    def __init__(self, port, i, chunk=4096, pause=0.005):
        self.i, self.chunk, self.pause = i, chunk, pause
        self.s = connect(port)
        self.s.settimeout(60)
        self.sent = 0
        self.got = bytearray()
        self.error = None
        self.go = threading.Event()
        self.go.set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer = threading.Thread(target=self._write, daemon=True)

    def start(self):
        self.reader.start()
        self.writer.start()
        return self

    def _read(self):
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return
                self.got.extend(d)
        except OSError as e:
            self.error = f"read: {e!r}"

    def _write(self):
        try:
            while self.go.is_set():
                self.s.sendall(pattern(self.i, self.sent, self.chunk))
                self.sent += self.chunk
                time.sleep(self.pause)
            self.s.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = f"write: {e!r}"

    def finish(self, timeout=60):
        self.go.clear()
        self.writer.join(timeout)
        self.reader.join(timeout)
        self.s.close()

    def verdict(self):
        ok = self.error is None and len(self.got) == self.sent and bytes(self.got) == pattern(self.i, 0, self.sent)
        return ok, f"client {self.i}: sent {self.sent}, got {len(self.got)}, error {self.error}"


def start(tmp_path, echo, **kw):
    up = echo()
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(render_config({"control_socket": str(tmp_path / "c.sock"), "shutdown_timeout": 2}, kw.get("events"), None,
                                 [listener("crash", port, up.address, **kw.get("listener", {}))]))
    sup = Supervisor(tmp_path, str(cfg)).start()
    return sup, port


def ctl(tmp_path, *args):
    r = subprocess.run([CTL, args[0], "--socket", str(tmp_path / "c.sock"), *args[1:]], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout


def conids(tmp_path):
    rows = json.loads(ctl(tmp_path, "list", "--json"))
    return {r["remote"]: r["conid"] for r in rows if r["side"] == "client"}


def test_sigkill_loses_no_relay_and_no_byte(tmp_path, echo):
    sup, port = start(tmp_path, echo)
    try:
        clients = [Streamer(port, i) for i in range(20)]
        wait_for(lambda: len(conids(tmp_path)) == 20, what="20 relays")
        before = conids(tmp_path)
        for c in clients:
            c.start()
        for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGSEGV, signal.SIGKILL):
            time.sleep(0.7)
            sup.restart_after(sig)
        time.sleep(0.7)
        assert conids(tmp_path) == before, "every client kept its conid"
        for c in clients:
            c.finish()
        bad = [v for ok, v in (c.verdict() for c in clients) if not ok]
        assert not bad, bad[:5]
        assert all(c.sent > 0 for c in clients)
        assert "took back 20 relay(s)" in sup.logtext()
    finally:
        sup.close()
