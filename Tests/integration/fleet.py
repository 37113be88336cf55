"""Several tcpopsd hosts behind L4 balancers, on one machine (issue 11): each host a systemd-nspawn
container with a real systemd, in a network namespace of its own; a balancer namespace in front
with nftables (DNAT, numgen round robin) and HAProxy (send-proxy-v2), the service behind (an echo
server) and the journal collector (systemd-journal-remote); the clients in a namespace of their
own. Addresses exist only inside these namespaces:

    clients 10.77.9.2 --- 10.77.9.1  balancer  10.77.1.1 --- 10.77.1.2  host1 (tcpopsd)
                          VIP 10.77.0.100:5060 (nft)  10.77.2.1 --- 10.77.2.2  host2 (tcpopsd)
                          10.77.9.1:5070 (HAProxy)    echo :7000, collector :19532

The configuration for the balancers, hosts and journal shipping is contrib/fleet/'s, with these
addresses put in for its RFC 5737 examples."""
import json
import os
import shutil
import subprocess
import time
import uuid

import container
from container import Container
from helpers import ROOT, wait_for

FLEET_IMAGE = os.path.join(ROOT, ".cache", "nspawn-bookworm-fleet")
CONTRIB = os.path.join(ROOT, "contrib", "fleet")
PEERS = os.path.join(os.path.dirname(__file__), "fleet_peers.py")
VIP, HAPROXY_VIP = "10.77.0.100", "10.77.9.1"
CLIENT = "10.77.9.2"
HOSTS = {"host1": ("10.77.1.2", "10.77.1.1"), "host2": ("10.77.2.2", "10.77.2.1")}  # name: (address, balancer side)
REMOTE = "/lib/systemd/systemd-journal-remote"


