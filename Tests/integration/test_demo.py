"""Issue 8, item 7: `make run`'s demo waits for its echo upstream as well as for tcpopsd (the first
client was sometimes refused on a fresh clone), and checks what its clients got."""
import os
import socket
import subprocess

import pytest

from helpers import BIN, ROOT


def skip_unless_the_demo_ports_are_free():
    """The demo listens on 5060 and relays to an echo server on 5070, as config/tcpopsd.toml says."""
    for port in (5060, 5070):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            pytest.skip(f"port {port} is in use here; the demo needs it")
        finally:
            s.close()


def test_the_demo_waits_for_a_slow_upstream():
    skip_unless_the_demo_ports_are_free()
    env = {**os.environ, "ECHO_START_DELAY": "1.5"}
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh"), BIN, os.path.join(ROOT, "config", "tcpopsd.toml")],
                       capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL, cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "echoed back: hello through tcpopsd" in out
    assert "tcp:closed" in out and "reason rst" in out and "reason lifetime" in out, out[-3000:]
    assert "refused" not in out, out[-3000:]


def test_ctrl_c_shows_the_drain_and_stops_cleanly():
    """Issue 19: Ctrl-C in `make run` reached tcpopsd twice (the terminal's SIGINT, then the script's
    kill): its relays were closed at once ("shutdown_timeout reached"), the drain never shown, and
    make printed Error 130. Now tcpopsd gets the one signal and drains; the script waits, exits 0."""
    import pty
    import select
    import time
    skip_unless_the_demo_ports_are_free()
    pid, fd = pty.fork()
    if pid == 0:  # the demo in a terminal, as `make run` runs it
        os.chdir(ROOT)
        os.execvp("bash", ["bash", os.path.join(ROOT, "scripts", "demo.sh"), BIN, os.path.join(ROOT, "config", "tcpopsd.toml")])
    out = b""

    def pump(seconds, until=None):
        nonlocal out
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until in out):
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    d = os.read(fd, 65536)
                except OSError:
                    return
                if not d:
                    return
                out += d

    pump(90, until=b"(Ctrl-C stops)")
    assert b"(Ctrl-C stops)" in out, out.decode(errors="replace")[-3000:]
    c = socket.create_connection(("127.0.0.1", 5060), timeout=5)
    c.sendall(b"held")
    time.sleep(0.3)
    os.write(fd, b"\x03")  # the terminal's Ctrl-C: SIGINT to the whole foreground group
    pump(15)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    c.close()
    text = out.decode(errors="replace")
    assert "stopping on signal 2: draining 1 relays" in text, text[-3000:]
    assert "second stop signal" not in text and "shutdown_timeout reached" not in text, text[-3000:]
    assert "tcpopsd stopped" in text
    assert os.waitstatus_to_exitcode(status) == 0, text[-3000:]
