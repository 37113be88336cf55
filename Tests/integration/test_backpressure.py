"""Backpressure: a side that cannot take more stops the other side being read, and nothing spins
while it waits, not even when the waiting side has hung up (EPOLLHUP cannot be masked)."""
import os
import socket
import subprocess
import threading
import time

from helpers import connect, free_port, listener, recv_all, wait_for


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recv_q(listen_port, client_port):
    """Bytes waiting unread in tcpopsd's accepted socket for this client (ss Recv-Q)."""
    # Any state: after passing the upstream's FIN on, tcpopsd's socket is in FIN-WAIT-2.
    out = subprocess.run(["ss", "-Htn", f"( sport = :{listen_port} and dport = :{client_port} )"],
                         capture_output=True, text=True).stdout.split()
    return int(out[1]) if len(out) > 1 else 0


def test_no_spin_when_blocked_side_hangs_up(daemon):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited: the upstream fills up fast
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()[0]), daemon=True).start()
    port = free_port()
    d = daemon(listeners=[listener("bp", port, f"127.0.0.1:{srv.getsockname()[1]}")], daemon={"log_level": "debug"})
    c = connect(port)
    cport = c.getsockname()[1]
    wait_for(lambda: conns, what="upstream accept")
    up = conns[0]
    up.shutdown(socket.SHUT_WR)  # the upstream's FIN, passed on to the client
    c.settimeout(5)
    assert c.recv(10) == b""
    # The client sends until tcpopsd stops reading it (its pipe full, the upstream not reading):
    # bytes then wait in tcpopsd's socket, and the client's FIN can still reach it behind them.
    sent = 0
    deadline = time.monotonic() + 20
    while recv_q(port, cport) == 0:
        assert time.monotonic() < deadline, "tcpopsd never stopped reading the client"
        c.sendall(b"q" * 8192)
        sent += 8192
        time.sleep(0.01)
    c.shutdown(socket.SHUT_WR)  # hang-up on a side tcpopsd wants nothing from for now
    time.sleep(0.5)
    before = cpu_seconds(d.proc.pid)
    time.sleep(2)
    used = cpu_seconds(d.proc.pid) - before
    assert used < 0.3, f"tcpopsd burned {used:.2f} s of CPU in 2 s while waiting"
    # Once the upstream reads, every byte arrives, then the FIN, and the relay ends.
    got = recv_all(up, timeout=30)
    assert len(got) == sent
    wait_for(lambda: "relay ended" in d.logtext(), what="relay ended")
    c.close()
    up.close()
    assert d.stop() == 0
