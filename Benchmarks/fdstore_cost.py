#!/usr/bin/env python3
"""What systemd's fd store costs PID 1 per relay, at a given store size (issue 22: a relay stored
when it is established, removed when it ends). Boots the test suite's container (a real systemd
in systemd-nspawn, Tests/integration/container.py), runs Benchmarks/fdstore_churn.c as a
Type=notify service, and reads the container's PID 1 CPU time (/proc on the host) over each
phase, waiting until PID 1 is idle again:
  - fill: FILL stores one after another (µs of PID 1 per store, averaged over the growing store);
  - churn: PAIRS times one store and one removal at that size (µs of PID 1 per relay that begins
    and one that ends).
Usage (root): fdstore_cost.py [PAIRS (5000)] [FILL[:MAX] ...] (1000 5000 10000); MAX is the
unit's FileDescriptorStoreMax= (FILL + 16 when not given)."""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "integration"))
from container import Container, unavailable  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def settle(pid):
    last = cpu_ticks(pid)
    while True:
        time.sleep(0.3)
        now = cpu_ticks(pid)
        if now == last:
            return now
        last = now


def wait_file(box, path, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if box.run("test", "-e", path, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"{path} never appeared")


def main():
    why = unavailable()
    if why:
        sys.exit(f"no container: {why}")
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rows = [(int(a.split(":")[0]), int(a.split(":")[1]) if ":" in a else int(a.split(":")[0]) + 16)
            for a in sys.argv[2:]] or [(n, n + 16) for n in (1000, 5000, 10000)]
    work = tempfile.mkdtemp(prefix="fdstore-cost.")
    subprocess.run(["gcc", "-O2", "-o", os.path.join(work, "fdstore_churn"), os.path.join(HERE, "fdstore_churn.c")], check=True)
    box = Container("fdstore-cost", binds=[(work, "/opt/churn")])
    try:
        print(f"# PID 1 (systemd in the test container) CPU, {pairs:,} store+remove pairs a row ({time.strftime('%Y-%m-%d %H:%M')})")
        print("| fds in the store | FileDescriptorStoreMax= | µs a store while filling | µs a store + removal at that size |")
        print("|---|---|---|---|")
        for fill, most in rows:
            box.run("rm", "-rf", "/run/churn")
            box.run("mkdir", "-p", "/run/churn")
            box.write("/etc/systemd/system/churn.service", f"""[Service]
Type=notify
ExecStart=/opt/churn/fdstore_churn {fill} {pairs} /run/churn
FileDescriptorStoreMax={most}
""")
            box.run("systemctl", "daemon-reload")
            t0 = settle(box.pid)
            box.run("systemctl", "start", "churn.service")
            wait_file(box, "/run/churn/filled")
            t1 = settle(box.pid)
            box.run("touch", "/run/churn/go")
            wait_file(box, "/run/churn/done")
            t2 = settle(box.pid)
            box.run("systemctl", "stop", "churn.service")  # (the store is emptied: a stop)
            settle(box.pid)
            per_store = (t1 - t0) / CLK_TCK / fill * 1e6
            per_pair = (t2 - t1) / CLK_TCK / pairs * 1e6
            print(f"| {fill:,} | {most:,} | {per_store:.1f} | {per_pair:.1f} |", flush=True)
    finally:
        box.close()


if __name__ == "__main__":
    main()
