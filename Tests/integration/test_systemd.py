"""systemd integration without a systemd: socket activation through systemd-socket-activate
(the same LISTEN_FDS/LISTEN_FDNAMES protocol), and the watchdog pinged from the relay's loop."""
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from helpers import BIN, Daemon, NotifySocket, connect, die_with_parent, free_port, listener, render_config, wait_for


@contextlib.contextmanager
def activate(tmp_path, fdname, listen_port, config_listeners):
    """systemd-socket-activate listening on listen_port, tcpopsd as its child; yields (notify, log)
    and checks at the end that SIGTERM stops it cleanly."""
    if not shutil.which("systemd-socket-activate"):
        pytest.skip("systemd-socket-activate is not installed")
    cfg = tmp_path / "c.toml"
    cfg.write_text(render_config({"control_socket": str(tmp_path / "c.sock")}, listeners=config_listeners))
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{listen_port}", f"--fdname={fdname}",
                          "-E", f"NOTIFY_SOCKET={notify.path}", BIN, "--config", str(cfg), "--log-target", "stderr"],
                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    wait_for(lambda: subprocess.run(["ss", "-Hltn", f"sport = :{listen_port}"], capture_output=True, text=True).stdout.strip(),
             what="systemd-socket-activate listening")
    try:
        yield notify, tmp_path / "log"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        notify.close()


@pytest.mark.parametrize("by", ["name", "address"])
def test_socket_activation_matches_listener(tmp_path, echo, by):
    up = echo()
    port = free_port()
    if by == "name":
        # The FileDescriptorName ties them together (and the addresses agree: see below).
        listeners = [listener("other", free_port(), up.address), listener("sip", port, up.address)]
        fdname = "sip"
    else:
        listeners = [listener("other", free_port(), up.address), listener("byaddr", port, up.address)]
        fdname = "tcpopsd.socket"
    with activate(tmp_path, fdname, port, listeners) as (notify, log):
        assert not notify.has("READY=1")  # nothing started before a client came
        s = connect(port)  # starts tcpopsd, which relays this very connection
        s.sendall(b"activated")
        s.settimeout(10)
        assert s.recv(100) == b"activated"
        s.close()
        wait_for(lambda: notify.has("READY=1"), what="READY=1")
        text = log.read_text()
        name = "sip" if by == "name" else "byaddr"
        assert f'listener "{name}" uses the socket systemd passed as "{fdname}"' in text
        if by == "address":
            other_port = int(listeners[0]["listen"].split(":")[1])
            connect(other_port).close()  # the unmatched listener was bound as usual


def test_a_passed_socket_named_for_a_listener_must_have_its_address(tmp_path, echo):
    """Issue 19: the socket unit and the file could disagree silently: a socket named like a
    listener but bound to another address was used while the log said the file's address (and a
    listener later given that address failed with EADDRINUSE, 71, not a word about the socket). Now
    the start fails as for a bad file (78), naming both addresses."""
    if not shutil.which("systemd-socket-activate"):
        pytest.skip("systemd-socket-activate is not installed")
    up = echo()
    port, other = free_port(), free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(render_config({"control_socket": str(tmp_path / "c.sock")}, listeners=[listener("sip", other, up.address)]))
    # As systemd would start it: the passed socket as fd 3, LISTEN_FDNAMES naming it "sip".
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    fd = s.fileno()
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "sip"}
    env.pop("LISTEN_PID", None)
    r = subprocess.run(["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', BIN, "--config", str(cfg), "--log-target", "stderr"],
                       capture_output=True, text=True, env=env, timeout=30, pass_fds=(3,), preexec_fn=lambda: os.dup2(fd, 3))
    s.close()
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    text = r.stdout + r.stderr
    assert f'listener "sip" listens on 127.0.0.1:{other}, but the socket systemd passed as "sip"' in text, text
    assert f"is bound to 127.0.0.1:{port}" in text, text


def test_unmatched_passed_socket_is_closed_with_a_warning(tmp_path, echo):
    up = echo()
    port = free_port()
    with activate(tmp_path, "stray", port, [listener("only", free_port(), up.address)]) as (notify, log):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        wait_for(lambda: notify.has("READY=1"), what="READY=1")
        s.settimeout(5)
        try:
            assert s.recv(10) == b""  # nobody serves the stray socket: it is closed
        except ConnectionResetError:
            pass  # (closing a listener resets the connections waiting in its backlog)
        assert "matches no [[listener]]: closed" in log.read_text()


def test_watchdog_pings_from_the_loop(tmp_path, echo):
    up = echo()
    d = Daemon(tmp_path, listeners=[listener("wd", free_port(), up.address)], extra_env={"WATCHDOG_USEC": "400000"})
    d.start()
    time.sleep(2)
    pings = d.notify.has("WATCHDOG=1")
    assert 6 <= len(pings) <= 15, len(pings)  # every 200 ms
    # A stopped loop stops pinging: that is what lets systemd notice a stuck daemon.
    d.proc.send_signal(signal.SIGSTOP)
    t_stop = time.monotonic()
    time.sleep(1.2)
    d.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: [t for t in d.notify.has("WATCHDOG=1") if t > t_stop + 1.0], what="pings after SIGCONT")
    during = [t for t in d.notify.has("WATCHDOG=1") if t_stop + 0.1 < t < t_stop + 1.1]
    assert during == []
    assert "watchdog: WATCHDOG=1 every 200 ms" in d.logtext()
    assert d.stop() == 0


PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 17, 0x4206, 0x4207, 0x40000000


def thread_ids(pid, name):
    """The tids of `pid`'s threads called `name` (tcpopsd names its threads: tcpops-workerN, ...)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == name:
                out.append(int(tid))
    return out


@contextlib.contextmanager
def frozen_thread(tid):
    """Stops one thread of another process, and only it (PTRACE_SEIZE + PTRACE_INTERRUPT: no
    SIGSTOP, so no group stop of the other threads), as a worker stuck in a blocking call would be."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    assert libc.ptrace(PTRACE_SEIZE, tid, None, None) == 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.ptrace(PTRACE_INTERRUPT, tid, None, None) == 0, os.strerror(ctypes.get_errno())
        status = ctypes.c_int()
        assert libc.waitpid(tid, ctypes.byref(status), WALL) == tid
        yield
    finally:
        libc.ptrace(PTRACE_DETACH, tid, None, None)


def test_watchdog_stops_while_one_worker_is_stuck(tmp_path, echo):
    """With 4 workers, one stuck worker (its thread stopped, every other thread running) stops
    WATCHDOG=1 and is named in an error; relays on the other workers go on; pings resume when it
    turns again."""
    up = echo()
    port = free_port()
    d = Daemon(tmp_path, listeners=[listener("wd", port, up.address)], daemon={"workers": 4},
               extra_env={"WATCHDOG_USEC": "400000"})
    d.start()
    wait_for(lambda: len(d.notify.has("WATCHDOG=1")) >= 3, what="watchdog pings")
    [tid] = thread_ids(d.proc.pid, "tcpops-worker2")
    with frozen_thread(tid):
        t_stop = time.monotonic()
        # The stuck worker is noticed within the limit (400 ms) and a ping period (200 ms).
        wait_for(lambda: "worker(s) 2 stopped turning" in d.logtext(), timeout=5, what="the stuck worker named")
        time.sleep(1.0)
        late = [t for t in d.notify.has("WATCHDOG=1") if t > t_stop + 0.7]
        assert late == [], f"{len(late)} pings while worker 2 was stuck"
        # A control request that needs every worker's part says which one did not answer (within
        # 5 s), instead of hanging; the daemon relays on its other workers (the kernel wakes a
        # worker that waits, and the stuck one is not waiting): every one of 20 clients is served.
        t = time.monotonic()
        r = d.ctl("stats")
        assert r.returncode != 0 and "worker(s) 2 did not answer within 5 s" in r.stderr, (r.returncode, r.stdout, r.stderr)
        assert 4.5 < time.monotonic() - t < 9.5
        for _ in range(20):
            s = connect(port)
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
            s.close()
        t_thaw = time.monotonic()
    wait_for(lambda: [t for t in d.notify.has("WATCHDOG=1") if t > t_thaw], what="pings after the worker turns again")
    assert json.loads(d.ctl("stats", "--json").stdout)["workers"] == 4
    assert d.stop() == 0
