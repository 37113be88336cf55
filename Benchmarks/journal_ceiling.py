#!/usr/bin/env python3
"""How many tcpopsd event entries a second journald can write: takes the newest tcp:closed entry
tcpopsd wrote (run `make bench` or any relay first), then resends it over the journal's native
socket as fast as journald takes it (the send blocks while journald's queue is full), each with a
new conid, message and client port, for SECONDS (default 10). Prints entries/s."""
import json
import socket
import subprocess
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
out = subprocess.run(["journalctl", "-o", "json", "-n", "1", "SYSLOG_IDENTIFIER=tcpopsd", "TCPOPS_EVENT=tcp:closed"],
                     capture_output=True, text=True).stdout
if not out.strip():
    sys.exit("no tcp:closed entry from tcpopsd in the journal to copy")
entry = json.loads(out)
keys = [k for k in entry if not k.startswith("_")]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("/run/systemd/journal/socket")
n, t0 = 0, time.time()
while time.time() - t0 < seconds:
    entry["TCPOPS_CONID"] = str(n)
    entry["TCPOPS_REMOTE"] = f"127.0.0.1:{1024 + n % 60000}"
    entry["MESSAGE"] = f"tcp:closed on conid {n} (client {entry['TCPOPS_REMOTE']}, reason fin)"
    s.send(("\n".join(f"{k}={entry[k]}" for k in keys) + "\n").encode())
    n += 1
print(f"{len(keys)} fields an entry; journald took {n / (time.time() - t0):,.0f} entries/s")
