"""Issue 9: every close explains itself. Each event carries its origin (peer, network, local,
timer), the errno the kernel reported, and a TCP_INFO snapshot taken before the socket was closed,
in hook variables, journal fields and `events --json`. Each kind is provoked for real, and what must
differ between them is asserted (a silent idle peer has nothing unacknowledged; a peer that stops
acknowledging has)."""
import json
import subprocess
import sys
import time

import pytest

from helpers import AcceptOnce, connect, free_port, hooked, listener, reset_close, wait_for
from netns import NetNS, netns_available

TCP = ["RTT_US", "RTTVAR_US", "RETRANSMITS", "UNACKED", "LOST", "LAST_DATA_RECV_MS", "LAST_ACK_RECV_MS", "PMTU", "SND_CWND"]


def one(d, pred, what):
    return wait_for(lambda: [r for r in d.events() if pred(r)], what=what, timeout=15)[0]


def tcp(r, name):
    return int(r[f"TCPOPS_TCP_{name}"])


NEVER_ESTABLISHED = ("RTT_US", "RTTVAR_US", "LAST_DATA_RECV_MS", "LAST_ACK_RECV_MS")


def test_fin_rst_refused_lifetime_and_close(daemon, echo, tmp_path):
    up = echo()
    port, lport, rport = free_port(), free_port(), free_port()
    dead = free_port()
    d = daemon(listeners=[listener("x", port, up.address), listener("life", lport, up.address, lifetime=0.5, event_sides=["client"]),
                          listener("ref", rport, f"127.0.0.1:{dead}")], events=hooked(tmp_path))
    # FIN from the client, after some traffic.
    s = connect(port)
    for _ in range(5):
        s.sendall(b"x" * 100)
        s.recv(100)
    fin_port = s.getsockname()[1]
    s.close()
    fin = one(d, lambda r: r["TCPOPS_REMOTE_PORT"] == str(fin_port), "the FIN event")
    assert (fin["TCPOPS_EVENT"], fin["TCPOPS_ORIGIN"], fin["TCPOPS_ERRNO"]) == ("tcp:closed", "peer", "")
    assert tcp(fin, "RTT_US") > 0 and tcp(fin, "PMTU") > 0 and tcp(fin, "SND_CWND") > 0 and tcp(fin, "UNACKED") == 0
    # RST from the client.
    s = connect(port)
    s.sendall(b"bye")
    s.recv(3)
    rst_port = s.getsockname()[1]
    reset_close(s)
    rst = one(d, lambda r: r["TCPOPS_REMOTE_PORT"] == str(rst_port), "the RST event")
    assert (rst["TCPOPS_EVENT"], rst["TCPOPS_ORIGIN"], rst["TCPOPS_ERRNO"]) == ("tcp:reset", "peer", "ECONNRESET")
    # Refused by the upstream: the attempt's socket was there to ask.
    s = connect(rport)
    s.settimeout(5)
    assert s.recv(1) == b""
    ref = one(d, lambda r: r["TCPOPS_REASON"] == "refused", "the refused event")
    assert (ref["TCPOPS_ORIGIN"], ref["TCPOPS_ERRNO"], ref["TCPOPS_SIDE"]) == ("peer", "ECONNREFUSED", "upstream")
    # It never got established: no round trip measured, nothing received (the kernel would say
    # "milliseconds since boot" for the last two).
    assert all(ref[f"TCPOPS_TCP_{n}"] == "" for n in NEVER_ESTABLISHED), ref
    assert ref["TCPOPS_TCP_SND_CWND"] != "", ref
    # The idle lifetime: tcpopsd's own timer, no errno.
    s = connect(lport)
    life_port = s.getsockname()[1]
    life = one(d, lambda r: r["TCPOPS_REMOTE_PORT"] == str(life_port), "the lifetime event")
    assert (life["TCPOPS_REASON"], life["TCPOPS_ORIGIN"], life["TCPOPS_ERRNO"]) == ("lifetime", "timer", "")
    assert tcp(life, "LAST_DATA_RECV_MS") >= 400, life  # idle for the lifetime: nothing received since
    # tcpopsctl close: local, no event, but the relay's end says so in the log.
    s = connect(port)
    s.sendall(b"c")
    s.recv(1)
    c = int(d.ctl("conid", f"127.0.0.1:{s.getsockname()[1]}").stdout)
    before = len(d.events())
    assert d.ctl("close", str(c)).stdout.strip() == "1"
    wait_for(lambda: f"relay ended: conid {c} " in d.logtext(), what="the relay's end logged")
    line = [l for l in d.loglines() if f"relay ended: conid {c} " in l][0]
    assert "origin=local" in line and "reason=local" in line, line
    time.sleep(0.3)
    assert len(d.events()) == before
    # The same values reach `events --json` under their lowercase names.
    ev = [json.loads(l) for l in d.ctl("events", "--json").stdout.splitlines()]
    j = [e for e in ev if e["remote"] == f"127.0.0.1:{rst_port}"][0]
    assert j["origin"] == "peer" and j["errno"] == "ECONNRESET" and j["tcp_rtt_us"] > 0 and "tcp_snd_cwnd" in j
    assert d.stop() == 0


