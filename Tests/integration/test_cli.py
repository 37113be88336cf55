"""Issue 8: the command lines an operator types in the first hour. tcpopsctl never acts on the
wrong connection or values, takes its global options before or after the command, prints the result
itself with --json, reports a refusal as a refusal, and both binaries say their version; tcpopsd
refuses a relay to itself and explains bad addresses and log targets."""
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from helpers import BIN, CTL, connect, echoed, free_port, is_root, listener, render_config, wait_for


def conid_of(d, s):
    return int(d.ctl("conid", f"127.0.0.1:{s.getsockname()[1]}").stdout)


def roundtrip(s, payload=b"ping"):
    return echoed(s, payload)


def test_a_missing_value_never_shifts_onto_the_conid(daemon, echo):
    """`TCPOPS_CONID=3 tcpopsctl keepalive-enable 1 30 3` used to set conid 3's keepalive to idle 1,
    count 30, interval 3: the user meant conid 1 and forgot a value. Commands that take values need
    the CONID first, always; a missing value is a usage error and nothing is changed."""
    up = echo()
    d = daemon(listeners=[listener("shift", free_port(), up.address)])
    a, b = connect(d_port(d)), connect(d_port(d))
    ca, cb = conid_of(d, a), conid_of(d, b)
    p = d.ctl("keepalive-enable", str(ca), "30", "3", env={"TCPOPS_CONID": str(cb)})
    assert p.returncode == 64 and "missing INTERVAL" in p.stderr, (p.returncode, p.stderr)
    for c in (ca, cb):
        assert json.loads(d.ctl("state", "--json", str(c)).stdout)["keepalive"] is None, "a keepalive was set"
    p = d.ctl("lifetime", "30", env={"TCPOPS_CONID": str(cb)})
    assert p.returncode == 64 and "missing SECONDS" in p.stderr, p.stderr
    # Negative numbers are values with a range error, not unknown options.
    p = d.ctl("lifetime", str(ca), "-1")
    assert p.returncode == 64 and "SECONDS -1 is out of range: 0 (none) or from 0.001 (1 ms) to 31536000" in p.stderr, p.stderr
    p = d.ctl("keepalive-enable", str(ca), "-5", "3", "2")
    assert p.returncode == 64 and "IDLE -5 is out of range" in p.stderr, p.stderr
    # The complete forms work; commands without values still default to $TCPOPS_CONID.
    assert d.ctl("keepalive-enable", str(ca), "30", "3", "2").stdout.strip() == "1"
    assert d.ctl("lifetime", str(ca), "600").stdout.strip() == "1"
    assert d.ctl("state", env={"TCPOPS_CONID": str(ca)}).stdout.strip() == "1 ok"
    a.close()
    b.close()
    assert d.stop() == 0


def d_port(d):
    """The port of the daemon's first listener (from its config file)."""
    for line in open(d.config_path):
        if line.startswith("listen = "):
            return int(line.split(":")[-1].strip().strip('"'))
    raise AssertionError("no listen line")


def test_global_options_before_or_after_the_command(daemon, echo):
    up = echo()
    d = daemon(listeners=[listener("glob", free_port(), up.address)])
    for args in (["--socket", d.control, "stats"], [f"--socket={d.control}", "--json", "stats"],
                 ["--json", "--socket", d.control, "--timeout", "5", "stats"], ["stats", "--socket", d.control, "--json"]):
        p = subprocess.run([CTL, *args], capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, (args, p.stderr)
        out = json.loads(p.stdout) if "--json" in args else None
        assert (out is not None and "accepted" in out) or "accepted" in p.stdout, (args, p.stdout)
    assert d.stop() == 0


def test_json_prints_the_result_itself(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("js", port, up.address)])
    s = connect(port)
    roundtrip(s)
    c = conid_of(d, s)
    rows = json.loads(d.ctl("list", "--json").stdout)
    assert isinstance(rows, list) and {r["conid"] for r in rows} == {c, rows[0]["peer_conid"] if rows[0]["conid"] == c else rows[1]["peer_conid"]} | {c}
    if shutil.which("jq"):
        jq = subprocess.run(f"{CTL} --socket {d.control} list --json | jq '.[].conid'", shell=True, capture_output=True, text=True)
        assert str(c) in jq.stdout.split(), jq
    assert json.loads(d.ctl("alive", "--json", str(c)).stdout) == 1
    assert json.loads(d.ctl("stats", "--json").stdout)["relays_open"] == 1
    assert json.loads(d.ctl("conid", "--json", "127.0.0.1", "--all").stdout)[-1] == c
    s.close()
    wait_for(lambda: json.loads(d.ctl("stats", "--json").stdout)["relays_open"] == 0, what="relay ended")
    # events: one event object per line, nothing else.
    lines = d.ctl("events", "--json").stdout.splitlines()
    objs = [json.loads(l) for l in lines]
    assert objs and all("event" in o and "id" not in o for o in objs), lines
    # An error: nothing on stdout, the message on stderr, exit 2.
    p = d.ctl("list", "--json", "--listener", "nope")
    assert p.returncode == 2 and p.stdout == "" and "no listener named" in p.stderr
    assert d.stop() == 0