def unavailable():
    """Why the fleet cannot be had here, or None (builds and caches its container image once)."""
    why = container.unavailable()
    if why:
        return why
    for tool in ("ip", "nft", "haproxy"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not os.path.exists(REMOTE):
        return "systemd-journal-remote is not installed (apt-get install systemd-journal-remote)"
    if not os.path.isdir(FLEET_IMAGE):
        tmp = FLEET_IMAGE + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        p = subprocess.run(["cp", "-a", container.CACHE, tmp], capture_output=True, text=True)
        if p.returncode != 0:
            return f"copying the container image failed: {p.stderr[-300:]}"
        why = container._add_packages(tmp, ("systemd-journal-remote",))
        if why:
            shutil.rmtree(tmp, ignore_errors=True)
            return why
        os.rename(tmp, FLEET_IMAGE)
    # Each host its own machine ID (nspawn's --uuid), as each machine of a fleet has: the image's
    # own, from the machine it was built on, is emptied.
    # (systemd would take /var/lib/dbus/machine-id's copy first: it becomes the link dbus expects.)
    mid = os.path.join(FLEET_IMAGE, "etc", "machine-id")
    if os.path.exists(mid) and os.path.getsize(mid):
        open(mid, "w").close()
    dbus = os.path.join(FLEET_IMAGE, "var", "lib", "dbus", "machine-id")
    if os.path.isfile(dbus) and not os.path.islink(dbus):
        os.unlink(dbus)
        os.symlink("/etc/machine-id", dbus)
    return None


def contrib(name, **subst):
    """A contrib/fleet file with the test's addresses in place of its examples."""
    text = open(os.path.join(CONTRIB, name)).read()
    for old, new in subst.items():
        text = text.replace(old, new)
    return text


def sh(*args, check=True, **kw):
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


class Fleet:
    def __init__(self, work):
        self.work = work
        tag = f"f{os.getpid() % 10000}"
        self.ns = {k: f"{tag}{k}" for k in ("lb", "cl", "host1", "host2")}
        self.procs = []
        self.boxes = {}
        self.collected = os.path.join(work, "remote")
        os.makedirs(self.collected)
        try:
            self._network(tag)
            self._balancer()
            for name in HOSTS:
                self._host(name)
            wait_for(lambda: all(self.haproxy_sees(h) == "UP" for h in HOSTS), timeout=30, what="HAProxy to find both hosts UP")
        except BaseException:
            self.close()
            raise

    # The namespaces and their links.
    def _network(self, tag):
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            self.netns(ns, "ip", "link", "set", "lo", "up")
        links = [("cl", CLIENT, HAPROXY_VIP), *[(h, a, b) for h, (a, b) in HOSTS.items()]]
        for i, (ns, addr, lb_addr) in enumerate(links):
            a, b = f"{tag}a{i}", f"{tag}b{i}"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", self.ns["lb"])
            sh("ip", "link", "set", b, "netns", self.ns[ns])
            self.netns(self.ns["lb"], "ip", "addr", "add", f"{lb_addr}/24", "dev", a)
            self.netns(self.ns["lb"], "ip", "link", "set", a, "up")
            self.netns(self.ns[ns], "ip", "addr", "add", f"{addr}/24", "dev", b)
            self.netns(self.ns[ns], "ip", "link", "set", b, "up")
            self.netns(self.ns[ns], "ip", "route", "add", "default", "via", lb_addr)
        self.netns(self.ns["lb"], "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    def _balancer(self):
        lb = self.ns["lb"]
        self.spawn(lb, "python3", PEERS, "echo", "0.0.0.0", "7000")
        nft = os.path.join(self.work, "balancer.nft")
        with open(nft, "w") as f:
            f.write(contrib("nftables-balancer.nft", **{"192.0.2.100": VIP, "192.0.2.11": HOSTS["host1"][0],
                                                        "192.0.2.12": HOSTS["host2"][0]}))
        self.netns(lb, "nft", "-f", nft)
        cfg = os.path.join(self.work, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(contrib("haproxy-front.cfg", **{"192.0.2.100": HAPROXY_VIP, "192.0.2.11": HOSTS["host1"][0],
                                                    "192.0.2.12": HOSTS["host2"][0], "maxconn 100000": "maxconn 1000"}))
        self.spawn(lb, "haproxy", "-f", cfg, "-db", log=os.path.join(self.work, "haproxy.log"))
        # The collector as contrib's drop-in starts it, on a port of its own instead of the socket
        # unit's fd, writing here instead of /var/log/journal/remote/.
        start = [l for l in contrib("journal-remote.conf").splitlines() if l.startswith("ExecStart=/")][-1]
        argv = start[len("ExecStart="):].replace("--listen-http=-3", "--listen-http=0.0.0.0:19532")
        argv = argv.replace("--output=/var/log/journal/remote/", f"--output={self.collected}/").split()
        assert argv[0] == REMOTE and f"--output={self.collected}/" in argv, argv
        self.spawn(lb, *argv)
        if shutil.which("prometheus"):
            prom = os.path.join(self.work, "prometheus.yml")
            with open(prom, "w") as f:
                f.write(contrib("prometheus.yml", **{"192.0.2.11": HOSTS["host1"][0], "192.0.2.12": HOSTS["host2"][0],
                                                     "scrape_interval: 15s": "scrape_interval: 1s"}))
            self.prometheus = f"http://{HAPROXY_VIP}:19090"
            self.spawn(lb, "prometheus", f"--config.file={prom}", f"--storage.tsdb.path={self.work}/tsdb",
                       f"--web.listen-address={HAPROXY_VIP}:19090", log=os.path.join(self.work, "prometheus.log"))
        else:
            self.prometheus = None
        wait_for(lambda: self.netns(lb, "ss", "-Hltn", "sport = :19532", check=False).stdout.strip()
                 and self.netns(lb, "ss", "-Hltn", "sport = :7000", check=False).stdout.strip()
                 and self.netns(lb, "ss", "-Hltn", "sport = :5070", check=False).stdout.strip(),
                 timeout=15, what="the balancer's echo server, HAProxy and the collector")

    def _host(self, name):
        addr, lb_addr = HOSTS[name]
        box = Container(name, image=FLEET_IMAGE, netns=self.ns[name], uuid=uuid.uuid4().hex)
        self.boxes[name] = box
        box.install()
        # Its own hostname (the image has the machine's it was built on), before journald stamps
        # _HOSTNAME on anything tcpopsd writes.
        box.write("/etc/hostname", name + "\n")
        box.run("hostname", name)
        box.run("systemctl", "restart", "systemd-journald")
        # A short drain, for the host stopped for good.
        box.write("/etc/tcpopsd/tcpopsd.toml", contrib("tcpopsd-host.toml", **{"192.0.2.1": lb_addr, "[daemon]\n": "[daemon]\nshutdown_timeout = 3\n"}))
        box.write("/etc/systemd/journal-upload.conf.d/tcpopsd.conf", contrib("journal-upload.conf", **{"192.0.2.1": lb_addr}))
        box.write("/etc/systemd/system/tcpopsd.socket", contrib("tcpopsd.socket"))
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "start", "tcpopsd.socket", "tcpopsd.service")
        box.run("systemctl", "start", "systemd-journal-upload.service")

    def haproxy_sees(self, host):
        """UP or DOWN: what HAProxy's health checks last said of `host` (it starts DOWN)."""
        state = "DOWN"
        with open(os.path.join(self.work, "haproxy.log")) as f:
            for line in f:
                if f"tcpopsd_hosts/{host} is UP" in line:
                    state = "UP"
                elif f"tcpopsd_hosts/{host} is DOWN" in line:
                    state = "DOWN"
        return state

    # Helpers.
    def netns(self, ns, *args, check=True, **kw):
        return sh("ip", "netns", "exec", ns, *args, check=check, **kw)

    def spawn(self, ns, *args, log=None):
        out = open(log or os.devnull, "w")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def clients(self, mode, out, stop, targets):
        """fleet_peers.py `mode` in the clients' namespace (returns the process)."""
        return self.spawn(self.ns["cl"], "python3", PEERS, mode, out, stop, *targets, log=out + ".log")

    def promql(self, query):
        """The result of a PromQL query at the fleet's Prometheus (in the balancer's namespace)."""
        code = ("import json,sys,urllib.parse,urllib.request; q=urllib.parse.urlencode({'query': sys.argv[1]}); "
                f"print(urllib.request.urlopen('{self.prometheus}/api/v1/query?' + q, timeout=5).read().decode())")
        out = self.netns(self.ns["lb"], "python3", "-c", code, query, check=False).stdout
        return json.loads(out)["data"]["result"] if out.strip() else None

    def collector(self, *match, output="json"):
        """journalctl over what the collector received."""
        return sh("journalctl", "-D", self.collected, "-o", output, "--no-pager", *match, check=False).stdout

    def close(self):
        for box in self.boxes.values():
            try:
                box.close()
            except Exception:  # noqa: BLE001 - tear down the rest regardless
                pass
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in self.ns.values():
            sh("ip", "netns", "del", ns, check=False)
