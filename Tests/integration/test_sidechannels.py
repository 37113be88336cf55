"""Issue 7, item 9: nothing on an event loop waits on a side channel. A NOTIFY_SOCKET nobody reads
(PID 1 busy in a daemon-reload) and a journal socket nobody reads (a stalled journald) used to put
the relay's loop to sleep in unix_wait_for_peer, freezing every relay."""
import os
import shutil
import signal
import time

import pytest

from helpers import Daemon, connect, echoed, free_port, is_root, listener, wait_for

HERE = os.path.dirname(__file__)


def roundtrip(port, payload=b"still moving", timeout=3):
    s = connect(port, timeout=timeout)
    ok = echoed(s, payload, timeout) == payload
    s.close()
    return ok


def test_notify_receiver_that_never_reads(tmp_path, echo):
    up = echo()
    port = free_port()
    d = Daemon(tmp_path, listeners=[listener("n", port, up.address)], wait_ready=False, notify_reader=False)
    d.start()
    wait_for(lambda: d.ctl("stats", "--timeout", "2").returncode == 0, timeout=20, what="control socket up")
    # Each reload sends RELOADING=1 and READY=1; the socket's queue holds 10 datagrams. One
    # SIGHUP at a time (SIGHUPs that come during a reload are folded into one more, so sent at
    # once their count would depend on how busy the machine is).
    for i in range(30):
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: d.logtext().count("configuration reloaded") == i + 1, timeout=10, what=f"reload {i + 1} done")
    t0 = time.monotonic()
    for _ in range(20):
        assert roundtrip(port)
    assert time.monotonic() - t0 < 5
    r = d.ctl("stats", "--timeout", "3")
    assert r.returncode == 0, r.stderr
    # It still stops, promptly: what cannot reach the receiver is given up after a second.
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    d.notify.close()


@pytest.mark.skipif(not is_root() or not shutil.which("unshare"), reason="needs root and unshare for a private mount namespace")
def test_journal_that_never_reads(tmp_path, echo):
    up = echo()
    port = free_port()
    d = Daemon(tmp_path, listeners=[listener("j", port, up.address)], log_target="journal",
               wrapper=["unshare", "-m", "--propagation", "private", "python3", os.path.join(HERE, "stuck_journal.py")])
    d.start()
    # Every relay logs an entry when it ends; the journal socket's queue holds 10.
    t0 = time.monotonic()
    for i in range(60):
        assert roundtrip(port), i
    assert time.monotonic() - t0 < 10
    r = d.ctl("stats", "--timeout", "3")
    assert r.returncode == 0 and "accepted 60" in r.stdout, r.stdout + r.stderr
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    d.notify.close()
