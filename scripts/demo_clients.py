#!/usr/bin/env python3
"""The demo's clients: a normal close (FIN), a reset (RST), and an idle one the lifetime expires."""
import socket
import struct
import sys
import time

port = int(sys.argv[1])


def say(msg):
    print(f"\n>>> {msg}", flush=True)


say("client 1 sends 'hello', reads the echo, closes normally (FIN): expect tcp:closed")
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"hello through tcpopsd\n")
print("    echoed back:", s.recv(100).decode().strip(), flush=True)
s.close()
time.sleep(0.5)

say("client 2 sends a line, then resets (SO_LINGER 0): expect tcp:reset reason rst")
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"about to reset\n")
s.recv(100)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
time.sleep(0.5)

say("client 3 connects and stays idle past lifetime = 3: expect tcp:timeout reason lifetime")
s = socket.create_connection(("127.0.0.1", port))
s.settimeout(10)
t0 = time.monotonic()
print(f"    closed by tcpopsd after {time.monotonic() - t0 if s.recv(10) == b'' else -1:.1f} s", flush=True)
time.sleep(0.5)
