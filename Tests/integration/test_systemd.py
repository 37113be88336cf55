"""systemd integration without a systemd: socket activation through systemd-socket-activate
(the same LISTEN_FDS/LISTEN_FDNAMES protocol), and the watchdog pinged from the relay's loop."""
import contextlib
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
        # The listener's own address differs: only the FileDescriptorName ties them together.
        listeners = [listener("sip", free_port(), up.address)]
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
