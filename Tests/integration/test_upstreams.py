"""Issue 8: upstreams by name and more than one upstream. A name is resolved (off the event loop)
at start and on reload; a list, and the addresses of a name, are tried in order when a connect is
refused, unreachable or times out, each failed attempt raising its own event; `list` says which
upstream a relay uses. Names come from a private /etc/hosts (a mount namespace of tcpopsd's own)."""
import json
import shutil
import signal
import subprocess
import time

import pytest

from helpers import BIN, Daemon, connect, echoed, free_port, hooked, is_root, listener, render_config, wait_for
from netns import NetNS, netns_available

needs_ns = pytest.mark.skipif(not is_root() or not shutil.which("unshare"), reason="needs root and unshare for a private /etc/hosts")


def hosts_wrapper(hosts_file):
    """Runs tcpopsd with `hosts_file` as its /etc/hosts (bind-mounted in a private mount namespace)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'mount --bind {hosts_file} /etc/hosts && exec "$0" "$@"']


def roundtrip(port, payload=b"through"):
    s = connect(port)
    return s, echoed(s, payload) == payload


def test_a_list_is_tried_in_order_and_each_failure_raises_its_event(daemon, echo, tmp_path):
    up = echo()
    dead, dead2 = free_port(), free_port()
    port, port2 = free_port(), free_port()
    d = daemon(listeners=[listener("list", port, [f"127.0.0.1:{dead}", up.address]),
                          listener("none", port2, [f"127.0.0.1:{dead}", f"127.0.0.1:{dead2}"])], events=hooked(tmp_path))
    s, ok = roundtrip(port)
    assert ok
    ev = wait_for(lambda: d.events(), what="the refused attempt's event")
    assert len(ev) == 1 and ev[0]["TCPOPS_EVENT"] == "tcp:reset" and ev[0]["TCPOPS_REASON"] == "refused"
    assert ev[0]["TCPOPS_SIDE"] == "upstream" and ev[0]["TCPOPS_REMOTE_PORT"] == str(dead)
    rows = json.loads(d.ctl("list", "--json").stdout)
    assert {r["upstream"] for r in rows} == {up.address}, rows
    assert [r["remote"] for r in rows if r["side"] == "upstream"] == [up.address]
    assert str(rows[0]["conid"]) != ev[0]["TCPOPS_CONID"] and str(rows[1]["conid"]) != ev[0]["TCPOPS_CONID"]
    s.close()
    # Every upstream refusing: one event per attempt, and the client is closed.
    c = connect(port2)
    c.settimeout(5)
    assert c.recv(10) == b""
    refused = lambda: [r for r in d.events() if r["TCPOPS_REASON"] == "refused"]
    wait_for(lambda: len(refused()) == 3, what="two more refused attempts")
    assert sorted(int(r["TCPOPS_REMOTE_PORT"]) for r in refused()) == sorted([dead, dead, dead2])
    assert d.stop() == 0


@pytest.mark.skipif(netns_available() is not None, reason=netns_available() or "")
def test_a_connect_timeout_moves_on_to_the_next(daemon, echo, tmp_path):
    ns = NetNS()
    try:
        ns.cut()  # SYNs to the namespace vanish
        up = echo()
        port = free_port()
        d = daemon(listeners=[listener("ct", port, [f"{ns.ns_ip}:9", up.address], connect_timeout=1)], events=hooked(tmp_path))
        s, ok = roundtrip(port)
        assert ok
        ev = wait_for(lambda: d.events(), what="the timed-out attempt's event")
        assert ev[0]["TCPOPS_EVENT"] == "tcp:timeout" and ev[0]["TCPOPS_REASON"] == "connect-timeout"
        assert ev[0]["TCPOPS_REMOTE_IP"] == ns.ns_ip
        s.close()
        assert d.stop() == 0
    finally:
        ns.close()


@needs_ns
def test_a_name_resolving_to_several_addresses(tmp_path, echo):
    """multi.test resolves to ::1 and 127.0.0.1; the upstream listens on 127.0.0.1 only: the ::1
    attempt is refused (its own event) and the next address is used."""
    up = echo()
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 multi.test\n127.0.0.1 multi.test\n")
    port = free_port()
    d = Daemon(tmp_path, listeners=[listener("name", port, f"multi.test:{up.port}")], events=hooked(tmp_path),
               wrapper=hosts_wrapper(hosts))
    d.start()
    try:
        s, ok = roundtrip(port)
        assert ok
        ev = wait_for(lambda: d.events(), what="the ::1 attempt's event")
        assert ev[0]["TCPOPS_REASON"] == "refused" and ev[0]["TCPOPS_REMOTE_IP"] == "::1", ev[0]
        rows = json.loads(d.ctl("list", "--json").stdout)
        assert {r["upstream"] for r in rows} == {f"multi.test:{up.port}"}
        assert [r["remote"] for r in rows if r["side"] == "upstream"] == [f"127.0.0.1:{up.port}"]
        s.close()
        # On reload a name that no longer resolves keeps its addresses (a warning), and still relays.
        hosts.write_text("127.0.0.1 other.test\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in d.logtext(), what="reload")
        assert "multi.test" in d.logtext() and "keeping its addresses" in d.logtext()
        s, ok = roundtrip(port)
        assert ok
        s.close()
        assert d.stop() == 0
    finally:
        d.kill()


@needs_ns
def test_a_name_that_does_not_resolve(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(render_config({"control_socket": str(tmp_path / "c.sock")},
                                 listeners=[listener("nx", free_port(), "nowhere.invalid:5070")]))
    run = lambda *extra: subprocess.run(hosts_wrapper(hosts) + [BIN, "--config", str(cfg), "--log-target", "stderr", *extra],
                                        capture_output=True, text=True, timeout=30)
    p = run()
    assert p.returncode == 78 and f"{cfg}:" in p.stderr and "nowhere.invalid" in p.stderr and "does not resolve" in p.stderr, p.stderr
    p = run("--check-config")
    assert p.returncode == 0 and "warning:" in p.stderr and "does not resolve" in p.stderr, (p.returncode, p.stderr)


@needs_ns
def test_a_name_that_resolves_to_a_listener_of_ours_is_refused(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 me.test\n")
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(render_config({"control_socket": str(tmp_path / "c.sock")}, listeners=[listener("self", port, f"me.test:{port}")]))
    p = subprocess.run(hosts_wrapper(hosts) + [BIN, "--check-config", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 78 and "relays to itself" in p.stderr and "me.test resolves to 127.0.0.1" in p.stderr, p.stderr


@pytest.mark.skipif(netns_available() is not None, reason=netns_available() or "")
def test_one_client_tries_a_bounded_number_of_upstreams(daemon, tmp_path):
    """Issue 18, item 6. Before: 50 black-holed upstream addresses with connect_timeout = 0.2 made
    one client wait 10 s, and 20 clients raised 1,050 connect-timeout events. Now at most
    connect_attempts (default 3) addresses are tried for a client, within connect_deadline of its
    accept; then tcpopsd closes the client (a FIN; no event for it), and the relay's end says why."""
    ns = NetNS()
    try:
        ns.cut()  # SYNs to the namespace vanish: every attempt times out
        holes = [f"{ns.ns_ip}:{p}" for p in range(9000, 9050)]
        port, slow = free_port(), free_port()
        d = daemon(listeners=[listener("holes", port, holes, connect_timeout=0.2),
                              listener("deadline", slow, holes, connect_timeout=0.2, connect_attempts=50, connect_deadline=0.5)],
                   events=hooked(tmp_path))
        clients = [connect(port) for _ in range(20)]
        t0 = time.monotonic()
        for c in clients:
            c.settimeout(10)
            assert c.recv(10) == b""  # closed by tcpopsd
        waited = time.monotonic() - t0
        assert waited < 2.5, f"20 clients closed after {waited:.2f} s (3 attempts of 0.2 s each)"
        timeouts = lambda: [r for r in d.events() if r["TCPOPS_REASON"] == "connect-timeout"]
        wait_for(lambda: len(timeouts()) == 60, what="60 connect-timeout events (3 per client)")
        time.sleep(0.5)
        assert len(timeouts()) == 60
        assert not [r for r in d.events() if r["TCPOPS_SIDE"] == "client"]  # tcpopsd closed the clients
        assert d.logtext().count("connect_attempts (3) reached") == 20
        # connect_deadline: 50 attempts allowed, but all within 0.5 s of the accept.
        c = connect(slow)
        t0 = time.monotonic()
        c.settimeout(10)
        assert c.recv(10) == b""
        took = time.monotonic() - t0
        assert 0.4 <= took < 1.5, took
        wait_for(lambda: "connect_deadline (0.5 s) reached" in d.logtext(), what="the deadline named")
        # 0.2 + 0.2 + 0.1 s: three attempts, the last cut by the deadline (a slow machine: two).
        wait_for(lambda: len(timeouts()) >= 62, what="the deadline's attempts' events")
        time.sleep(0.5)
        assert 62 <= len(timeouts()) <= 63, len(timeouts())
        print(f"\nbounded attempts: 20 clients closed within {waited:.2f} s, 60 connect-timeout events; deadline: {took:.2f} s")
        assert d.stop() == 0
    finally:
        ns.close()


