#!/usr/bin/env python3
"""What crash safety costs (issue 22), with it on and off in the same run, under a real systemd:
tcpopsd.service in the test suite's container (systemd-nspawn, Tests/integration/container.py),
`[daemon] crash_safe` true or false, new connections from the host (Benchmarks/connrate.c, 8
threads, each connection a 64-byte round trip) to an echo server on the host. Per mode:
connections/s, tcpopsd's CPU per connection, its syscalls per connection (perf, a run of their own),
and PID 1's CPU per connection (the container's systemd, read from /proc on the host, waited for
until it is idle: what the fd store and the unit's notifications cost it). Rounds alternate the
modes' order; medians are reported.

Usage (root): crash_cost.py [--tcpopsd PATH] [--seconds S] [--rounds N]"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
ECHO_PORT, PORT = 5310, 15310


def descendant(root, comm):
    todo = [root]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == comm:
                    return p
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return None


def syscalls_per_conn(tool, pid, seconds):
    if not shutil.which("perf"):
        return None
    stat = subprocess.Popen(["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    out = subprocess.run([tool, "client", str(PORT), str(seconds), "8"], capture_output=True, text=True, check=True).stdout
    time.sleep(0.3)
    stat.send_signal(2)
    err = stat.communicate(timeout=30)[1]
    n = int(out.split("(")[1].split()[0])
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 3 and f[0].strip().isdigit():
            return int(f[0]) / n if n else None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcpopsd", default=os.path.join(ROOT, ".build", "release", "tcpopsd"))
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    # The container binds the folder of the build it is given.
    os.environ["TCPOPSD"] = os.path.abspath(args.tcpopsd)
    sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
    sys.path.insert(0, HERE)
    from container import Container, unavailable  # noqa: E402
    from bench import wait_port  # noqa: E402
    from fdstore_cost import cpu_ticks, settle  # noqa: E402  (one process's CPU; PID 1 waited for until idle)
    why = unavailable()
    if why:
        print(f"# crash safety's cost: skipped (no systemd container: {why})")
        return
    work = tempfile.mkdtemp(prefix="crash-cost.")
    tool = os.path.join(work, "connrate")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", tool, os.path.join(HERE, "connrate.c")], check=True)
    echo = subprocess.Popen([tool, "server", str(ECHO_PORT)])
    box = Container("crash-cost")
    results = {"on": [], "off": []}
    try:
        box.install()
        wait_port(ECHO_PORT)
        print(f"# crash safety on and off, tcpopsd.service under systemd (PID 1) in a container, {args.rounds} interleaved "
              f"rounds of {args.seconds:g} s ({time.strftime('%Y-%m-%d %H:%M')}, "
              f"{subprocess.run([args.tcpopsd, '--version'], capture_output=True, text=True).stdout.strip()})", flush=True)
        for n in range(args.rounds):
            for mode in (("on", "off") if n % 2 == 0 else ("off", "on")):
                box.run("systemctl", "stop", "tcpopsd.service", check=False)
                box.run("systemctl", "reset-failed", "tcpopsd.service", check=False)
                box.write("/etc/tcpopsd/tcpopsd.toml", f"""[daemon]
control_socket = "/run/tcpopsd/control.sock"
crash_safe = {"true" if mode == "on" else "false"}
[[listener]]
name = "echo"
listen = "127.0.0.1:{PORT}"
upstream = "127.0.0.1:{ECHO_PORT}"
""")
                box.run("systemctl", "start", "tcpopsd.service")
                if not wait_port(PORT):
                    raise SystemExit("tcpopsd did not listen")
                pid = descendant(box.pid, "tcpopsd")
                time.sleep(0.5)
                p0 = settle(box.pid)
                t0 = cpu_ticks(pid)
                out = subprocess.run([tool, "client", str(PORT), str(args.seconds), "8"], capture_output=True, text=True,
                                     check=True).stdout
                t1 = cpu_ticks(pid)
                p1 = settle(box.pid)
                rate = float(out.split()[0])
                made = int(out.split("(")[1].split()[0])
                res = {"conn/s": rate, "cpu": (t1 - t0) * 1e6 / CLK_TCK / made, "pid1": (p1 - p0) * 1e6 / CLK_TCK / made,
                       "syscalls": syscalls_per_conn(tool, pid, min(args.seconds, 2))}
                results[mode].append(res)
                print(f"crash_safe {mode} (round {n + 1}): " + ", ".join(f"{k} {v:.2f}" for k, v in res.items() if v is not None),
                      flush=True)
        box.run("systemctl", "stop", "tcpopsd.service", check=False)
    finally:
        box.close()
        echo.terminate()
        shutil.rmtree(work, ignore_errors=True)

    def med(mode, key):
        v = [r[key] for r in results[mode] if r.get(key) is not None]
        return statistics.median(v) if v else None

    print(f"\n| medians of {args.rounds} rounds | crash_safe = true | crash_safe = false |")
    print("|---|---|---|")
    for label, key, spec in (("new connections/s", "conn/s", ",.0f"), ("tcpopsd CPU per connection, µs", "cpu", ".1f"),
                             ("syscalls per connection", "syscalls", ".1f"), ("PID 1 CPU per connection, µs", "pid1", ".2f")):
        on, off = med("on", key), med("off", key)
        print(f"| {label} | {'' if on is None else format(on, spec)} | {'' if off is None else format(off, spec)} |")


if __name__ == "__main__":
    main()
