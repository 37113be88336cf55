"""Issue 2, item 1: bytes relayed unchanged under concurrency, with half-close both ways."""
import hashlib
import os
import socket
import threading

import pytest

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


@pytest.mark.parametrize("reads_late", [False, True])
def test_after_a_side_breaks_its_bytes_are_delivered_for_at_most_5_s(daemon, tmp_path, reads_late):
    """Issue 18, item 8: a client that resets while bytes it sent wait for an upstream that does not
    read. Its tcp:reset is raised at once; the relay lives on only to deliver what tcpopsd holds,
    for at most 5 s, then ends (logged, the upstream closed by tcpopsd). An upstream that reads in
    time gets every byte tcpopsd had read, then its FIN."""
    import json
    import time
    from helpers import AcceptOnce, hooked, reset_close
    up = AcceptOnce(rcvbuf=4096)
    port = free_port()
    name = f"drain{int(reads_late)}"
    d = daemon(listeners=[listener(name, port, up.address)], events=hooked(tmp_path))
    mine = lambda: [r for r in d.events() if r["TCPOPS_LISTENER"] == name]
    c = connect(port)
    u = up.wait()
    c.setblocking(False)
    try:
        for _ in range(1000):
            c.send(b"x" * 65536)
    except BlockingIOError:
        pass
    time.sleep(0.5)
    reset_close(c)
    t0 = time.monotonic()
    wait_for(lambda: [r for r in mine() if r["TCPOPS_EVENT"] == "tcp:reset" and r["TCPOPS_SIDE"] == "client"], timeout=3,
             what="the client's tcp:reset at once")
    rows = json.loads(d.ctl("list", "--json").stdout)
    assert sorted((r["side"], r["state"]) for r in rows) == [("client", -3), ("upstream", 1)], rows
    if reads_late:
        time.sleep(1)
        got = recv_all(u, timeout=10)  # everything tcpopsd read from the client, then its FIN
        wait_for(lambda: json.loads(d.ctl("list", "--json").stdout) == [], timeout=5, what="the relay's end")
        client_in = int([r for r in mine() if r["TCPOPS_SIDE"] == "client"][0]["TCPOPS_BYTES_IN"])
        assert len(got) == client_in > 0, (len(got), client_in)
        assert "still undelivered" not in d.logtext()
    else:
        wait_for(lambda: json.loads(d.ctl("list", "--json").stdout) == [], timeout=8, what="the relay's end")
        took = time.monotonic() - t0
        assert 4 <= took < 7, took
        wait_for(lambda: "still undelivered after 5 s" in d.logtext(), what="the end logged with why")
    u.close()
    up.close()
    assert d.stop() == 0
