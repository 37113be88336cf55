#!/usr/bin/env python3
"""make bench: tcpopsd beside the relays an operator would otherwise use, in one run, on loopback.

Each relay (direct, tcpopsd, HAProxy, nginx stream, systemd-socket-proxyd, socat: each when
installed) is started alone, measured, and stopped, so that none takes CPU from another. tcpopsd
runs with its default configuration (events on: closed_event = 1, log level info, its events in
the journal: a standalone systemd-journald is started when none runs). The upstreams are iperf3
and an epoll echo server (Benchmarks/connrate.c).

Usage: Benchmarks/bench.py [--tcpopsd PATH] [--seconds S] [--only NAME,...] [--idle N]
                           [--baseline PATH] [--rounds N]
(--baseline: another tcpopsd build measured in the same run as tcpopsd-before; --rounds: every
relay measured N times in alternating order, medians reported.)
"""
import argparse
import statistics
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = len(os.sched_getaffinity(0))
IPERF_PORT, ECHO_PORT = 5201, 5300
LIFETIME_S = 2.0
# journald's syslog socket: where HAProxy's and nginx's log lines go (as /dev/log does under systemd).
DEV_LOG = "/run/systemd/journal/dev-log"
# systemd (PID 1) raises net.unix.max_dgram_qlen to 512 at boot; a machine without it has the
# kernel's 10, and a journald whose sockets queue 10 datagrams drops (or, for a blocking sender,
# stalls) far sooner than one under systemd. The journald the bench starts gets systemd's.
SYSTEMD_DGRAM_QLEN = 512


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def tree(pid):
    """pid and every descendant (nginx workers, socat children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def tree_sum(pid, name, value):
    """The sum over pid's tree of value(text of /proc/P/name); processes gone meanwhile count 0."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/{name}") as f:
                total += value(f.read())
        except OSError:
            pass
    return total


def cpu_ticks(pid):
    """user + system time of pid's tree, with children already reaped (socat's forks)."""
    # utime stime cutime cstime, after the command name (which may hold spaces)
    return tree_sum(pid, "stat", lambda t: sum(int(x) for x in t.rsplit(")", 1)[1].split()[11:15]))


def rss_anon_kib(pid):
    return tree_sum(pid, "status", lambda t: sum(int(l.split()[1]) for l in t.splitlines() if l.startswith("RssAnon:")))


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Relay:
    """A relay under test: start() returns its pid (None for direct), ports map upstream ports to
    the ports clients use."""
    lifetime = True

    def __init__(self, name, work):
        self.name, self.work, self.proc = name, work, None
        self.ports = {}

    def start(self):
        raise NotImplementedError

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None


class Direct(Relay):
    lifetime = False

    def start(self):
        self.ports = {IPERF_PORT: IPERF_PORT, ECHO_PORT: ECHO_PORT}


class TCPOpsd(Relay):
    ident = "tcpopsd"

    def __init__(self, name, work, binary, workers=None, events=True, journal=None):
        super().__init__(name, work)
        self.binary, self.workers, self.events, self.journal = binary, workers, events, journal
        # A journal entry per connection (a relay that closes normally is one), none with
        # journal = "abnormal" (these connections all close normally) or without events.
        self.lines_per_conn = 1 if events and journal in (None, "all") else 0
        self.ports = {IPERF_PORT: 15201, ECHO_PORT: 15300, "lifetime": 15400, "idle": 15500}

    def start(self):
        workers = f"workers = {json.dumps(self.workers)}\n" if self.workers else ""
        events = "" if self.events else "[events]\nclosed_event = 0\n"
        if self.journal:
            events = f"[events]\njournal = {json.dumps(self.journal)}\n"
        conf = os.path.join(self.work, f"{self.name}.toml")
        with open(conf, "w") as f:
            f.write(f"""[daemon]
control_socket = "{self.work}/{self.name}.sock"
{workers}
{events}
[[listener]]
name = "iperf"
listen = "127.0.0.1:15201"
upstream = "127.0.0.1:{IPERF_PORT}"
[[listener]]
name = "echo"
listen = "127.0.0.1:15300"
upstream = "127.0.0.1:{ECHO_PORT}"
[[listener]]
name = "lifetime"
listen = "127.0.0.1:15400"
upstream = "127.0.0.1:{ECHO_PORT}"
lifetime = {LIFETIME_S}
[[listener]]
name = "idle"
listen = "127.0.0.1:15500"
upstream = "127.0.0.1:{ECHO_PORT}"
lifetime = 3600
keepalive = {{ idle = 600, count = 3, interval = 60 }}
""")
        self.control = f"{self.work}/{self.name}.sock"
        # As under systemd: the journal when one runs (auto picks it only when systemd started us).
        target = "journal" if journald_pid() else "stderr"
        self.proc = subprocess.Popen([self.binary, "--config", conf, "--log-target", target], stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.work, f"{self.name}.log"), "w"))
        return wait_port(15300)


