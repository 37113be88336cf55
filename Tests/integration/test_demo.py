"""Issue 8, item 7: `make run`'s demo waits for its echo upstream as well as for tcpopsd (the first
client was sometimes refused on a fresh clone), and checks what its clients got."""
import os
import socket
import subprocess

import pytest

from helpers import BIN, ROOT


def test_the_demo_waits_for_a_slow_upstream():
    for port in (5060, 5070):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            pytest.skip(f"port {port} is in use here; the demo needs it")
        finally:
            s.close()
    env = {**os.environ, "ECHO_START_DELAY": "1.5"}
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh"), BIN, os.path.join(ROOT, "config", "tcpopsd.toml")],
                       capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL, cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "echoed back: hello through tcpopsd" in out
    assert "tcp:closed" in out and "reason rst" in out and "reason lifetime" in out, out[-3000:]
    assert "refused" not in out, out[-3000:]