@pytest.mark.skipif(not is_root(), reason="needs root to run tcpopsctl as another user")
def test_a_refused_client_is_told_so_every_time(daemon, echo):
    """The server used to close without reading the request, and the kernel reset the connection:
    25 of 30 refused clients saw "closed the connection without an answer" (69) instead of
    "permission denied" (2)."""
    up = echo()
    reachable = tempfile.mkdtemp(prefix="tcpopsd-refuse-")
    os.chmod(reachable, 0o755)
    d = daemon(listeners=[listener("r", free_port(), up.address)],
               daemon={"control_mode": "0666", "control_socket": f"{reachable}/control.sock"})
    ctl = os.path.join(reachable, "tcpopsctl")
    shutil.copy(CTL, ctl)

    def stranger():
        os.setgroups([])
        os.setgid(12345)
        os.setuid(12345)

    outcomes = []
    for _ in range(30):
        p = subprocess.run([ctl, "stats", "--socket", d.control], capture_output=True, text=True, preexec_fn=stranger, cwd="/")
        outcomes.append((p.returncode, "permission denied" in p.stderr))
    assert outcomes == [(2, True)] * 30, outcomes
    assert d.stop() == 0
    shutil.rmtree(reachable, ignore_errors=True)


def test_versions():
    for binary, name in ((BIN, "tcpopsd"), (CTL, "tcpopsctl")):
        p = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        assert p.returncode == 0 and p.stdout.startswith(f"{name} 0."), p.stdout
        rev = subprocess.run(["git", "-C", os.path.dirname(BIN), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True)
        if rev.returncode == 0 and os.environ.get("TCPOPS_GIT_REVISION"):
            assert "(git " in p.stdout, p.stdout


def test_list_says_which_connections_raise_events(daemon, echo):
    """closed_event = 1 (the default): every connection raises events, and list says yes (it said
    "no": it showed the per-connection flag that only closed_event = 2 reads)."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ev", port, up.address, event_sides=["client"])])
    s = connect(port)
    roundtrip(s)
    rows = {r["side"]: r for r in json.loads(d.ctl("list", "--json").stdout)}
    assert rows["client"]["events"] is True and rows["upstream"]["events"] is False  # event_sides = ["client"]
    table = d.ctl("list").stdout.splitlines()
    client_line = [l for l in table[1:] if " client " in l][0]
    assert client_line.split()[-1] == "yes", table
    s.close()
    assert d.stop() == 0


def check(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return subprocess.run([BIN, "--check-config", "--config", str(path)], capture_output=True, text=True, timeout=20), path


def test_a_relay_to_itself_is_a_config_error(tmp_path):
    port, other = free_port(), free_port()
    cases = [
        # listen == upstream
        (f'[[listener]]\nname = "loop"\nlisten = "127.0.0.1:{port}"\nupstream = "127.0.0.1:{port}"\n', 4),
        # the upstream is another listener of this daemon
        (f'[[listener]]\nname = "a"\nlisten = "127.0.0.1:{port}"\nupstream = "127.0.0.1:{other}"\n'
         f'[[listener]]\nname = "b"\nlisten = "127.0.0.1:{other}"\nupstream = "127.0.0.1:{port}"\n', 4),
        # a wildcard listener on the upstream's port catches 127.0.0.1 too
        (f'[[listener]]\nname = "w"\nlisten = "0.0.0.0:{port}"\nupstream = "127.0.0.1:{port}"\n', 4),
    ]
    for text, line in cases:
        p, path = check(tmp_path, text)
        assert p.returncode == 78, (text, p.stdout, p.stderr)
        assert f"{path}:{line}:" in p.stderr and "relays to" in p.stderr, p.stderr


def test_bad_addresses_and_log_targets_are_explained(tmp_path):
    p, path = check(tmp_path, '[[listener]]\nname = "v6"\nlisten = "::1:5060"\nupstream = "127.0.0.1:81"\n')
    assert p.returncode == 78 and f"{path}:3:" in p.stderr and '"[::1]:5060"' in p.stderr, p.stderr
    # --log-target journal where there is no journal: a clear error at start (71), not silence.
    cfg = tmp_path / "ok.toml"
    cfg.write_text(render_config({"control_socket": str(tmp_path / "c.sock")}, listeners=[listener("j", free_port(), "127.0.0.1:9")]))
    if not os.path.exists("/run/systemd/journal/socket"):
        p = subprocess.run([BIN, "--config", str(cfg), "--log-target", "journal"], capture_output=True, text=True, timeout=20)
        assert p.returncode == 71 and "no journal socket" in p.stderr, (p.returncode, p.stderr)
    elif shutil.which("unshare") and is_root():
        # Hide the running journal in a private mount namespace.
        p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs tmpfs /run/systemd/journal && exec {BIN} --config {cfg} --log-target journal"],
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 71 and "no journal socket" in p.stderr, (p.returncode, p.stderr)


def test_the_rough_edges_a_newcomer_hit(daemon, echo):
    """Issue 19: stats without the workers line its docs show; `--timeout -1` said "Missing value";
    a value found wrong printed every command's usage, not the command's own; a connection with only
    TCP_USER_TIMEOUT showed KEEPALIVE off with no sign of it; `events --follow` exited 69 without a
    word when tcpopsd stopped."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("edges", port, up.address, user_timeout=30)])
    s = connect(port)
    assert echoed(s, b"x") == b"x"
    stats = d.ctl("stats").stdout.splitlines()
    assert any(l.startswith("workers ") and int(l.split()[1]) >= 1 for l in stats), stats
    p = d.ctl("stats", "--timeout", "-1")
    assert p.returncode == 64 and "--timeout -1.0 is out of range" in p.stderr, (p.returncode, p.stderr)
    p = d.ctl("lifetime", "1", "abc")
    assert p.returncode == 64 and "Usage: tcpopsctl lifetime" in p.stderr and "SUBCOMMANDS" not in p.stderr, p.stderr
    table = d.ctl("list").stdout
    client = [l for l in table.splitlines() if " client " in l][0]
    assert "off,ut=30000ms" in client, table
    follow = subprocess.Popen([CTL, "events", "--follow", "--socket", d.control], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    time.sleep(0.5)
    s.close()
    assert d.stop() == 0
    out, err = follow.communicate(timeout=15)
    assert follow.returncode == 69 and "the event stream ended" in err, (follow.returncode, err)


def test_terminal_lines_are_short(daemon, echo, tmp_path):
    """Issue 19: on a terminal an event was a ~400-character line (every TCP_INFO field) and each hook
    line repeated the hook's whole argv. The journal keeps every field; stderr keeps what a reader
    needs."""
    from helpers import hooked, reset_close
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("short", port, up.address)], events=hooked(tmp_path))
    s = connect(port)
    assert echoed(s, b"x") == b"x"
    reset_close(s)
    wait_for(lambda: "hook exited" in d.logtext(), what="a hook's line")
    lines = d.loglines()
    event = [l for l in lines if l.startswith("NOTICE tcp:reset on conid")][0]
    assert len(event) < 200 and "tcp_rtt" not in event and "errno=ECONNRESET" in event and "bytes_in=1" in event, event
    hook = [l for l in lines if "hook exited" in l][0]
    assert "hook.sh" not in hook and "hook_event=tcp:" in hook and len(hook) < 160, hook
    ended = [l for l in lines if "relay ended" in l]
    assert all(len(l) < 260 for l in ended), ended
    assert d.stop() == 0
