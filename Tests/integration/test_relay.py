"""Issue 2, item 1: bytes relayed unchanged under concurrency, with half-close both ways."""
import hashlib
import os
import socket
import threading

from helpers import EchoServer, connect, free_port, listener, recv_all, wait_for, write_hook, find_client_event


def test_32_clients_8mib_each_checksummed(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    # debug: "relay ended" is logged for every relay (at info only where a side raised no event)
    d = daemon(listeners=[listener("relay", port, up.address)], daemon={"log_level": "debug"})
    fds_idle = d.open_fds()
    n, size = 32, 8 * 1024 * 1024
    results = {}
    errors = []

    def client(i):
        try:
            data = os.urandom(size)
            s = connect(port, timeout=60)
            got = []

            def reader():
                got.append(recv_all(s, timeout=60))

            t = threading.Thread(target=reader)
            t.start()
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # half-close: the echo must still send everything back
            t.join(90)
            s.close()
            results[i] = (hashlib.sha256(data).hexdigest(), hashlib.sha256(got[0]).hexdigest(), len(got[0]))
        except Exception as e:  # noqa: BLE001
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == n
    for i, (sent, got, length) in results.items():
        assert length == size, f"client {i} got {length} bytes"
        assert sent == got, f"client {i}: checksum mismatch"
    # Every relay ended and the daemon holds no more fds than when idle (pipes may stay pooled).
    wait_for(lambda: "relay ended" in d.logtext() and d.logtext().count("relay ended") == n, what="all relays ended")
    assert d.open_fds() <= fds_idle + 2 * 256
    assert d.stop() == 0


def test_half_close_upstream_talks_after_client_fin(daemon, tmp_path):
    """Client sends and shuts its write side; the upstream answers after that FIN, then closes."""
    up = EchoServer(mode="sink", trailer=b"answer-after-your-fin" * 1000)
    port = free_port()
    d = daemon(listeners=[listener("hc", port, up.address)])
    s = connect(port)
    s.sendall(b"x" * 100000)
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s)
    assert got == b"answer-after-your-fin" * 1000
    s.close()
    up.close()
    assert d.stop() == 0


def test_half_close_client_talks_after_upstream_fin(daemon, tmp_path):
    """The upstream closes its write side first; the client can still send and the upstream reads it."""
    received = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    up_port = srv.getsockname()[1]

    def serve():
        c, _ = srv.accept()
        c.sendall(b"hello-then-fin")
        c.shutdown(socket.SHUT_WR)
        received.append(recv_all(c))
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    port = free_port()
    d = daemon(listeners=[listener("hc2", port, f"127.0.0.1:{up_port}")])
    s = connect(port)
    s.settimeout(10)
    buf = b""
    while True:
        chunk = s.recv(1000)
        if not chunk:
            break
        buf += chunk
    assert buf == b"hello-then-fin"  # the upstream's FIN arrived as our EOF
    payload = os.urandom(500000)
    s.sendall(payload)  # our direction is still open
    s.shutdown(socket.SHUT_WR)
    t.join(10)
    assert received and received[0] == payload
    s.close()
    srv.close()
    assert d.stop() == 0
