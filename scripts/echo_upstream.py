#!/usr/bin/env python3
"""A tiny echo server for the demo: echoes bytes, passes a FIN on. Usage: echo_upstream.py PORT"""
import os
import socket
import sys
import threading
import time


def serve(c):
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()


# A slow start (a test sets this): the demo must wait for the upstream, not race it.
time.sleep(float(os.environ.get("ECHO_START_DELAY", "0")))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
print(f"echo upstream on 127.0.0.1:{sys.argv[1]}", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
