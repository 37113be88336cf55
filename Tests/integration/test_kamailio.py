"""Issue 19: the tcpops way of working end to end. Kamailio (Debian's 5.6) stands behind tcpopsd
with contrib/kamailio/kamailio.cfg as it is shipped (paths and ports put in): tcpopsd relays each
phone's TCP connection to it with a PROXY header (v1: Kamailio 5.6 reads v2's ports byte-swapped,
kamailio#3683; seen here: $sp 41361 for port 37281), and Kamailio's script steers the phone's
connection by its address ($si:$sp) through tcpopsctl, as Kamailio's own tcpops functions would:
lifetime from the REGISTER's Expires, keepalive on. SIPp phones register with different Expires
and stay connected, idle: each connection gets its own lifetime and keepalive, and the one whose
registration runs out first is closed by tcpopsd with tcp:timeout, reason lifetime."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from helpers import CTL, ROOT, Daemon, free_port, hooked, listener, wait_for

pytestmark = pytest.mark.skipif(not shutil.which("kamailio") or not shutil.which("sipp"),
                                reason="needs kamailio and sipp (make deps installs kamailio and sip-tester)")

CONTRIB = os.path.join(ROOT, "contrib", "kamailio")
GRACE = 1


def kamailio_config(tmp_path, port, control):
    """contrib/kamailio/kamailio.cfg with this test's tcpopsctl, control socket, port and a grace of
    1 s (the shipped file says 10); nothing else changed."""
    text = open(os.path.join(CONTRIB, "kamailio.cfg")).read()
    text = re.sub(r'#!define TCPOPSCTL "[^"]*"', f'#!define TCPOPSCTL "{CTL}"', text)
    text = re.sub(r'#!define CONTROL_SOCKET "[^"]*"', f'#!define CONTROL_SOCKET "{control}"', text)
    text = re.sub(r"#!define LIFETIME_GRACE \d+", f"#!define LIFETIME_GRACE {GRACE}", text)
    text = text.replace("listen=tcp:127.0.0.1:5070", f"listen=tcp:127.0.0.1:{port}")
    path = tmp_path / "kamailio.cfg"
    path.write_text(text)
    return path


def test_kamailio_steers_its_phones_connections(daemon, tmp_path):
    kport, sport = free_port(), free_port()
    d = daemon(listeners=[listener("sip", sport, f"127.0.0.1:{kport}", proxy_protocol="v1")], events=hooked(tmp_path))
    cfg = kamailio_config(tmp_path, kport, d.control)
    run = tmp_path / "kamailio-run"
    run.mkdir()
    klog = open(tmp_path / "kamailio.log", "wb")
    kam = subprocess.Popen(["kamailio", "-f", str(cfg), "-DD", "-E", "-Y", str(run), "-P", str(run / "kamailio.pid")],
                           stdout=klog, stderr=subprocess.STDOUT, preexec_fn=os.setsid)
    phones = []
    try:
        wait_for(lambda: subprocess.run(["ss", "-Hltn", f"sport = :{kport}"], capture_output=True, text=True).stdout.strip(),
                 timeout=15, what="Kamailio listening")
        expires = {"short": 3, "hour": 3600, "day": 86400}
        for name, e in expires.items():
            phones.append(subprocess.Popen(
                ["sipp", f"127.0.0.1:{sport}", "-t", "t1", "-sf", os.path.join(CONTRIB, "register.xml"), "-m", "1",
                 "-key", "expires", str(e), "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin",
                 "-trace_err", "-error_file", str(tmp_path / f"sipp-{name}.err")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path), preexec_fn=os.setsid))

        def clients():
            return [r for r in json.loads(d.ctl("list", "--json").stdout) if r["side"] == "client"]

        # Each phone's connection got the lifetime its own REGISTER asked for, and keepalive.
        want = sorted(e + GRACE for e in expires.values())
        keepalive = {"idle": 30, "count": 3, "interval": 10}

        def steered():
            c = clients()
            return c if sorted(r["lifetime"] for r in c) == want and all(r["keepalive"] == keepalive for r in c) else None

        got = wait_for(steered, timeout=20, what=f"lifetimes {want} and keepalive (Kamailio's log: "
                       f"{open(tmp_path / 'kamailio.log').read()[-1500:]})")
        t0 = time.monotonic()
        short = [r for r in got if r["lifetime"] == expires["short"] + GRACE][0]
        # The registration that runs out first: its connection goes when idle that long.
        ev = wait_for(lambda: [e for e in d.events() if e["TCPOPS_CONID"] == str(short["conid"])], timeout=15,
                      what="the short registration's connection to end")
        took = time.monotonic() - t0
        assert ev[0]["TCPOPS_EVENT"] == "tcp:timeout" and ev[0]["TCPOPS_REASON"] == "lifetime", ev
        assert ev[0]["TCPOPS_REMOTE_PORT"] == short["remote"].rsplit(":", 1)[1]
        # The others stay, with their own lifetimes.
        left = clients()
        assert sorted(r["lifetime"] for r in left) == sorted([expires["hour"] + GRACE, expires["day"] + GRACE]), left
        log = open(tmp_path / "kamailio.log").read()
        assert log.count("REGISTER from 127.0.0.1:") == 3, log[-2000:]
        print(f"\nkamailio: 3 phones registered (Expires {sorted(expires.values())}): lifetimes {want}, keepalive 30/3/10; "
              f"the {expires['short']}-s one closed {took:.1f} s after it was checked, tcp:timeout lifetime")
    finally:
        for p in phones:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        try:
            os.killpg(kam.pid, signal.SIGTERM)
            kam.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(kam.pid, signal.SIGKILL)
            kam.wait()
        klog.close()
    assert d.stop() == 0
