"""Issue 18, item 1: small pipes. A user past fs.pipe-user-pages-soft gets new pipes of one or two
pages and cannot grow them (F_SETPIPE_SZ: EPERM); the unit's DynamicUser is such a user once it
holds ~1,024 pipes. tcpopsd used to assume every pipe held 64 KiB: a partial load left bytes in a
pipe it counted as empty, gave that pipe back to the pool, and relays then spliced into a full pipe
for ever (EAGAIN ~9,000 times a second, 40 % of a core; clients stalled; relays never ended).

Here the budget is lowered for the test's duration (as root) and tcpopsd runs as nobody, so that the
kernel's rule applies to it. A fast upstream streams into slow readers; every byte must arrive, in
order, to the right client; tcpopsd must not spin while the readers pause; relays must end and the
stop must keep to shutdown_timeout."""
import hashlib
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time

import pytest

from helpers import Daemon, EchoServer, connect, free_port, is_root, listener, wait_for

SOFT = "/proc/sys/fs/pipe-user-pages-soft"
BASE = os.urandom(1 << 20)


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def expected(index, size):
    """What the upstream sends on its connection number `index` after the 8-byte index: BASE
    rotated by an offset of its own, so that bytes of one connection in another's stream show."""
    off = (index * 7919) % len(BASE)
    out = bytearray()
    while len(out) < size:
        out += BASE[off:] + BASE[:off]
    return bytes(out[:size])


class FastUpstream(EchoServer):
    """Each connection: an 8-byte index, then `size` bytes, `chunk` bytes every 2 ms (or as fast
    as the relay takes them), then close."""

    def __init__(self, size, chunk=12000):
        self.size = size
        self.chunk = chunk
        self.next = 0
        super().__init__()  # (its accept thread starts here: the fields above come first)

    def _serve(self, c):
        with self.lock:
            i = self.next
            self.next += 1
        data = expected(i, self.size)
        try:
            c.sendall(struct.pack("!Q", i))
            for at in range(0, len(data), self.chunk):
                c.sendall(data[at:at + self.chunk])
                time.sleep(0.002)
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            c.close()


class FloodUpstream(FastUpstream):
    """Sends 1 MiB blocks as fast as they are taken, until the connection breaks."""

    def _serve(self, c):
        try:
            while True:
                c.sendall(BASE)
        except OSError:
            pass
        finally:
            c.close()


def slow_reader(port, size, results, paused, step=4096):
    """Reads `step` bytes a millisecond (slower than the upstream sends), stops while `paused` is set,
    and checks every byte against what its upstream connection sent."""
    got = bytearray()
    try:
        # A small receive buffer (set before connecting: TCP's window is agreed then), so that a
        # pause reaches tcpopsd at once; 10 s without a byte is a stall.
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        head = b""
        while len(head) < 8:
            d = s.recv(8 - len(head))
            if not d:
                results.append(("short", len(head)))
                return
            head += d
        index = struct.unpack("!Q", head)[0]
        while True:
            while paused.is_set():
                time.sleep(0.01)
            d = s.recv(step)
            if not d:
                break
            got += d
            time.sleep(0.001)
        s.close()
        want = expected(index, size)
        results.append(("ok" if bytes(got) == want else "corrupt", len(got), index,
                        hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()))
    except OSError as e:
        results.append(("error", repr(e), len(got)))


def pipe_budget(pages):
    """The pipe budget lowered to `pages` (16: one 64 KiB pipe) while the test runs."""
    if not is_root():
        pytest.skip("needs root: lowers fs.pipe-user-pages-soft and runs tcpopsd as nobody")
    old = open(SOFT).read().strip()
    with open(SOFT, "w") as f:
        f.write(str(pages))
    try:
        yield
    finally:
        with open(SOFT, "w") as f:
            f.write(old)


@pytest.fixture
def small_pipes():
    yield from pipe_budget(16)


@pytest.fixture
def ten_pipes():
    yield from pipe_budget(160)


