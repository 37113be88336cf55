#!/usr/bin/env python3
"""What one journal entry costs journald, by its number of fields: the newest tcp:closed entry
tcpopsd wrote (run any relay first) is resent over the native socket cut to its first K fields
(each with a new conid, client port and message, as tcpopsd's entries differ), N entries paced
below journald's ceiling, and journald's CPU time (/proc stat) is divided by N once it has written
them. For comparison, HAProxy's `option tcplog` line over the syslog socket (one MESSAGE).
Prints the median microseconds of journald CPU per entry for each K over interleaved rounds (one
row's run is noisy: journald's file rotation and flushes land where they land).
Usage: journal_fields.py [N (20,000)] [ROUNDS (5)].
Runs against the journald that owns /run/systemd/journal/socket (root; no other load)."""
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import CLK_TCK, cpu_ticks, journald_pid  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
RATE = 4000  # entries/s: well below what journald takes, so that the queue never blocks


def settle(pid):
    last = cpu_ticks(pid)
    while True:
        time.sleep(0.5)
        now = cpu_ticks(pid)
        if now - last <= 1:
            return
        last = now


def measure(pid, make, sock):
    settle(pid)
    t0 = cpu_ticks(pid)
    start = time.monotonic()
    for n in range(N):
        sock.send(make(n))
        ahead = start + (n + 1) / RATE - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    settle(pid)
    return (cpu_ticks(pid) - t0) / CLK_TCK / N * 1e6


def main():
    out = subprocess.run(["journalctl", "-o", "json", "-n", "1", "SYSLOG_IDENTIFIER=tcpopsd", "TCPOPS_EVENT=tcp:closed"],
                         capture_output=True, text=True).stdout
    if not out.strip():
        sys.exit("no tcp:closed entry from tcpopsd in the journal to copy")
    entry = json.loads(out)
    # The identity first (what any entry has), then the event's fields in tcpopsd's order.
    first = ["MESSAGE", "SYSLOG_IDENTIFIER", "PRIORITY", "MESSAGE_ID", "TCPOPS_EVENT", "TCPOPS_REASON", "TCPOPS_CONID"]
    keys = first + [k for k in entry if not k.startswith("_") and k not in first]
    pid = journald_pid()
    if not pid:
        sys.exit("no journald runs")
    native = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    native.connect("/run/systemd/journal/socket")
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.connect("/run/systemd/journal/dev-log")

    def entry_of(cut):
        def make(n):
            e = dict(entry)
            e["SYSLOG_IDENTIFIER"] = "tcpopsd-fieldcost"
            e["TCPOPS_CONID"] = str(n)
            e["TCPOPS_REMOTE"] = f"127.0.0.1:{1024 + n % 60000}"
            e["MESSAGE"] = f"tcp:closed on conid {n} (client {e['TCPOPS_REMOTE']}, reason fin)"
            return ("\n".join(f"{key}={e[key] if not isinstance(e[key], list) else e[key][0]}" for key in cut) + "\n").encode()
        return make

    def line(n):
        return (f"<134>Dec  3 08:00:00 haproxy[4242]: 127.0.0.1:{1024 + n % 60000} [03/Dec/2026:08:00:00.{n % 1000:03d}] "
                f"echo echo/s 1/0/{n % 7} 32 -- 1/1/0/0/0 0/0").encode()

    rows = [(f"{k} fields, native protocol", entry_of(keys[:k]), native) for k in sorted({3, 12, 24, len(keys)})]
    rows.append(("a syslog line (HAProxy tcplog)", line, syslog))
    results = {name: [] for name, _, _ in rows}
    for r in range(ROUNDS):
        # Interleaved, the order reversed every other round: journald's own drift (file
        # rotation, flushes) falls on every row alike.
        for name, make, sock in (rows if r % 2 == 0 else list(reversed(rows))):
            results[name].append(measure(pid, make, sock))
    print(f"# journald CPU per entry: {N:,} entries at {RATE:,}/s a row, {ROUNDS} interleaved rounds ({time.strftime('%Y-%m-%d %H:%M')})")
    print("| entry | µs per entry, median (range) |")
    print("|---|---|")
    for name, _, _ in rows:
        v = sorted(results[name])
        print(f"| {name} | {v[len(v) // 2]:.1f} ({v[0]:.1f}-{v[-1]:.1f}) |")


if __name__ == "__main__":
    main()
