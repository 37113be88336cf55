"""Issue 7, item 1: a reload never refuses or resets a client. An unchanged address keeps its
socket (new options apply to new connections); a new or moved address is bound before the old
socket closes; clients already in an old accept queue are relayed; established relays are never
touched; a part that cannot be applied is named, and the old listener stays."""
import os
import signal
import socket
import threading
import time

import pytest

from helpers import connect, echoed, free_port, listener, render_config, wait_for, write_hook


def rewrite(d, tmp_path, listeners, events=None):
    with open(d.config_path, "w") as f:
        f.write(render_config({"control_socket": str(tmp_path / "control.sock"), "shutdown_timeout": 5}, events, None, listeners))


def echo_ok(s, payload=b"ping", timeout=5):
    return echoed(s, payload, timeout) == payload


def test_clients_waiting_in_an_accept_queue_are_relayed(daemon, echo, tmp_path):
    up = echo()
    pa, pb, pc = free_port(), free_port(), free_port()
    d = daemon(listeners=[listener("a", pa, up.address), listener("b", pb, up.address)])
    established = connect(pa)
    assert echo_ok(established)
    # "a" keeps its address with a new option; "b" moves to another port.
    rewrite(d, tmp_path, [listener("a", pa, up.address, lifetime=1), listener("b", pc, up.address)])
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        # Pending before the clients connect: the reload starts first. (The file is read in a
        # thread, so the old listener may still accept them before the new settings apply; either
        # way none may be reset. Tests/TCPOpsTests/ListenerTests.swift retires a queue directly.)
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
        waiting = [connect(pa) for _ in range(10)] + [connect(pb) for _ in range(10)]
        for s in waiting:
            s.sendall(b"queued")  # the handshake is done: these clients are connected
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    for i, s in enumerate(waiting):
        got = b""
        s.settimeout(5)
        while len(got) < 6:
            chunk = s.recv(100)
            assert chunk, f"waiting client {i} was closed or reset by the reload\n{d.logtext()[-3000:]}"
            got += chunk
        assert got == b"queued"
    wait_for(lambda: "configuration reloaded" in d.logtext(), what="reload")
    # "b" is on its new port only.
    assert echo_ok(connect(pc))
    with pytest.raises(ConnectionRefusedError):
        connect(pb)
    # The relay from before keeps its settings (no lifetime); new ones get lifetime 1.
    fresh = connect(pa)
    assert echo_ok(fresh)
    time.sleep(2)
    assert echo_ok(established, b"untouched"), "an established relay was touched by the reload"
    fresh.settimeout(3)
    assert fresh.recv(10) == b"", "the new lifetime should have closed the idle new connection"
    for s in waiting:
        s.close()
    assert d.stop() == 0


def test_a_move_that_cannot_bind_keeps_the_old_listener(daemon, echo, tmp_path):
    up = echo()
    pa, pb = free_port(), free_port()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    d = daemon(listeners=[listener("a", pa, up.address), listener("b", pb, up.address)])
    rewrite(d, tmp_path, [listener("a", pa, up.address), listener("b", taken, up.address, lifetime=7)])
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded with errors" in d.logtext(), what="the partial reload")
    line = [l for l in d.loglines() if "cannot listen on" in l][0]
    assert f'listener "b": cannot listen on 127.0.0.1:{taken}' in line and "EADDRINUSE" in line, line
    assert f"keeps listening on 127.0.0.1:{pb}" in line, line
    wait_for(lambda: [m for _, m in d.notify.all() if "reloaded with errors" in m], what="STATUS says so")
    assert echo_ok(connect(pb)), "the old listener must stay"
    assert echo_ok(connect(pa))
    squatter.close()
    assert d.stop() == 0


def test_reloads_under_load_with_hooks_refuse_and_reset_nothing(daemon, echo, tmp_path):
    """The operator's case: 100 reloads at ~10/s while hooks run and clients churn and stream.
    Every reload changes the fixed listener's options and moves another listener."""
    up = echo()
    pa, pb, pc = free_port(), free_port(), free_port()
    hook = write_hook(tmp_path / "h.sh", tmp_path / "records", extra="sleep 0.05")
    events = {"callback": [hook], "max_running_hooks": 8, "queue_limit": 100000}
    d = daemon(listeners=[listener("a", pa, up.address), listener("b", pb, up.address)], events=events)
    stop = threading.Event()
    stats = {"connects": 0, "refused": 0, "reset": 0, "other": 0, "streamed": 0, "stream_errors": 0}
    lock = threading.Lock()

    def count(k, n=1):
        with lock:
            stats[k] += n

    def churn():
        while not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", pa), timeout=5)
                ok = echo_ok(s, os.urandom(64))
                s.close()
                count("connects" if ok else "other")
            except ConnectionRefusedError:
                count("refused")
            except ConnectionResetError:
                count("reset")
            except OSError:
                count("other")

    def stream():
        s = socket.create_connection(("127.0.0.1", pa), timeout=10)
        while not stop.is_set():
            block = os.urandom(65536)
            try:
                if not echo_ok(s, block, timeout=10):
                    count("stream_errors")
                    return
            except OSError:
                count("stream_errors")
                return
            count("streamed", len(block))
        s.close()

    threads = [threading.Thread(target=churn) for _ in range(4)] + [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    reloads = 100
    try:
        for i in range(reloads):
            a_opts = {"lifetime": 30, "keepalive": {"idle": 10, "count": 3, "interval": 2}} if i % 2 else {"connect_timeout": 3}
            rewrite(d, tmp_path, [listener("a", pa, up.address, **a_opts), listener("b", pc if i % 2 == 0 else pb, up.address)], events)
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: d.logtext().count("configuration reloaded") == i + 1, timeout=10, what=f"reload {i + 1}")
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    print("reload test:", reloads, "reloads;", stats)
    assert "reloaded with errors" not in d.logtext()
    assert stats["refused"] == 0 and stats["reset"] == 0 and stats["other"] == 0, stats
    assert stats["stream_errors"] == 0 and stats["streamed"] > 0, stats
    assert stats["connects"] > 200, stats
    assert d.proc.poll() is None
    assert d.stop() == 0
