"""Runs a command (exec, same pid) in a private mount namespace where /run/systemd/journal/socket is
a datagram socket nobody reads: a stalled journald, without touching the real one. Usage (as root):
    unshare -m --propagation private python3 stuck_journal.py PROGRAM ARGS..."""
import ctypes
import os
import signal
import socket
import subprocess
import sys

# Only this namespace sees the tmpfs (and the socket in it); the real journal, if any, is untouched.
os.makedirs("/run/systemd/journal", exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd/journal"], check=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
if os.fork() == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # dies with the program below
    while True:
        signal.pause()  # holds the socket, never reads it
s.close()
os.execv(sys.argv[1], sys.argv[1:])
