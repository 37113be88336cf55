"""Issue 19: a Debian package. packaging/deb.sh (what `make deb` runs on the release build; here on
the test build, to spare a second build) makes a .deb that lintian passes without a warning. On a
clean Debian 12 (a fresh container: no build, no toolchain mounted in) `dpkg -i` installs it, keeps
the configuration already there (a conffile), enables and starts the service as Debian does; the
service relays; an upgrade in place to a rebuilt package, while a relay streams, restarts the
service and the relay survives (same conid, every byte once and in order); `dpkg --purge` stops it
(the relay drains: a FIN, not a reset) and leaves nothing behind."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from container import Container, unavailable
from helpers import BIN, ROOT, connect, free_port, listener, render_config, wait_for

why = unavailable()
pytestmark = pytest.mark.skipif(why is not None, reason=f"no systemd container: {why}")


def build(out, version):
    p = subprocess.run([os.path.join(ROOT, "packaging/deb.sh"), os.path.dirname(BIN), str(out), version],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout.strip().splitlines()[-1], p.stderr


def test_package_installs_upgrades_without_dropping_a_relay_and_purges(tmp_path, echo):
    debs = tmp_path / "debs"
    debs.mkdir()
    first, lint = build(debs, "0.3.0~test1")
    second, _ = build(debs, "0.3.0~test2")
    assert "W:" not in lint and "E:" not in lint, lint
    up = echo()
    port = free_port()
    box = Container(f"tcpdeb{os.getpid() % 100000}", clean=True, binds=[(str(debs), "/opt/debs")])
    try:
        assert box.run("test", "-e", "/usr/bin/tcpopsd", check=False).returncode != 0  # clean: nothing of ours
        # The operator's configuration is there before the package: it must be kept.
        box.write("/etc/tcpopsd/tcpopsd.toml",
                  render_config({"control_socket": "/run/tcpopsd/control.sock", "shutdown_timeout": 2},
                                listeners=[listener("pkg", port, up.address)]))
        box.run("dpkg", "-i", "--force-confold", f"/opt/debs/{os.path.basename(first)}", timeout=120)
        assert box.run("systemctl", "is-enabled", "tcpopsd.service", check=False).stdout.strip() == "enabled"
        wait_for(lambda: box.run("systemctl", "is-active", "tcpopsd.service", check=False).stdout.strip() == "active",
                 what="the service started by the package")
        assert f'"127.0.0.1:{port}"' in box.run("cat", "/etc/tcpopsd/tcpopsd.toml").stdout  # kept
        for path in ("/usr/share/man/man1/tcpopsctl.1.gz", "/usr/share/man/man8/tcpopsd.8.gz", "/usr/lib/systemd/catalog/tcpopsd.catalog",
                     "/usr/share/doc/tcpopsd/copyright", "/usr/share/bash-completion/completions/tcpopsctl"):
            assert box.run("test", "-e", path, check=False).returncode == 0, path

        # One relay streams checksummed data through the upgrade.
        s = connect(port)
        conid = json.loads(box.run("/usr/bin/tcpopsctl", "list", "--json").stdout)[0]["conid"]
        sent, got, stop = [0], bytearray(), threading.Event()

        def pattern(start, n):
            return bytes((k * 7 + 3) % 251 for k in range(start, start + n))

        def reader():
            s.settimeout(30)
            while True:
                d = s.recv(65536)
                if not d:
                    return
                got.extend(d)

        r = threading.Thread(target=reader)
        r.start()

        def writer():
            while not stop.is_set():
                s.sendall(pattern(sent[0], 2048))
                sent[0] += 2048
                time.sleep(0.01)
            s.shutdown(socket.SHUT_WR)

        w = threading.Thread(target=writer)
        w.start()
        time.sleep(1)
        old_pid = box.run("systemctl", "show", "-p", "MainPID", "--value", "tcpopsd").stdout.strip()
        box.run("dpkg", "-i", "--force-confold", f"/opt/debs/{os.path.basename(second)}", timeout=120)
        assert box.run("dpkg-query", "-W", "-f", "${Version}", "tcpopsd").stdout == "0.3.0~test2"
        new_pid = box.run("systemctl", "show", "-p", "MainPID", "--value", "tcpopsd").stdout.strip()
        assert new_pid != old_pid and new_pid != "0", (old_pid, new_pid)
        time.sleep(1)
        rows = json.loads(box.run("/usr/bin/tcpopsctl", "list", "--json").stdout)
        assert conid in [row["conid"] for row in rows], rows  # the same relay, carried by the new process
        stop.set()
        w.join(30)
        r.join(60)
        assert len(got) == sent[0] and bytes(got) == pattern(0, sent[0]), (len(got), sent[0])
        s.close()
        print(f"\npackage: upgrade while streaming: {sent[0]} bytes, every one back in order; conid {conid} kept")

        # Purge: the service stops (a relay open then gets a FIN), and nothing of the package stays.
        held = connect(port)
        held.sendall(b"x")
        held.settimeout(10)
        assert held.recv(10) == b"x"
        box.run("dpkg", "--purge", "tcpopsd", timeout=120)
        assert held.recv(10) == b"", "a clean close (FIN) at the stop"
        for path in ("/usr/bin/tcpopsd", "/usr/bin/tcpopsctl", "/lib/systemd/system/tcpopsd.service", "/etc/tcpopsd/tcpopsd.toml",
                     "/etc/systemd/system/multi-user.target.wants/tcpopsd.service"):
            assert box.run("test", "-e", path, check=False).returncode != 0, path
        assert box.run("systemctl", "is-active", "tcpopsd.service", check=False).stdout.strip() != "active"
    finally:
        box.close()
