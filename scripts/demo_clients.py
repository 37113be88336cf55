#!/usr/bin/env python3
"""The demo's clients: a normal close (FIN), a reset (RST), and an idle one that tcpopsctl talks
to before the lifetime expires it. Usage: demo_clients.py PORT TCPOPSCTL CONTROL_SOCKET"""
import socket
import struct
import subprocess
import sys
import time

port = int(sys.argv[1])
ctl = [sys.argv[2], "--socket", sys.argv[3]] if len(sys.argv) > 3 else None


def tcpopsctl(*args):
    cmd = [ctl[0], args[0], *ctl[1:], *args[1:]]
    print("    $ tcpopsctl " + " ".join(args), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in (out.stdout + out.stderr).splitlines():
        print("      " + line, flush=True)
    return out.stdout.strip()


def say(msg):
    print(f"\n>>> {msg}", flush=True)


say("client 1 sends 'hello', reads the echo, closes normally (FIN): expect tcp:closed")
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"hello through tcpopsd\n")
s.settimeout(5)
echoed = s.recv(100).decode().strip()
print("    echoed back:", echoed, flush=True)
if echoed != "hello through tcpopsd":
    sys.exit("demo: client 1 got no echo: tcpopsd could not reach the upstream on 127.0.0.1:5070")
s.close()
time.sleep(0.5)

say("client 2 sends a line, then resets (SO_LINGER 0): expect tcp:reset reason rst")
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"about to reset\n")
s.recv(100)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
time.sleep(0.5)

say("client 3 connects; tcpopsctl finds it, sends it a line; then it idles past lifetime = 3: expect tcp:timeout reason lifetime")
s = socket.create_connection(("127.0.0.1", port))
s.settimeout(10)
t0 = time.monotonic()
if ctl:
    tcpopsctl("list")
    conid = tcpopsctl("conid", "127.0.0.1:%d" % s.getsockname()[1])
    tcpopsctl("send", conid, "hello from tcpopsctl\n")
    print("    client 3 received:", s.recv(100).decode().strip(), flush=True)
    tcpopsctl("state", conid)
print(f"    closed by tcpopsd after {time.monotonic() - t0 if s.recv(10) == b'' else -1:.1f} s", flush=True)
time.sleep(0.5)
if ctl:
    tcpopsctl("stats")
