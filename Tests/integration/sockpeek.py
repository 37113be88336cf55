"""Reads socket options of a socket inside another process (pidfd_getfd, root), to check what
tcpopsd really set on a connection."""
import ctypes
import os
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)
SYS_pidfd_open, SYS_pidfd_getfd = 434, 438


def _dup_from(pid, fd):
    pidfd = _libc.syscall(SYS_pidfd_open, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    try:
        new = _libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        if new < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return new
    finally:
        os.close(pidfd)


def find_socket(pid, peer_port):
    """A duplicate of the daemon's socket whose peer port is peer_port (caller closes it)."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            new = _dup_from(pid, int(name))
        except OSError:
            continue
        s = socket.socket(fileno=new)
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.getpeername()[1] == peer_port:
                return s
        except OSError:
            pass
        s.close()
    return None


def keepalive_options(s):
    return (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL))
