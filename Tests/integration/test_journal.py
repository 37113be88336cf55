"""Issue 2, item 9: events reach a real journal with their SPEC fields. Starts a standalone
systemd-journald (as root) when none is running, and stops it afterwards."""
import json
import os
import shutil
import subprocess
import time

import pytest

from helpers import connect, free_port, listener, reset_close, wait_for, is_root, journal_alive

SOCKET = "/run/systemd/journal/socket"


@pytest.fixture(scope="module")
def journal():
    if journal_alive(SOCKET):
        yield None
        return
    if not is_root() or not os.path.exists("/lib/systemd/systemd-journald") or not shutil.which("journalctl"):
        pytest.skip("no journal socket, and a journald cannot be started here (needs root and systemd's journald)")
    os.makedirs("/run/systemd/journal", exist_ok=True)
    for name in ("socket", "stdout", "dev-log", "syslog", "io.systemd.journal"):  # left by a journald that died
        try:
            os.unlink(f"/run/systemd/journal/{name}")
        except FileNotFoundError:
            pass
    p = subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: journal_alive(SOCKET), timeout=10, what="journald socket")
    yield p
    p.terminate()
    p.wait(10)
    for name in ("socket", "stdout", "dev-log", "syslog", "io.systemd.journal"):
        try:
            os.unlink(f"/run/systemd/journal/{name}")
        except FileNotFoundError:
            pass
    try:
        os.unlink("/dev/log")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass


def journal_entries(*matches):
    p = subprocess.run(["journalctl", "--no-pager", "-o", "json", *matches], capture_output=True, text=True)
    return [json.loads(l) for l in p.stdout.splitlines() if l.strip()]


def test_reset_event_in_journal_with_fields(journal, daemon, echo, tmp_path):
    up = echo(mode="hold")
    port = free_port()
    # A hook that prints: its output and exit entries must not answer TCPOPS_EVENT=tcp:reset (they
    # did: three entries per reset; issue 19).
    hook = tmp_path / "talk.sh"
    hook.write_text("#!/bin/sh\necho said something\n")
    hook.chmod(0o755)
    d = daemon(listeners=[listener("journaled", port, up.address)], log_target="journal", routes={"tcp:reset": [str(hook)]})
    s = connect(port)
    cport = s.getsockname()[1]
    s.sendall(b"0123456789")
    time.sleep(0.3)
    reset_close(s)
    pid = str(d.proc.pid)

    def found():
        return [e for e in journal_entries("TCPOPS_EVENT=tcp:reset", f"_PID={pid}") if e.get("TCPOPS_REMOTE") == f"127.0.0.1:{cport}"]

    entries = wait_for(found, timeout=10, what="journal entry")
    conid = entries[0]["TCPOPS_CONID"]
    hooks = wait_for(lambda: [e for e in journal_entries(f"TCPOPS_CONID={conid}", f"_PID={pid}") if "TCPOPS_HOOK" in e and
                              "TCPOPS_HOOK_STATUS" in e], timeout=10, what="the hook's exit entry")
    assert hooks[0]["TCPOPS_HOOK_EVENT"] == "tcp:reset" and "TCPOPS_EVENT" not in hooks[0]
    assert any(e.get("MESSAGE") == "hook output: said something" for e in journal_entries(f"TCPOPS_CONID={conid}", f"_PID={pid}"))
    entries = [e for e in journal_entries("TCPOPS_EVENT=tcp:reset", f"_PID={pid}")]
    assert len(entries) == 1, [e.get("MESSAGE") for e in entries]
    e = entries[0]
    assert e["SYSLOG_IDENTIFIER"] == "tcpopsd"
    assert e["TCPOPS_REASON"] == "rst" and e["TCPOPS_SIDE"] == "client" and e["TCPOPS_LISTENER"] == "journaled"
    assert e["TCPOPS_LOCAL"] == f"127.0.0.1:{port}"
    assert e["TCPOPS_BYTES_IN"] == "10" and int(e["TCPOPS_DURATION_MS"]) >= 250
    assert int(e["TCPOPS_CONID"]) > 0 and int(e["TCPOPS_PEER_CONID"]) > 0
    assert e["MESSAGE_ID"] == "6493216fb804485a9b6bdb453f8e94e3"
    assert e["PRIORITY"] == "5"
    assert "tcp:reset" in e["MESSAGE"]
    assert d.stop() == 0
    # The relay's end and the daemon's stop are there too, and nothing went to stderr instead.
    assert journal_entries(f"_PID={pid}", "MESSAGE_ID=fcd51e0ab813459e80e9ce6c6334e826")
    assert "tcp:reset" not in d.logtext()


def test_relay_ended_in_journal_with_fields(journal, daemon, echo):
    """A relay tcpopsd closes (no events) is logged at info with both sides' reasons and bytes."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("summed", port, up.address)], log_target="journal")
    s = connect(port)
    cport = s.getsockname()[1]
    s.sendall(b"0123456789")
    assert s.recv(100) == b"0123456789"
    rows = json.loads(d.ctl("list", "--json").stdout)
    conid = [r for r in rows if r["side"] == "client"][0]["conid"]
    assert d.ctl("close", str(conid)).returncode == 0
    pid = str(d.proc.pid)

    def found():
        return [e for e in journal_entries("MESSAGE_ID=387290ab5ecf440084a71591be7f39f2", f"_PID={pid}")
                if e.get("TCPOPS_REMOTE") == f"127.0.0.1:{cport}"]

    [e] = wait_for(found, timeout=10, what="the relay's end in the journal")
    assert e["PRIORITY"] == "6" and e["SYSLOG_IDENTIFIER"] == "tcpopsd"
    assert e["MESSAGE"].startswith(f"relay ended: conid {conid} <-> {int(conid) + 1} (closed by tcpopsctl")
    assert e["TCPOPS_CONID"] == str(conid) and e["TCPOPS_PEER_CONID"] == str(int(conid) + 1)
    assert e["TCPOPS_SIDE"] == "client" and e["TCPOPS_LISTENER"] == "summed"
    assert e["TCPOPS_LOCAL"] == f"127.0.0.1:{port}"
    assert e["TCPOPS_REASON"] == "local" and e["TCPOPS_ORIGIN"] == "local"
    assert e["TCPOPS_CLIENT_REASON"] == "local" and e["TCPOPS_UPSTREAM_REASON"] == "local"
    assert e["TCPOPS_BYTES_IN"] == "10" and e["TCPOPS_BYTES_OUT"] == "10"
    assert e["TCPOPS_BYTES_TO_UPSTREAM"] == "10" and e["TCPOPS_BYTES_TO_CLIENT"] == "10"
    assert int(e["TCPOPS_DURATION_MS"]) >= 0
    s.close()
    assert d.stop() == 0
