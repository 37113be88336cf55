"""Issue 18, item 9: the smaller rough edges. A control socket path longer than a Unix address
holds is an error (it was cut, and tcpopsctl talked to another socket); a lifetime follows the
file's rule for durations (1e-300 meant "none"); an id past 2^63 is named out of range; a stop with
queued hooks keeps to shutdown_timeout; --check-config refuses what would fail at start (a wildcard
listener beside a specific one on the same port, a control socket where no folder can be)."""
import json
import os
import signal
import subprocess
import time

from helpers import BIN, CTL, Daemon, connect, free_port, listener, render_config, wait_for


def test_a_socket_path_too_long_is_an_error_not_another_socket(tmp_path, echo):
    # A daemon whose socket path is exactly 107 bytes; the same path with more after it used to be
    # cut to 107 bytes and reach this daemon.
    base = tmp_path / "s"
    base.mkdir()
    name = "c" * (107 - len(str(base)) - 1)
    path = f"{base}/{name}"
    assert len(path) == 107
    up = echo()
    d = Daemon(tmp_path, daemon={"control_socket": path}, listeners=[listener("p", free_port(), up.address)])
    d.start()
    assert subprocess.run([CTL, "stats", "--socket", path], capture_output=True, text=True).returncode == 0
    p = subprocess.run([CTL, "stats", "--socket", path + "-other"], capture_output=True, text=True)
    assert p.returncode == 64, (p.returncode, p.stdout, p.stderr)
    assert "108 bytes" in p.stderr or "holds 1 to 107" in p.stderr, p.stderr
    assert "connections_open" not in p.stdout
    assert d.stop() == 0


def test_control_values_follow_the_files_rules(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("v", port, up.address)])
    c = connect(port)
    conid = wait_for(lambda: [r["conid"] for r in json.loads(d.ctl("list", "--json").stdout) if r["side"] == "client"], what="a relay")[0]
    for bad in (1e-300, 0.0005, -1, 31536001):
        a = json.loads(d.request({"id": 1, "cmd": "lifetime", "conid": conid, "seconds": bad}))
        assert a["ok"] is False and "0.001" in a["error"], (bad, a)
    for good in (0, 2.5, 0.001):  # (the last ends the relay a millisecond later)
        a = json.loads(d.request({"id": 1, "cmd": "lifetime", "conid": conid, "seconds": good}))
        assert a["ok"] is True and a["result"] == 1, (good, a)
    p = d.ctl("lifetime", "1", "1e-300")
    assert p.returncode == 64 and "0.001" in p.stderr, (p.returncode, p.stderr)
    # An id past 2^63: named out of range (it said "expected an integer, got an integer").
    a = json.loads(d.request('{"id": 9223372036854775808, "cmd": "stats"}'))
    assert a["ok"] is False and "out of range" in a["error"] and "expected an integer, got an integer" not in a["error"], a
    a = json.loads(d.request('{"id": 9223372036854775807, "cmd": "stats"}'))
    assert a["ok"] is True and a["id"] == 9223372036854775807
    c.close()
    assert d.stop() == 0


def test_a_stop_with_queued_hooks_keeps_to_shutdown_timeout(tmp_path, echo):
    up = echo()
    port = free_port()
    hook = tmp_path / "slow.sh"
    hook.write_text("#!/bin/sh\nsleep 30\n")
    hook.chmod(0o755)
    d = Daemon(tmp_path, daemon={"shutdown_timeout": 3}, events={"callback": [str(hook)], "max_running_hooks": 2},
               listeners=[listener("h", port, up.address)])
    d.start()
    held = [connect(port) for _ in range(50)]
    for _ in range(500):
        connect(port).close()
    wait_for(lambda: "queue" in d.ctl("stats").stdout or True, what="")
    time.sleep(0.5)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
    took = time.monotonic() - t0
    print(f"\nstop with 50 relays, 2 hooks running and ~1,000 queued, shutdown_timeout = 3: {took:.2f} s")
    assert took < 3.5, took
    for s in held:
        s.close()


def check(tmp_path, text):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    return subprocess.run([BIN, "--check-config", "--config", str(cfg)], capture_output=True, text=True, timeout=30)


def test_check_config_refuses_what_would_fail_at_start(tmp_path):
    port = free_port()
    sock = str(tmp_path / "c.sock")
    text = render_config({"control_socket": sock}, listeners=[{"name": "any", "listen": f"0.0.0.0:{port}", "upstream": "127.0.0.1:9"},
                                                              {"name": "lo", "listen": f"127.0.0.1:{port}", "upstream": "127.0.0.1:9"}])
    p = check(tmp_path, text)
    assert p.returncode == 78 and f"127.0.0.1:{port} overlaps 0.0.0.0:{port} of listener \"any\"" in p.stderr, p.stderr
    # Different families do not overlap (IPv6 sockets are IPV6_V6ONLY), nor do different ports.
    text = render_config({"control_socket": sock}, listeners=[{"name": "any", "listen": f"0.0.0.0:{port}", "upstream": "127.0.0.1:9"},
                                                              {"name": "v6", "listen": f"[::1]:{port}", "upstream": "127.0.0.1:9"}])
    assert check(tmp_path, text).returncode == 0
    # What tcpopsd would fail to start with, so that ExecStartPre= fails instead of ExecStart=.
    for place, why in (("/etc/passwd/tcpopsd/control.sock", "is not a folder"), ("/proc/1/nope/control.sock", "may not write")):
        p = check(tmp_path, render_config({"control_socket": place}, listeners=[listener("x", port, "127.0.0.1:9")]))
        assert p.returncode == 78 and why in p.stderr, (place, p.stderr)
        # A start reads the file alike: refused as a bad file (78), where it failed to bind (71).
        start = subprocess.run([BIN, "--config", str(tmp_path / "c.toml"), "--log-target", "stderr"], capture_output=True, text=True,
                               timeout=30)
        assert start.returncode == 78 and why in start.stderr, (place, start.returncode, start.stderr)
    # A folder that does not exist yet, where it can be made, is fine.
    p = check(tmp_path, render_config({"control_socket": str(tmp_path / "new" / "dir" / "c.sock")}, listeners=[listener("x", port, "127.0.0.1:9")]))
    assert p.returncode == 0, p.stderr
