#!/usr/bin/env python3
"""How fast a fleet's events reach one collector (root; the topology of Tests/integration/fleet.py):
N short connections through the nftables balancer (each raises two events, its client's and its
upstream's FIN, on whichever host it reached), then the time until systemd-journal-remote has
them all, and the collector's view of a few resets. Usage: fleet_journal.py [N] (default 2000)."""
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "integration"))

import fleet  # noqa: E402
from fleet import HOSTS, VIP, Fleet  # noqa: E402

CLIENT = """
import socket, struct, sys, threading
n, vip = int(sys.argv[1]), sys.argv[2]
def work(k):
    for _ in range(k):
        s = socket.create_connection((vip, 5060), timeout=10)
        s.sendall(b"x"); s.recv(1); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
ts = [threading.Thread(target=work, args=(n // 8,)) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
for _ in range(4):  # and a few resets, for the query below
    s = socket.create_connection((vip, 5060), timeout=10); s.sendall(b"x"); s.recv(1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
"""


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    n -= n % 8
    why = fleet.unavailable()
    if why:
        sys.exit(f"no fleet: {why}")
    work = tempfile.mkdtemp(prefix="tcpopsd-fleet.")
    f = Fleet(work)
    try:
        want = 2 * n
        t0 = time.monotonic()
        f.netns(f.ns["cl"], "python3", "-c", CLIENT, str(n), VIP)
        t1 = time.monotonic()

        def closed():
            out = subprocess.run(["journalctl", "-D", f.collected, "-o", "cat", "--output-fields=TCPOPS_EVENT", "--no-pager",
                                  "TCPOPS_EVENT=tcp:closed"], capture_output=True, text=True).stdout
            return len(out.splitlines())

        got = 0
        while time.monotonic() - t1 < 120:
            got = closed()
            if got >= want:
                break
            time.sleep(0.2)
        t2 = time.monotonic()
        per_host = {h: int(f.boxes[h].run("/usr/local/bin/tcpopsctl", "stats").stdout.split("accepted ")[1].split()[0]) for h in HOSTS}
        print(f"{n} connections through the nftables balancer in {t1 - t0:.1f} s ({n / (t1 - t0):,.0f}/s), "
              f"per host {per_host}; the collector had {got} of {want} tcp:closed entries "
              f"{t2 - t1:.1f} s after the last connection ({got / (t2 - t0):,.0f} entries/s end to end)")
        print(subprocess.run(["journalctl", "-D", f.collected, "--no-pager", "TCPOPS_EVENT=tcp:reset",
                              "-o", "verbose", "--output-fields=_HOSTNAME,_MACHINE_ID,TCPOPS_CONID,TCPOPS_REMOTE,TCPOPS_REASON,"
                              "TCPOPS_ERRNO,TCPOPS_SIDE,MESSAGE"],
                             capture_output=True, text=True).stdout)
        print(subprocess.run(["journalctl", "-D", f.collected, "--no-pager", "TCPOPS_EVENT=tcp:reset", "TCPOPS_SIDE=client"],
                             capture_output=True, text=True).stdout)
    finally:
        f.close()


if __name__ == "__main__":
    main()
