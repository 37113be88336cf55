"""A network namespace joined to the host by a veth pair, for peers that can go silent (no FIN, no
RST): cutting the namespace's end of the link makes every packet to it vanish."""
import itertools
import os
import subprocess
import sys

_counter = itertools.count()

ECHO_SERVER = """
import socket, sys, threading
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(16)
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


class NetNS:
    def __init__(self):
        n = next(_counter) % 200 + 20
        tag = f"{os.getpid() % 10000}x{n}"
        self.name = f"tcpt{tag}"
        self.host_if, self.ns_if = f"th{tag}", f"tn{tag}"
        sub = (os.getpid() + n) % 250 + 1
        self.host_ip, self.ns_ip = f"10.{200 + n % 50}.{sub}.1", f"10.{200 + n % 50}.{sub}.2"
        sh("ip", "netns", "add", self.name)
        try:
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            sh("ip", "link", "set", self.ns_if, "netns", self.name)
            sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            sh("ip", "link", "set", self.host_if, "up")
            self.run("ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
            self.run("ip", "link", "set", self.ns_if, "up")
            self.run("ip", "link", "set", "lo", "up")
            # Fixed neighbour entries: a cut link must look like silence, never like an ARP failure
            # (which the kernel reports as EHOSTUNREACH).
            ns_mac = self.run("cat", f"/sys/class/net/{self.ns_if}/address").stdout.strip()
            host_mac = open(f"/sys/class/net/{self.host_if}/address").read().strip()
            sh("ip", "neigh", "replace", self.ns_ip, "lladdr", ns_mac, "dev", self.host_if, "nud", "permanent")
            self.run("ip", "neigh", "replace", self.host_ip, "lladdr", host_mac, "dev", self.ns_if, "nud", "permanent")
        except Exception:
            self.close()
            raise

    def run(self, *args, check=True):
        return sh("ip", "netns", "exec", self.name, *args, check=check)

    def popen(self, *args, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kw)

    def echo_server(self, port):
        """An echo server on this namespace's address (each connection echoed until its FIN),
        running until killed; returns its Popen once it listens."""
        p = self.popen(sys.executable, "-c", ECHO_SERVER, self.ns_ip, str(port), stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline().strip()
        assert line == "listening", f"echo server in {self.name}: {line!r}"
        return p

    def cut(self):
        """The namespace's end goes down: nothing it sends or should receive gets through."""
        self.run("ip", "link", "set", self.ns_if, "down")

    def close(self):
        sh("ip", "netns", "del", self.name, check=False)
        sh("ip", "link", "del", self.host_if, check=False)


def netns_available():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    try:
        ns = NetNS()
    except Exception as e:  # noqa: BLE001
        return f"cannot create a network namespace here: {e}"
    ns.close()
    return None