@pytest.fixture
def nobody_dir():
    """A folder tcpopsd running as nobody can use (pytest's tmp_path is root's alone)."""
    d = tempfile.mkdtemp(prefix="tcpops-pipes-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def stats(d):
    return json.loads(d.ctl("stats", "--json").stdout)


def test_small_pipes_lose_nothing_and_never_spin(small_pipes, nobody_dir):
    # As it was seen: 12,000 bytes every 2 ms into readers of 4 KiB a millisecond. Before the fix,
    # 6 MB each was enough for clients to stall (2 runs in 3) or tcpopsd to spin (1.1 s of CPU in 2 s).
    size = 6 << 20
    up = FastUpstream(size, chunk=12000)
    port = free_port()
    d = Daemon(nobody_dir, listeners=[listener("bulk", port, up.address)], wrapper=AS_NOBODY,
               daemon={"shutdown_timeout": 1})
    d.start()
    try:
        results = []
        paused = threading.Event()
        readers = [threading.Thread(target=slow_reader, args=(port, size, results, paused, 4096)) for _ in range(20)]
        for t in readers:
            t.start()
        time.sleep(0.4)
        # The readers stop for 2 s while the upstream keeps sending: every relay's pipe (or copy
        # buffer) fills and waits for its client. Waiting must cost (almost) nothing.
        paused.set()
        time.sleep(0.5)
        before = cpu_seconds(d.proc.pid)
        time.sleep(2)
        waiting = cpu_seconds(d.proc.pid) - before
        paused.clear()
        for t in readers:
            t.join(120)
        print(f"\nsmall pipes: 20 x {size} bytes; tcpopsd CPU while the readers paused: {waiting:.2f} s in 2 s; "
              f"{d.logtext().count('no pipe for splice')} shortage warning(s)")
        assert len(results) == 20, results
        bad = [r for r in results if r[0] != "ok"]
        assert not bad, f"{len(bad)} of 20 clients did not get their bytes intact: {bad[:5]}"
        assert waiting < 0.3, f"tcpopsd burned {waiting:.2f} s of CPU in 2 s while every relay waited for its client"
        wait_for(lambda: stats(d)["relays_open"] == 0, timeout=10, what="every relay ended")
        # Pipes could not be had at a useful size: the relays copied, and said so.
        assert "no pipe for splice" in d.logtext()
        # New clients, after all that: still every byte.
        results.clear()
        more = [threading.Thread(target=slow_reader, args=(port, 1 << 20, results, threading.Event())) for _ in range(4)]
        up.size = 1 << 20
        for t in more:
            t.start()
        for t in more:
            t.join(60)
        assert [r[0] for r in results] == ["ok"] * 4, results
        # A stop with relays blocked keeps to shutdown_timeout (1 s).
        stuck = [connect(port) for _ in range(5)]
        wait_for(lambda: stats(d)["relays_open"] == 5, what="5 relays")
        time.sleep(0.5)
        t0 = time.monotonic()
        assert d.stop(timeout=10) == 0
        took = time.monotonic() - t0
        print(f"stop with 5 blocked relays and shutdown_timeout = 1: {took:.2f} s")
        assert took < 2.5, f"the stop took {took:.2f} s with shutdown_timeout = 1"
        for s in stuck:
            s.close()
    finally:
        d.kill()
        up.close()


def test_clients_that_never_read_cannot_stall_other_relays(ten_pipes, nobody_dir):
    """A remote client alone could exhaust the budget: connections that never read keep their
    pipes full. Here the budget is ten pipes and 12 such clients through one listener hold them;
    clients of another listener must still get every byte (before the fix: stalls)."""
    size = 4 << 20
    up = FastUpstream(size)
    flood = FloodUpstream(0)
    deaf_port, port = free_port(), free_port()
    d = Daemon(nobody_dir, listeners=[listener("deaf", deaf_port, flood.address), listener("bulk", port, up.address)],
               wrapper=AS_NOBODY)
    d.start()
    try:
        deaf = []
        for _ in range(12):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", deaf_port))
            deaf.append(s)
        # Their upstreams flood; once the kernel's buffers are full, tcpopsd holds a full pipe
        # (where it got one) for each deaf client.
        time.sleep(2)
        results = []
        readers = [threading.Thread(target=slow_reader, args=(port, size, results, threading.Event())) for _ in range(8)]
        t0 = time.monotonic()
        for t in readers:
            t.start()
        for t in readers:
            t.join(60)
        took = time.monotonic() - t0
        assert [r[0] for r in results] == ["ok"] * 8, results
        assert took < 30, took
        before = cpu_seconds(d.proc.pid)
        time.sleep(2)
        idle = cpu_seconds(d.proc.pid) - before
        assert idle < 0.3, f"tcpopsd burned {idle:.2f} s of CPU in 2 s with only deaf clients left"
        for s in deaf:
            s.close()
        wait_for(lambda: stats(d)["relays_open"] == 0, timeout=15, what="the deaf clients' relays ended")
        assert d.stop() == 0
    finally:
        d.kill()
        up.close()
        flood.close()