class HAProxy(Relay):
    ident = "haproxy"

    def __init__(self, name, work, logging=False):
        super().__init__(name, work)
        self.logging = logging
        # `option tcplog`: a line per connection, sent to journald's syslog socket (dev-log).
        self.lines_per_conn = 1 if logging else 0

    def start(self):
        self.ports = {IPERF_PORT: 16201, ECHO_PORT: 16300, "lifetime": 16400, "idle": 16500}
        cfg = os.path.join(self.work, f"{self.name}.cfg")
        log_global = f"  log {DEV_LOG} local0\n" if self.logging else ""
        log_defaults = "  log global\n  option tcplog\n" if self.logging else ""
        with open(cfg, "w") as f:
            f.write(f"""global
  maxconn {max(1000, (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 800) // 2)}
  maxpipes 200
  nbthread {NCPU}
{log_global}defaults
{log_defaults}  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen iperf
  bind 127.0.0.1:16201
  server s 127.0.0.1:{IPERF_PORT}
listen echo
  bind 127.0.0.1:16300
  server s 127.0.0.1:{ECHO_PORT}
listen lifetime
  bind 127.0.0.1:16400
  timeout client {int(LIFETIME_S * 1000)}ms
  timeout server {int(LIFETIME_S * 1000)}ms
  server s 127.0.0.1:{ECHO_PORT}
listen idle
  bind 127.0.0.1:16500
  server s 127.0.0.1:{ECHO_PORT}
""")
        self.proc = subprocess.Popen(["haproxy", "-f", cfg, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return wait_port(16300)


class Nginx(Relay):
    MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
    ident = "nginx"

    def __init__(self, name, work, logging=False):
        super().__init__(name, work)
        self.logging = logging
        # stream `access_log syslog:`: a line per session, to journald's syslog socket.
        self.lines_per_conn = 1 if logging else 0

    def start(self):
        self.ports = {IPERF_PORT: 17201, ECHO_PORT: 17300, "lifetime": 17400, "idle": 17500}
        cfg = os.path.join(self.work, f"{self.name}.conf")
        log = ("  log_format basic '$remote_addr [$time_local] $protocol $status $bytes_sent $bytes_received $session_time';\n"
               f"  access_log syslog:server=unix:{DEV_LOG},nohostname basic;\n") if self.logging else ""
        with open(cfg, "w") as f:
            f.write(f"""load_module {self.MODULE};
worker_processes {NCPU};
worker_rlimit_nofile 65536;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx.err;
events {{ worker_connections 40000; }}
stream {{
{log}  server {{ listen 127.0.0.1:17201; proxy_pass 127.0.0.1:{IPERF_PORT}; }}
  server {{ listen 127.0.0.1:17300; proxy_pass 127.0.0.1:{ECHO_PORT}; }}
  server {{ listen 127.0.0.1:17400; proxy_pass 127.0.0.1:{ECHO_PORT}; proxy_timeout {int(LIFETIME_S * 1000)}ms; }}
  server {{ listen 127.0.0.1:17500; proxy_pass 127.0.0.1:{ECHO_PORT}; proxy_timeout 1h; }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", cfg, "-p", self.work, "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return wait_port(17300)

    def stop(self):
        super().stop()


class ProcessPerPort(Relay):
    """A relay run as one process per listening port (`procs`, in the order of `ports`' values)."""
    procs = []

    def use(self, port):
        """The process serving a client port."""
        return self.procs[list(self.ports.values()).index(port)].pid

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(10)
        self.proc = None


class SocketProxyd(ProcessPerPort):
    """systemd-socket-proxyd, one per upstream, each fed its listening socket by
    systemd-socket-activate. No idle timeout of its own: no lifetime row."""
    lifetime = False
    BIN = "/lib/systemd/systemd-socket-proxyd"

    def start(self):
        self.ports = {IPERF_PORT: 18201, ECHO_PORT: 18300, "idle": 18500}
        self.procs = [subprocess.Popen(
            ["systemd-socket-activate", "-l", f"127.0.0.1:{listen}", self.BIN, "--connections-max=20000", f"127.0.0.1:{up}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for listen, up in ((18201, IPERF_PORT), (18300, ECHO_PORT), (18500, ECHO_PORT))]
        self.proc = self.procs[1]
        return wait_port(18300)


class Socat(ProcessPerPort):
    """A process per connection: measured for streams, connections and latency only."""
    def start(self):
        self.ports = {IPERF_PORT: 19201, ECHO_PORT: 19300, "lifetime": 19400}
        self.procs = [subprocess.Popen(["socat", *opts, f"TCP-LISTEN:{listen},bind=127.0.0.1,fork,reuseaddr,backlog=4096",
                                        f"TCP:127.0.0.1:{up}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for listen, up, opts in ((19201, IPERF_PORT, []), (19300, ECHO_PORT, []),
                                               (19400, ECHO_PORT, ["-T", str(LIFETIME_S)]))]
        self.proc = self.procs[1]
        return wait_port(19300)


def pid_for(relay, port):
    return relay.use(port) if hasattr(relay, "use") else relay.pid


def iperf(port, seconds, streams):
    out = sh("iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J")
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def journald_pid():
    out = subprocess.run(["pgrep", "-x", "systemd-journal"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def settle(timeout=60):
    """Waits until journald has written what it was sent (its CPU time stops growing), so that
    one measurement's log backlog does not take CPU from the next."""
    jd = journald_pid()
    if not jd:
        return
    end = time.time() + timeout
    last = cpu_ticks(jd)
    while time.time() < end:
        time.sleep(0.5)
        now = cpu_ticks(jd)
        if now - last <= 1:
            return
        last = now


def journal_cursor():
    out = subprocess.run(["journalctl", "-n", "0", "--show-cursor", "--no-pager"], capture_output=True, text=True).stdout
    return next((l.split("cursor: ", 1)[1] for l in out.splitlines() if "cursor: " in l), None)


def journal_lines(cursor, ident):
    """Entries journald received from `ident` (SYSLOG_IDENTIFIER) since `cursor`."""
    args = ["journalctl", "--no-pager", "-o", "cat", f"SYSLOG_IDENTIFIER={ident}"] + ([f"--after-cursor={cursor}"] if cursor else [])
    return len(subprocess.run(args, capture_output=True, text=True).stdout.splitlines())


def connrate(tool, port, seconds, pid, ident=None):
    """connections/s, the proxy's CPU per connection, journald's (what the proxy's log entries
    cost it, written before settle() returns), how many connections were made and how many
    entries journald received from the proxy meanwhile."""
    jd = journald_pid()
    cursor = journal_cursor() if jd and ident else None
    t0 = cpu_ticks(pid) if pid else 0
    j0 = cpu_ticks(jd) if jd else 0
    out = sh(tool, "client", str(port), str(seconds), "8")
    t1 = cpu_ticks(pid) if pid else 0
    settle()
    j1 = cpu_ticks(jd) if jd else 0
    rate = float(out.split()[0])
    n = int(out.split("(")[1].split()[0])
    cpu_us = (t1 - t0) * 1e6 / CLK_TCK / n if pid and n else None
    journal_us = (j1 - j0) * 1e6 / CLK_TCK / n if pid and n and jd else None
    entries = journal_lines(cursor, ident) if jd and ident else None
    return rate, cpu_us, journal_us, n, entries


def malloc_probe():
    """A uprobe on glibc's malloc (perf probe, root): the allocations row. False when it cannot be had."""
    if not shutil.which("perf") or os.getuid() != 0:
        return False
    libc = next((p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6")
                 if os.path.exists(p)), None)
    if not libc:
        return False
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    if "probe_libc:malloc" not in listed:
        subprocess.run(["perf", "probe", "-q", "-x", libc, "malloc"], capture_output=True)
        listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    return "probe_libc:malloc" in listed


def per_connection(tool, port, seconds, pid, with_malloc):
    """Syscalls (every thread of the relay's process tree, perf's raw_syscalls tracepoint) and
    glibc mallocs per relayed connection, over a connection-rate run of their own (the probes slow
    the relay: this run's rate is not reported)."""
    if not shutil.which("perf") or not pid:
        return None, None
    events = "raw_syscalls:sys_enter" + (",probe_libc:malloc" if with_malloc else "")
    pids = ",".join(str(p) for p in tree(pid))
    stat = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", pids], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    out = sh(tool, "client", str(port), str(seconds), "8")
    time.sleep(0.3)
    stat.send_signal(2)
    err = stat.communicate(timeout=30)[1]
    n = int(out.split("(")[1].split()[0])
    counts = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 3 and f[0].strip().isdigit():
            counts[f[2]] = int(f[0])
    if not n:
        return None, None
    sc = counts.get("raw_syscalls:sys_enter")
    m = counts.get("probe_libc:malloc")
    return (sc / n if sc is not None else None), (m / n if m is not None else None)


def pingpong(tool, port, seconds, conns):
    out = sh(tool, "pingpong", str(port), str(seconds), str(conns), "64")
    parts = out.replace(",", "").split()
    return float(parts[parts.index("p50") + 1]), float(parts[parts.index("p99") + 1])


def hold_idle(port, n, pid, measure_s):
    """Opens n clients through the relay and keeps them idle: userspace bytes per relay (RssAnon
    growth over n), how many the relay really holds (each echoes a byte), and the CPU the idle
    relays cost over measure_s seconds."""
    base = rss_anon_kib(pid)
    fds0 = open_fds(pid)
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    held = 0
    for s in socks:  # a relay that cannot take the upstream side closes: count the live ones
        try:
            s.sendall(b"x")
        except OSError:
            continue
    for s in socks:
        try:
            if s.recv(1) == b"x":
                held += 1
        except OSError:
            pass
    time.sleep(1)
    per = (rss_anon_kib(pid) - base) * 1024 / max(held, 1)
    t0 = cpu_ticks(pid)
    time.sleep(measure_s)
    cpu_pct = (cpu_ticks(pid) - t0) / CLK_TCK / measure_s * 100
    for s in socks:
        s.close()
    # The next measurement starts once the relay has closed them all (and journald has written
    # their events): 18,000 closes still in progress made the lifetime row measure them instead.
    end = time.time() + 60
    while open_fds(pid) > fds0 + 16 and time.time() < end:
        time.sleep(0.1)
    settle()
    return per, held, cpu_pct


def open_fds(pid):
    n = 0
    for p in tree(pid):
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


def lifetime_lateness(tool, port, n):
    """n idle clients through a relay that closes them after LIFETIME_S idle: how late (p99, ms)
    after LIFETIME_S each saw its close (connrate lifetime)."""
    out = subprocess.run([tool, "lifetime", str(port), str(n), str(LIFETIME_S)], capture_output=True, text=True).stdout
    if "p99" not in out:
        return None
    parts = out.replace(",", "").split()
    return float(parts[parts.index("p99") + 1])


def rst_to_event(ctl, control, port, n):
    """RST from a client → its tcp:reset line on a `tcpopsctl events --follow --json` stream:
    p50/p99 in microseconds over n resets."""
    follow = subprocess.Popen([ctl, "--socket", control, "events", "--follow", "--json"], stdout=subprocess.PIPE, text=True, bufsize=1)
    lines = follow.stdout
    seen = {}
    stop = threading.Event()

    def reader():
        for line in lines:
            t = time.monotonic()
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "tcp:reset" and e.get("side") == "client":
                seen[e.get("remote")] = t
            if stop.is_set():
                break
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    time.sleep(0.5)
    sent = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"x")
        s.recv(1)
        key = "%s:%d" % s.getsockname()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sent[key] = time.monotonic()
        s.close()
        time.sleep(0.002)
    end = time.time() + 5
    while len(seen) < n and time.time() < end:
        time.sleep(0.05)
    stop.set()
    follow.terminate()
    follow.wait()
    lat = sorted((seen[k] - t) * 1e6 for k, t in sent.items() if k in seen)
    if not lat:
        return None
    return lat[len(lat) // 2], lat[len(lat) * 99 // 100], len(lat)


def journald():
    """A standalone journald when none runs (root only): tcpopsd logs as it would under systemd."""
    sock = "/run/systemd/journal/socket"
    if os.path.exists(sock):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.connect(sock)
            s.close()
            return None
        except OSError:
            os.unlink(sock)
    if os.getuid() != 0 or not os.path.exists("/lib/systemd/systemd-journald"):
        return None
    qlen_path = "/proc/sys/net/unix/max_dgram_qlen"
    with open(qlen_path) as f:
        old = f.read().strip()
    with open(qlen_path, "w") as f:
        f.write(str(SYSTEMD_DGRAM_QLEN))  # for the sockets journald makes now; put back below
    try:
        p = subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + 5
        while not os.path.exists(sock) and time.time() < end:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        with open(qlen_path, "w") as f:
            f.write(old)
    return p


def fmt(v, spec, ratio_to=None):
    if v is None:
        return "n/a"
    if spec.endswith("d"):
        v = int(round(v))  # a count's median of an even number of rounds is a mean of two
    s = format(v, spec)
    if ratio_to:
        s += f" ({v / ratio_to:.2f}x)"
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcpopsd", default=os.path.join(ROOT, ".build/release/tcpopsd"))
    ap.add_argument("--tcpopsctl", default=None)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--idle", type=int, default=9000)
    ap.add_argument("--only", default="")
    ap.add_argument("--baseline", default=None,
                    help="another tcpopsd binary (a build from before a change): measured in the same run as tcpopsd-before")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every relay this many times, in alternating order, and report the medians")
    args = ap.parse_args()
    ctl = args.tcpopsctl or os.path.join(os.path.dirname(args.tcpopsd), "tcpopsctl")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 1 << 20) if os.getuid() else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except ValueError:
        pass
    work = tempfile.mkdtemp(prefix="tcpopsd-bench.")
    tool = os.path.join(work, "connrate")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", tool, os.path.join(HERE, "connrate.c")], check=True)
    upstreams = [subprocess.Popen(["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                 subprocess.Popen([tool, "server", str(ECHO_PORT)])]
    jd = journald()
    with_malloc = malloc_probe()
    wait_port(ECHO_PORT)
    wait_port(IPERF_PORT)

    relays = [Direct("direct", work), TCPOpsd("tcpopsd", work, args.tcpopsd)]
    probe = os.path.join(work, "probe.toml")
    with open(probe, "w") as f:
        f.write('[daemon]\nworkers = "auto"\n[[listener]]\nname = "a"\nlisten = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\n')
    if subprocess.run([args.tcpopsd, "--config", probe, "--check-config"], capture_output=True).returncode == 0:
        relays[1] = TCPOpsd("tcpopsd-w1", work, args.tcpopsd, workers=1)
        relays.append(TCPOpsd("tcpopsd-auto", work, args.tcpopsd, workers="auto"))
    if args.baseline:
        # The same configuration as the row before it (tcpopsd-auto, or tcpopsd), from the other
        # binary, placed before it: "before", then "after".
        after = relays[-1]
        relays.insert(len(relays) - 1, TCPOpsd("tcpopsd-before", work, args.baseline, workers=after.workers))
    # For comparison only (not its default): what the events cost.
    relays.append(TCPOpsd("tcpopsd-auto-no-events", work, args.tcpopsd, workers="auto" if len(relays) > 2 else None, events=False))
    # (a): events on, no journal entry for a normal close, against the peers without logs.
    relays.append(TCPOpsd("tcpopsd-abnormal", work, args.tcpopsd, workers="auto" if len(relays) > 2 else None, journal="abnormal"))
    if shutil.which("haproxy"):
        relays.append(HAProxy("haproxy", work))
        relays.append(HAProxy("haproxy-tcplog", work, logging=True))  # (b): a line per connection
    if shutil.which("nginx") and os.path.exists(Nginx.MODULE):
        relays.append(Nginx("nginx", work))
        relays.append(Nginx("nginx-syslog", work, logging=True))
    if os.path.exists(SocketProxyd.BIN) and shutil.which("systemd-socket-activate"):
        relays.append(SocketProxyd("socket-proxyd", work))
    if shutil.which("socat"):
        relays.append(Socat("socat", work))
    if args.only:
        keep = set(args.only.split(",")) | {"direct"}
        relays = [r for r in relays if r.name in keep]

    version = subprocess.run([args.tcpopsd, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.uname().release}, {NCPU} CPUs, loadavg {os.getloadavg()[0]:.2f}; {version}; "
          f"tcpopsd with its default configuration (events on), logging to {'the journal' if os.path.exists('/run/systemd/journal/socket') else 'stderr'}"
          f"{f' (a journald started here, its datagram queue {SYSTEMD_DGRAM_QLEN} as under systemd)' if jd else ''}")
    results = {}
    rounds = {}
    T = args.seconds
    try:
        for n in range(max(1, args.rounds)):
            # Interleaved: every other round runs the relays in the reverse order, so that drift on a
            # shared machine (its load, its caches) falls on all of them alike.
            for r in (relays if n % 2 == 0 else list(reversed(relays))):
                ok = r.start()
                if ok is False:
                    print(f"{r.name}: did not start, skipped", file=sys.stderr)
                    r.stop()
                    continue
                time.sleep(0.3)
                res = {}
                p_echo = r.ports[ECHO_PORT]
                res["1 stream Gb/s"] = iperf(r.ports[IPERF_PORT], T, 1)
                res["8 streams Gb/s"] = iperf(r.ports[IPERF_PORT], T, 8)
                res["conn/s"], res["CPU µs/conn"], res["journald µs/conn"], made, entries = connrate(
                    tool, p_echo, T, pid_for(r, p_echo), getattr(r, "ident", None))
                if entries is not None:
                    res["entries/conn"] = entries / made if made else None
                    want = made * getattr(r, "lines_per_conn", 0)
                    if want:
                        res["lines lost"] = max(0, want - entries)
                if r.pid:
                    res["syscalls/conn"], res["mallocs/conn"] = per_connection(tool, p_echo, min(T, 2), pid_for(r, p_echo), with_malloc)
                    settle()
                res["p50 µs (1 conn)"], res["p99 µs (1 conn)"] = pingpong(tool, p_echo, min(T, 3), 1)
                res["p50 µs (100 conns)"], res["p99 µs (100 conns)"] = pingpong(tool, p_echo, min(T, 3), 100)
                if "idle" in r.ports and r.pid:
                    # A fresh process: memory freed by the runs before would otherwise be reused and
                    # hide what a relay costs (it did: 480 to 1,293 B for the same code).
                    r.stop()
                    settle()
                    r.start()
                    time.sleep(0.3)
                    res["B/idle relay"], res["idle held"], res["idle CPU %"] = hold_idle(r.ports["idle"], args.idle, pid_for(r, r.ports["idle"]), 10)
                if "lifetime" in r.ports:
                    res["lifetime p99 late ms"] = lifetime_lateness(tool, r.ports["lifetime"], 2000)
                    settle()
                if isinstance(r, TCPOpsd) and r.events:
                    rst = rst_to_event(ctl, r.control, r.ports[ECHO_PORT], 1000)
                    if rst:
                        res["RST→event p50 µs"], res["RST→event p99 µs"], _ = rst
                r.stop()
                settle()
                rounds.setdefault(r.name, []).append(res)
                print(f"{r.name}{f' (round {n + 1})' if args.rounds > 1 else ''}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()), flush=True)
    finally:
        for r in relays:
            r.stop()
        for p in upstreams:
            p.terminate()
        if jd:
            jd.terminate()
        shutil.rmtree(work, ignore_errors=True)

    # The median of each figure over the rounds (one round: the figure itself).
    order = [r.name for r in relays if r.name in rounds]
    for name in order:
        runs = rounds[name]
        keys = {k for res in runs for k in res}
        values = {k: [res[k] for res in runs if res.get(k) is not None] for k in keys}
        results[name] = {k: statistics.median(v) if v else None for k, v in values.items()}
    if args.rounds > 1:
        print(f"\n# medians of {args.rounds} interleaved rounds")
    direct = results.get("direct", {})
    rows = [("1 stream, Gb/s", "1 stream Gb/s", ".1f", True), ("8 streams, Gb/s", "8 streams Gb/s", ".1f", True),
            ("new connections/s", "conn/s", ",.0f", True), ("proxy CPU per connection, µs", "CPU µs/conn", ".0f", False),
            ("journald CPU per connection, µs (its log entries)", "journald µs/conn", ".0f", False),
            ("syscalls per connection (the relay's threads)", "syscalls/conn", ".1f", False),
            ("mallocs per connection (glibc malloc calls)", "mallocs/conn", ".1f", False),
            ("journal entries per connection (received by journald)", "entries/conn", ".2f", False),
            ("log lines lost (of one per connection)", "lines lost", "d", False),
            ("64 B round trip p50 / p99, µs (1 conn)", ("p50 µs (1 conn)", "p99 µs (1 conn)"), ".0f", False),
            ("64 B round trip p50 / p99, µs (100 conns)", ("p50 µs (100 conns)", "p99 µs (100 conns)"), ".0f", False),
            (f"userspace per idle relay, B ({args.idle:,} held)", "B/idle relay", ",.0f", False), ("idle relays held", "idle held", "d", False),
            ("CPU of the idle relays, % of a core", "idle CPU %", ".2f", False),
            (f"lifetime close p99 late, ms (2,000 idle, {LIFETIME_S:g} s)", "lifetime p99 late ms", ".1f", False),
            ("RST → tcp:reset on `events --follow` p50 / p99, µs", ("RST→event p50 µs", "RST→event p99 µs"), ".0f", False)]
    names = list(results)
    print()
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, key, spec, ratio in rows:
        cells = []
        for n in names:
            v = results[n]
            if isinstance(key, tuple):
                a, b = v.get(key[0]), v.get(key[1])
                cells.append("" if a is None else f"{a:{spec}} / {b:{spec}}")
            else:
                x = v.get(key)
                d = direct.get(key) if ratio and n != "direct" else None
                cells.append("" if x is None else fmt(x, spec, d))
        if any(cells):
            print(f"| {label} | " + " | ".join(cells) + " |")
    pairs(rounds, results)


def pairs(rounds, results):
    """Issue 21's fair comparisons: (a) tcpopsd with events on and no journal entry for a normal
    close against the peers without logs; (b) tcpopsd's default (an entry per relay) against the
    peers logging a line per connection into the same journald. Medians, and the rounds' range."""
    def spread(name, key):
        v = [r[key] for r in rounds.get(name, []) if r.get(key) is not None]
        return f"{min(v):,.1f}-{max(v):,.1f}" if len(v) > 1 else ""  # the median's precision

    for title, ours, peers in (("(a) no line per connection", "tcpopsd-abnormal", ("haproxy", "nginx")),
                               ("(b) a line per connection, same journald", "tcpopsd-auto", ("haproxy-tcplog", "nginx-syslog"))):
        peers = [p for p in peers if p in results]
        if ours not in results or not peers:
            continue
        best = max(peers, key=lambda p: results[p].get("conn/s") or 0)
        o, b = results[ours], results[best]
        print(f"\n{title}: {ours} against the best of {', '.join(peers)} ({best})")
        print("| | " + ours + " | " + " | ".join(peers) + " | ratio to " + best + " |")
        print("|---|" + "---|" * (len(peers) + 2))
        for label, key, better_low in (("new connections/s", "conn/s", False), ("relay CPU per connection, µs", "CPU µs/conn", True),
                                       ("journald CPU per connection, µs", "journald µs/conn", True),
                                       ("syscalls per connection", "syscalls/conn", True),
                                       ("journal entries per connection", "entries/conn", False), ("log lines lost", "lines lost", True)):
            def cell(name):
                v = results[name].get(key)
                if v is None:
                    return ""
                r = spread(name, key)
                return f"{v:,.2f}" if key == "entries/conn" else f"{v:,.1f}" + (f" ({r})" if r else "")
            ratio = ""
            if o.get(key) is not None and b.get(key):
                ratio = f"{o[key] / b[key]:.2f}x"
            print(f"| {label} | {cell(ours)} | " + " | ".join(cell(p) for p in peers) + f" | {ratio} |")


if __name__ == "__main__":
    main()