@needs_ns
def test_check_config_does_not_hang_on_a_resolver_that_never_answers(tmp_path):
    """Issue 18, item 7. `--check-config`, which `systemctl reload` runs (ExecReload=), waited for
    the resolver's whole timeout on a name whose resolution hangs (40 s was seen), and the reload
    with it. Now every name is resolved at once and waited for at most 3 s: one that has not
    answered is a warning, as one that does not resolve is."""
    import socket as _socket
    silent = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    silent.bind(("127.0.0.77", 53))  # a nameserver that reads every query and never answers
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.77\noptions timeout:10 attempts:4\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(render_config({"control_socket": str(tmp_path / "c.sock")},
                                 listeners=[listener("a", free_port(), "hang1.example:5070"),
                                            listener("b", free_port(), ["hang2.example:5070", "localhost:5070"])]))
    wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'mount --bind {hosts} /etc/hosts && mount --bind {resolv} /etc/resolv.conf && exec "$0" "$@"']
    t0 = time.monotonic()
    p = subprocess.run(wrapper + [BIN, "--check-config", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    silent.close()
    print(f"\n--check-config with a silent resolver: {took:.2f} s")
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert took < 6, f"--check-config took {took:.1f} s"
    assert p.stderr.count("no answer within 3 s") == 2, p.stderr
    assert "hang1.example" in p.stderr and "hang2.example" in p.stderr
