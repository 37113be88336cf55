"""Issue 2, items 8 and 10: READY=1 only once listeners accept, STOPPING=1 and a bounded drain on
SIGTERM, exit statuses, and bad configurations refused with file, line and key."""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from helpers import BIN, SANITIZER, Daemon, connect, free_port, listener, render_config, wait_for


def test_ready_after_listeners_accept_and_stopping_on_sigterm(tmp_path, echo):
    up = echo(mode="hold")
    ports = [free_port(), free_port()]
    d = Daemon(tmp_path, listeners=[listener(f"l{i}", p, up.address) for i, p in enumerate(ports)],
               daemon={"shutdown_timeout": 2}, wait_ready=False)
    d.start()
    # Poll the notify socket and connect the instant READY=1 shows: both listeners must accept.
    wait_for(lambda: d.notify.has("READY=1"), timeout=20, what="READY=1")
    for p in ports:
        socket.create_connection(("127.0.0.1", p), timeout=2).close()
    ready_msg = [m for _, m in d.notify.all() if "READY=1" in m.split("\n")][0]
    assert "STATUS=" in ready_msg
    held = connect(ports[0])  # an idle relay that will not end by itself
    wait_for(lambda: "accepted" in d.logtext() or True)
    time.sleep(0.3)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: d.notify.has("STOPPING=1"), timeout=5, what="STOPPING=1")
    rc = d.proc.wait(10)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert 1.5 <= elapsed <= 4.5, f"drain should last about shutdown_timeout (2 s), took {elapsed:.1f}"
    held.settimeout(2)
    assert held.recv(10) == b""  # closed at the end of the drain
    # READY came before STOPPING, and no listener is left bound.
    assert d.notify.has("READY=1")[0] < d.notify.has("STOPPING=1")[0]
    for p in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p), timeout=2)
    d.notify.close()


def test_sigterm_with_no_connections_exits_at_once(daemon, echo):
    up = echo()
    d = daemon(listeners=[listener("q", free_port(), up.address)], daemon={"shutdown_timeout": 10})
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 3
    assert "tcpopsd stopped" in d.logtext()


def test_fds_return_to_baseline(daemon, echo):
    up = echo()
    port = free_port()
    # debug: "relay ended" is logged for every relay (at info only where a side raised no event)
    d = daemon(listeners=[listener("fd", port, up.address)], daemon={"log_level": "debug"})
    base = d.open_fds()
    for _ in range(50):
        s = connect(port)
        s.sendall(b"abc")
        assert s.recv(3) == b"abc"
        s.close()
    wait_for(lambda: d.logtext().count("relay ended") == 50, what="relays ended")
    # Idle pipes are pooled (2 fds each); nothing else may remain.
    wait_for(lambda: d.open_fds() <= base + 4, timeout=5, what=f"fds back to {base}")
    assert d.stop() == 0


