"""Issue 7, items 2 and 3: the open-files limit. An established relay that needs a splice pipe when
no fd can be had copies through memory instead of being reset; the control socket's accept loop
backs off instead of spinning and flooding the log; tcpopsctl gives up with a clear message."""
import hashlib
import os
import resource
import socket
import subprocess
import threading
import time

from helpers import CTL, Daemon, connect, free_port, listener, recv_all, wait_for


def limited(n):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def roundtrip(s, payload, timeout=10):
    s.sendall(payload)
    got = b""
    s.settimeout(timeout)
    while len(got) < len(payload):
        d = s.recv(65536)
        assert d, "closed"
        got += d
    return got == payload


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def exhaust(d, port, limit):
    """Opens clients until tcpopsd has no fd left (its accept pauses); returns them."""
    held = []
    for _ in range(limit):
        held.append(connect(port))
        if "paused" in d.logtext():
            break
    wait_for(lambda: "paused" in d.logtext(), timeout=10, what="accept paused for want of fds")
    return held


def test_relay_copies_when_no_pipe_can_be_had(tmp_path, echo):
    up = echo()
    port = free_port()
    d = Daemon(tmp_path, listeners=[listener("nopipe", port, up.address)], preexec=limited(40))
    d.start()
    first = connect(port)
    assert roundtrip(first, b"small, copied")  # no pipe taken yet: the pool is empty
    held = exhaust(d, port, 40)
    assert d.open_fds() >= 38, d.open_fds()
    # A bulk transfer wants a pipe (two fds): there are none. It must still arrive, every byte.
    data = os.urandom(8 * 1024 * 1024)
    got = []
    t = threading.Thread(target=lambda: got.append(recv_all(first, timeout=60)))
    t.start()
    first.sendall(data)
    first.shutdown(socket.SHUT_WR)
    t.join(90)
    assert got and len(got[0]) == len(data), (len(got[0]) if got else None, d.logtext()[-2000:])
    assert hashlib.sha256(got[0]).digest() == hashlib.sha256(data).digest()
    log = d.logtext()
    assert "no pipe for splice" in log and "EMFILE" in log
    assert "tcp:reset" not in log
    for h in held:
        h.close()
    first.close()
    assert d.stop() == 0