def test_connect_timeout_is_a_timer(daemon, tmp_path):
    if netns_available() is not None:
        pytest.skip(netns_available())
    ns = NetNS()
    try:
        ns.cut()
        port = free_port()
        d = daemon(listeners=[listener("ct", port, f"{ns.ns_ip}:9", connect_timeout=1)], events=hooked(tmp_path))
        s = connect(port)
        s.settimeout(5)
        assert s.recv(1) == b""
        r = one(d, lambda r: r["TCPOPS_REASON"] == "connect-timeout", "the connect-timeout event")
        assert (r["TCPOPS_ORIGIN"], r["TCPOPS_ERRNO"]) == ("timer", "")
        assert tcp(r, "RETRANSMITS") >= 1 or tcp(r, "UNACKED") >= 1, r  # the SYN went unanswered
        assert all(r[f"TCPOPS_TCP_{n}"] == "" for n in NEVER_ESTABLISHED), r
        assert d.stop() == 0
    finally:
        ns.close()


CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"hello")
s.recv(5)
print(s.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(netns_available() is not None, reason=netns_available() or "")
def test_keepalive_idle_peer_versus_user_timeout_with_data_in_flight(daemon, echo, tmp_path):
    """Both end with tcp:timeout keepalive, origin network, ETIMEDOUT. What tells them apart: the idle
    peer vanished with nothing unacknowledged; the other stopped acknowledging data in flight."""
    up = echo()
    ns = NetNS()
    try:
        port = free_port()
        uport = free_port()
        srv = AcceptOnce()
        d = daemon(listeners=[{"name": "ka", "listen": f"{ns.host_ip}:{port}", "upstream": up.address,
                               "keepalive": {"idle": 1, "count": 2, "interval": 1}, "event_sides": ["client"]},
                              {"name": "ut", "listen": f"{ns.host_ip}:{uport}", "upstream": srv.address, "user_timeout": 2,
                               "event_sides": ["client"]}],
                   events=hooked(tmp_path))
        idle = ns.popen(sys.executable, "-c", CLIENT, ns.host_ip, str(port), stdout=subprocess.PIPE, text=True)
        busy = ns.popen(sys.executable, "-c", CLIENT.replace('s.sendall(b"hello")\ns.recv(5)', ''), ns.host_ip, str(uport),
                        stdout=subprocess.PIPE, text=True)
        idle_port, busy_port = int(idle.stdout.readline()), int(busy.stdout.readline())
        up_conn = srv.wait()
        time.sleep(0.3)
        ns.cut()
        up_conn.sendall(b"data nobody will acknowledge" * 200)  # towards the silent busy client
        ka = one(d, lambda r: r["TCPOPS_REMOTE_PORT"] == str(idle_port), "the idle peer's timeout")
        ut = one(d, lambda r: r["TCPOPS_REMOTE_PORT"] == str(busy_port), "the busy peer's timeout")
        for r in (ka, ut):
            assert (r["TCPOPS_EVENT"], r["TCPOPS_REASON"], r["TCPOPS_ORIGIN"], r["TCPOPS_ERRNO"]) == \
                ("tcp:timeout", "keepalive", "network", "ETIMEDOUT"), r
        print(f"\nkeepalive, idle peer: " + " ".join(f"{n.lower()}={ka['TCPOPS_TCP_' + n]}" for n in TCP)
              + "\nuser timeout, data in flight: " + " ".join(f"{n.lower()}={ut['TCPOPS_TCP_' + n]}" for n in TCP))
        assert tcp(ka, "UNACKED") == 0 and tcp(ka, "RETRANSMITS") == 0, ka
        assert tcp(ut, "RETRANSMITS") > 0 and tcp(ut, "LOST") > 0, ut
        assert tcp(ka, "LAST_ACK_RECV_MS") >= 1000 and tcp(ut, "LAST_ACK_RECV_MS") >= 1000
        idle.kill()
        busy.kill()
        srv.close()
        assert d.stop() == 0
    finally:
        ns.close()


@pytest.mark.skipif(netns_available() is not None, reason=netns_available() or "")
def test_icmp_unreachable_names_its_errno(daemon, tmp_path):
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        pytest.skip("nft is not installed")
    ns = NetNS()
    try:
        uport = 7000 + free_port() % 1000
        srv = ns.echo_server(uport)
        ns.run("nft", "add table inet t")
        ns.run("nft", "add chain inet t in { type filter hook input priority 0; }")
        ns.run("nft", f"add rule inet t in tcp dport {uport} reject with icmp type host-unreachable")
        port = free_port()
        d = daemon(listeners=[listener("icmp", port, f"{ns.ns_ip}:{uport}")], events=hooked(tmp_path))
        s = connect(port)
        s.settimeout(5)
        assert s.recv(1) == b""
        r = one(d, lambda r: r["TCPOPS_REASON"] == "unreachable", "the unreachable event")
        assert (r["TCPOPS_ORIGIN"], r["TCPOPS_ERRNO"]) == ("network", "EHOSTUNREACH"), r
        assert all(r[f"TCPOPS_TCP_{n}"] == "" for n in NEVER_ESTABLISHED), r
        srv.kill()
        assert d.stop() == 0
    finally:
        ns.close()


def test_list_reads_the_socket_and_says_when_the_user_timeout_overrides_keepalive(daemon, echo):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ov", port, up.address, keepalive={"idle": 30, "count": 3, "interval": 5}, user_timeout=20)])
    s = connect(port)
    s.sendall(b"x")
    s.recv(1)
    rows = {r["side"]: r for r in json.loads(d.ctl("list", "--json").stdout)}
    c = rows["client"]
    assert c["keepalive"] == {"idle": 30, "count": 3, "interval": 5} and c["user_timeout_ms"] == 20000
    assert c["user_timeout_overrides_keepalive"] is True
    assert rows["upstream"]["keepalive"] is None and rows["upstream"]["user_timeout_overrides_keepalive"] is False
    line = [l for l in d.ctl("list").stdout.splitlines() if " client " in l][0]
    assert "30/3/5,ut=20000ms" in line, line
    # Changed at runtime, read back at once.
    assert d.ctl("keepalive-enable", str(c["conid"]), "7", "2", "1").stdout.strip() == "1"
    again = [r for r in json.loads(d.ctl("list", "--json").stdout) if r["conid"] == c["conid"]][0]
    assert again["keepalive"] == {"idle": 7, "count": 2, "interval": 1}
    s.close()
    assert d.stop() == 0