BAD = {
    "syntax error": ('[daemon\nlog_level = "info"\n', 1, "syntax"),
    "unknown key": ('[daemon]\nlog_level = "info"\nbogus_key = 1\n', 3, "bogus_key"),
    "wrong type": ('[daemon]\nmax_connections = "many"\n', 2, "max_connections"),
    "duplicate listener name": (None, 7, "duplicate listener name"),
    "bad address": ('[[listener]]\nname = "a"\nlisten = "127.0.0.256:80"\nupstream = "127.0.0.1:81"\n', 3, "listen"),
    "port out of range": ('[[listener]]\nname = "a"\nlisten = "127.0.0.1:70000"\nupstream = "127.0.0.1:81"\n', 3, "70000"),
    "negative duration": ('[[listener]]\nname = "a"\nlisten = "127.0.0.1:5060"\nupstream = "127.0.0.1:81"\nlifetime = -5\n', 5, "lifetime"),
    "bad log level": ('[daemon]\nlog_level = "loud"\n[[listener]]\nname = "a"\nlisten = "127.0.0.1:5060"\nupstream = "127.0.0.1:81"\n', 2, "log_level"),
    "duration below 1 ms": ('[[listener]]\nname = "a"\nlisten = "127.0.0.1:5060"\nupstream = "127.0.0.1:81"\nlifetime = 1e-320\n', 5, "1 ms"),
    "connect_timeout below 1 ms": ('[[listener]]\nname = "a"\nlisten = "127.0.0.1:5060"\nupstream = "127.0.0.1:81"\n\nconnect_timeout = 0.0000001\n', 6, "1 ms"),
    "duration above the maximum": ('[daemon]\nshutdown_timeout = 31536001\n', 2, "31536000"),
    "NUL byte": (b'[daemon]\nlog_level = "info" # \x00 hidden\n', 2, "NUL"),
    "invalid UTF-8": (b'[daemon]\n\n# caf\xe9\n', 3, "UTF-8"),
    "keepalive missing count": ('[[listener]]\nname = "a"\nlisten = "127.0.0.1:5060"\nupstream = "127.0.0.1:81"\nkeepalive = { idle = 1, interval = 1 }\n', 5, "count"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_78_naming_file_line_key(tmp_path, case):
    text, line, word = BAD[case]
    port = free_port()
    if text is None:
        text = (f'[[listener]]\nname = "dup"\nlisten = "127.0.0.1:{port}"\nupstream = "127.0.0.1:81"\n\n'
                f'[[listener]]\nname = "dup"\nlisten = "127.0.0.1:{free_port()}"\nupstream = "127.0.0.1:81"\n')
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    for extra in ([], ["--check-config"]):
        p = subprocess.run([BIN, "--config", str(path), "--log-target", "stderr", *extra], capture_output=True, text=True, timeout=20)
        assert p.returncode == 78, (case, p.returncode, p.stderr)
        assert f"{path}:{line}:" in p.stderr, (case, p.stderr)
        assert word in p.stderr, (case, p.stderr)
    # Nothing was bound: the first listener's port is still free.
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.close()


def test_check_config_valid_and_every_problem_listed(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(render_config(listeners=[listener("a", free_port(), "127.0.0.1:81")]))
    p = subprocess.run([BIN, "--check-config", "--config", str(good)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nlog_level = "x"\nshutdown_timeout = -1\n[[listener]]\nname = "a"\nlisten = "nope"\nupstream = "127.0.0.1:81"\n')
    p = subprocess.run([BIN, "--check-config", "--config", str(bad)], capture_output=True, text=True)
    assert p.returncode == 78
    lines = [l for l in p.stderr.splitlines() if l.startswith(str(bad))]
    assert [l.split(":")[1] for l in lines] == ["2", "3", "6"], p.stderr


def test_missing_file_is_78_and_bad_command_line_is_64(tmp_path):
    p = subprocess.run([BIN, "--config", str(tmp_path / "none.toml")], capture_output=True, text=True)
    assert p.returncode == 78 and "none.toml" in p.stderr
    p = subprocess.run([BIN, "--no-such-flag"], capture_output=True, text=True)
    assert p.returncode == 64
    p = subprocess.run([BIN, "--log-target", "syslog"], capture_output=True, text=True)
    assert p.returncode == 64


def test_bind_failure_exits_71_naming_address_and_errno(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    free = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(render_config({"control_socket": str(tmp_path / "c.sock")},
                                 listeners=[listener("ok", free, "127.0.0.1:81"), listener("busy", port, "127.0.0.1:81")]))
    p = subprocess.run([BIN, "--config", str(cfg), "--log-target", "stderr"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 71, p.stderr
    assert f"127.0.0.1:{port}" in p.stderr and "EADDRINUSE" in p.stderr and "busy" in p.stderr
    s = socket.socket()
    s.bind(("127.0.0.1", free))  # the listener bound before the failure was released
    s.close()
    taken.close()


LOADER_SYSCALLS = {"execve", "brk", "mmap", "munmap", "mprotect", "access", "openat", "read", "pread64", "newfstatat",
                   "close", "arch_prctl", "set_tid_address", "set_robust_list", "rseq", "prlimit64", "readlink"}


def _trace(path):
    """The main thread's syscalls from an strace -o file: (name, line) in order."""
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith(("---", "+++")) or "(" not in line:
                continue
            out.append((line.split("(", 1)[0], line.rstrip()))
    return out


def _tracee(strace_proc):
    """tcpopsd's pid under strace: the child that has exec'd tcpopsd (strace forks probes of its own)."""
    exe = os.path.realpath(BIN)

    def child():
        try:
            with open(f"/proc/{strace_proc.pid}/task/{strace_proc.pid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            return None
        for k in kids:
            try:
                if os.readlink(f"/proc/{k}/exe") == exe:
                    return k
            except OSError:
                pass
        # A signal injected early ends tcpopsd (cleanly) within milliseconds: strace may be gone
        # before its child was seen. Nothing is left to find or to clean up then (-1: never a pid to
        # signal; os.kill(-1, ...) would signal every process).
        return -1 if strace_proc.poll() is not None else None
    return wait_for(child, timeout=10, what="tcpopsd under strace")


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace (make deps installs it)")
@pytest.mark.skipif(bool(SANITIZER), reason="a sanitizer's runtime initialises first (its own .preinit_array entry, "
                    "many syscalls), and links the Swift runtime dynamically")
def test_signals_while_starting_are_not_fatal(tmp_path, echo):
    """Issue 7, item 8: TERM/INT/HUP/PIPE in the first milliseconds of the process (before the
    daemon's loop exists) used to kill it. Now tcpopsd blocks them before any library's constructor,
    the Swift runtime or main runs (only the dynamic loader comes earlier, a window no program can
    close), HUP sent during start is a reload once the loop runs, TERM and INT a clean stop (0), PIPE
    nothing. Deterministic: strace injects the signal at chosen syscalls of the start, from the first
    one after the dynamic loader to the loop's first epoll_wait; no timing involved."""
    up = echo()
    # Where tcpopsd's own code starts: its .preinit_array entry runs before every library's init.
    p = subprocess.run([BIN, "--version"], capture_output=True, text=True, env={**os.environ, "LD_DEBUG": "libs"}, timeout=20)
    calls = [l.split("calling ", 1)[1] for l in p.stderr.splitlines() if "calling " in l]
    assert calls and calls[0].startswith("preinit:") and calls[0].rstrip().endswith("tcpopsd"), calls[:3]

    started = []  # tcpopsd pids: strace detaches them if it dies, so a failed assertion must not leave them running
    try:
        # One clean start under strace: the main thread's syscalls from exec to the loop's first wait.
        def start(tmp, inject=None):
            wrapper = ["strace", "-o", str(tmp / "trace.txt")]
            if inject:
                wrapper += ["-e", "trace=all", "-e", f"inject={inject[0]}:signal={inject[2]}:when={inject[1]}"]
            d = Daemon(tmp, listeners=[listener("early", free_port(), up.address)], wait_ready=False, wrapper=wrapper)
            d.start()
            pid = _tracee(d.proc)
            if pid > 0:
                started.append(pid)
            return d, pid

        d, pid = start(tmp_path / "clean")
        wait_for(lambda: d.notify.has("READY=1"), timeout=30, what="READY=1")
        assert pid > 0
        os.kill(pid, signal.SIGTERM)
        assert d.proc.wait(15) == 0
        d.log.close()
        d.notify.close()
        trace = _trace(tmp_path / "clean" / "trace.txt")
        block = next(i for i, (_, l) in enumerate(trace) if l.startswith("rt_sigprocmask(SIG_BLOCK, [HUP INT TERM]"))
        loop = next(i for i, (n, _) in enumerate(trace) if n == "epoll_wait")
        # Nothing but the loader ran before the block (an old build blocked them in main, after ~250 syscalls).
        assert {n for n, _ in trace[:block]} <= LOADER_SYSCALLS, sorted({n for n, _ in trace[:block]} - LOADER_SYSCALLS)
        assert loop - block > 20, (block, loop)

        # Then one signal at each of 24 points spread over the start, each in a fresh process.
        # A futex is a wait on a lock another thread held, made only when they happened to meet:
        # a fresh process may never make that call (strace would then never inject, and it would
        # run on; CI met that once). Such a point moves to the next syscall every start makes.
        def steady(at):
            while trace[at][0] == "futex" and at + 1 < loop:
                at += 1
            return at

        points = sorted({steady(block + 1 + (loop - block - 1) * k // 23) for k in range(24)})
        kinds = [signal.SIGHUP, signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE]
        for j, at in enumerate(points):
            name = trace[at][0]
            nth = sum(1 for n, _ in trace[:at + 1] if n == name)
            signo = kinds[j % len(kinds)]
            what = f"{signo.name} at syscall {at} ({trace[at][1][:60]}, {name} #{nth})"
            d, pid = start(tmp_path / f"at{at}", (name, nth, signo.name))
            if signo in (signal.SIGTERM, signal.SIGINT):
                rc = d.proc.wait(30)
                d.log.close()
                d.notify.close()
                assert rc == 0, f"{what}: exit {rc}\n{d.logtext()}"
                assert f"stopping on signal {int(signo)}" in d.logtext(), f"{what}: not injected?\n{d.logtext()}"
                continue
            wait_for(lambda: d.notify.has("READY=1") or d.proc.poll() is not None, timeout=30, what="READY=1")
            assert d.proc.poll() is None, f"{what} killed tcpopsd: {d.proc.returncode}\n{d.logtext()}"
            if signo == signal.SIGHUP:
                wait_for(lambda: "configuration reloaded" in d.logtext(), timeout=10, what=f"{what} taken as a reload")
            assert pid > 0, f"{what}: tcpopsd was never seen running"
            os.kill(pid, signal.SIGTERM)
            assert d.proc.wait(15) == 0, what
            d.log.close()
            d.notify.close()
            # An ignored SIGPIPE leaves no trace; HUP shows as the reload, TERM and INT as the stop.
    finally:
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_nul_byte_hides_nothing(tmp_path):
    """Issue 7, item 5: a NUL in a comment used to end the file for the parser, so the duplicate key,
    negative value and unknown key after it passed --check-config. Now the NUL is an error and every
    problem after it is reported too."""
    path = tmp_path / "nul.toml"
    tail = b'[[listener]]\nname = "a"\nlisten = "127.0.0.1:5060"\nupstream = "127.0.0.1:81"\nlifetime = -1\nbogus = 2\n'
    path.write_bytes(b'[daemon]\nlog_level = "info"\n#\x00\nlog_level = "debug"\n' + tail)
    p = subprocess.run([BIN, "--check-config", "--config", str(path)], capture_output=True, text=True, timeout=20)
    assert p.returncode == 78, p.stdout + p.stderr
    assert f"{path}:3: " in p.stderr and "NUL" in p.stderr, p.stderr
    # A duplicate key is a TOML syntax error: parsing stops there, so it is the last problem found.
    assert f"{path}:4: " in p.stderr and "log_level" in p.stderr, p.stderr
    # Without the duplicate, the problems after the NUL are all reported with it.
    path.write_bytes(b'[daemon]\nlog_level = "info"\n#\x00\n' + tail)
    p = subprocess.run([BIN, "--check-config", "--config", str(path)], capture_output=True, text=True, timeout=20)
    assert p.returncode == 78, p.stdout + p.stderr
    lines = p.stderr.splitlines()
    assert lines[0].startswith(f"{path}:3: ") and "NUL" in lines[0], p.stderr
    assert any(l.startswith(f"{path}:8: ") and "lifetime" in l for l in lines), p.stderr
    assert any(l.startswith(f"{path}:9: ") and "bogus" in l for l in lines), p.stderr


def test_unreadable_file_names_errno(tmp_path):
    p = subprocess.run([BIN, "--check-config", "--config", str(tmp_path / "missing.toml")], capture_output=True, text=True, timeout=20)
    assert p.returncode == 78
    assert p.stderr.startswith(f"{tmp_path}/missing.toml: ") and "ENOENT" in p.stderr, p.stderr
