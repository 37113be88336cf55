"""Issue 2, items 2, 3, 5 and 6: FIN, RST, lifetime, refused and connect timeout, each raising the
right event with the SPEC hook environment; closed_event 0/1/2 and event_sides."""
import json
import os
import socket
import time

import pytest

from helpers import (echoed, hooked, EchoServer, connect, find_client_event, free_port, listener, reset_close, wait_for,
                     write_hook, events_for, BIN)

SPEC_VARS = ["TCPOPS_EVENT", "TCPOPS_REASON", "TCPOPS_CONID", "TCPOPS_PEER_CONID", "TCPOPS_SIDE", "TCPOPS_LISTENER",
             "TCPOPS_PROTO", "TCPOPS_LOCAL_IP", "TCPOPS_LOCAL_PORT", "TCPOPS_REMOTE_IP", "TCPOPS_REMOTE_PORT",
             "TCPOPS_DURATION_MS", "TCPOPS_BYTES_IN", "TCPOPS_BYTES_OUT", "PATH", "TCPOPS_CONTROL_SOCKET",
             "TCPOPS_ORIGIN", "TCPOPS_ERRNO", "TCPOPS_LATE", "TCPOPS_TCP_RTT_US", "TCPOPS_TCP_RTTVAR_US", "TCPOPS_TCP_RETRANSMITS",
             "TCPOPS_TCP_UNACKED", "TCPOPS_TCP_LOST", "TCPOPS_TCP_LAST_DATA_RECV_MS", "TCPOPS_TCP_LAST_ACK_RECV_MS",
             "TCPOPS_TCP_PMTU", "TCPOPS_TCP_SND_CWND"]


def test_fin_raises_one_closed_with_full_environment(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("sip", port, up.address)], events=hooked(tmp_path))
    s = connect(port)
    cport = s.getsockname()[1]
    s.sendall(b"A" * 1234)
    got = b""
    while len(got) < 1234:
        got += s.recv(65536)
    time.sleep(0.2)
    s.close()
    wait_for(lambda: find_client_event(d.events(), cport), what="client event")
    time.sleep(0.5)  # any duplicate would have arrived by now
    recs = find_client_event(d.events(), cport)
    assert len(recs) == 1, recs
    r = recs[0]
    # The hook's environment is exactly the SPEC's (sh adds PWD, SHLVL and _ itself).
    assert set(r) - {"PWD", "SHLVL", "_", "ARGV"} == set(SPEC_VARS), sorted(r)
    assert r["TCPOPS_EVENT"] == "tcp:closed" and r["ARGV"] == "tcp:closed"
    assert r["TCPOPS_REASON"] == "fin"
    assert r["TCPOPS_SIDE"] == "client"
    assert r["TCPOPS_LISTENER"] == "sip"
    assert r["TCPOPS_PROTO"] == "tcp"
    assert r["TCPOPS_LOCAL_IP"] == "127.0.0.1" and r["TCPOPS_LOCAL_PORT"] == str(port)
    assert r["TCPOPS_REMOTE_IP"] == "127.0.0.1" and r["TCPOPS_REMOTE_PORT"] == str(cport)
    assert r["TCPOPS_BYTES_IN"] == "1234" and r["TCPOPS_BYTES_OUT"] == "1234"
    assert 150 <= int(r["TCPOPS_DURATION_MS"]) < 5000
    # tcpopsd's own folder first (tcpopsctl is beside it), then the system's.
    assert r["PATH"] == os.path.dirname(os.path.realpath(BIN)) + ":/usr/sbin:/usr/bin:/sbin:/bin"
    assert r["TCPOPS_CONTROL_SOCKET"] == os.path.join(str(tmp_path), "control.sock")
    conid, peer = int(r["TCPOPS_CONID"]), int(r["TCPOPS_PEER_CONID"])
    assert conid > 0 and peer > 0 and conid != peer
    # The upstream side (the echo server closing after our FIN) reports its own FIN, with its own conid.
    wait_for(lambda: events_for(d.events(), peer), what="upstream event")
    u = events_for(d.events(), peer)
    assert len(u) == 1
    assert u[0]["TCPOPS_SIDE"] == "upstream" and u[0]["TCPOPS_PEER_CONID"] == str(conid)
    assert u[0]["TCPOPS_REMOTE_PORT"] == str(up.port) and u[0]["TCPOPS_BYTES_OUT"] == "1234"
    assert d.stop() == 0


def test_rst_raises_reset(daemon, echo, tmp_path):
    up = echo(mode="hold")
    port = free_port()
    d = daemon(listeners=[listener("rst", port, up.address)], events=hooked(tmp_path))
    s = connect(port)
    cport = s.getsockname()[1]
    s.sendall(b"hello")
    time.sleep(0.3)
    reset_close(s)
    wait_for(lambda: find_client_event(d.events(), cport), what="reset event")
    time.sleep(0.5)
    recs = find_client_event(d.events(), cport)
    assert len(recs) == 1
    assert recs[0]["TCPOPS_EVENT"] == "tcp:reset" and recs[0]["TCPOPS_REASON"] == "rst"
    # The upstream side was closed by tcpopsd itself: no event for it.
    assert not events_for(d.events(), recs[0]["TCPOPS_PEER_CONID"])
    assert d.stop() == 0


def test_lifetime_expires_idle_but_not_busy(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("lt", port, up.address, lifetime=1)], events=hooked(tmp_path))
    idle = connect(port)
    busy = connect(port)
    iport, bport = idle.getsockname()[1], busy.getsockname()[1]
    t0 = time.monotonic()
    idle.settimeout(5)
    closed_at = None
    end = t0 + 3.3
    while time.monotonic() < end:
        busy.sendall(b"ping")
        assert busy.recv(100) == b"ping", "the busy connection must stay up"
        if closed_at is None:
            idle.setblocking(False)
            try:
                if idle.recv(10) == b"":
                    closed_at = time.monotonic() - t0
            except BlockingIOError:
                pass
        time.sleep(0.3)
    assert closed_at is not None, "the idle connection was not closed"
    assert 0.8 <= closed_at <= 2.5, closed_at
    wait_for(lambda: find_client_event(d.events(), iport), what="lifetime event")
    r = find_client_event(d.events(), iport)
    assert len(r) == 1 and r[0]["TCPOPS_EVENT"] == "tcp:timeout" and r[0]["TCPOPS_REASON"] == "lifetime"
    assert not find_client_event(d.events(), bport), "the busy connection outlived 3 s without an event"
    # The lifetime close ends the relay; its upstream side raises nothing.
    time.sleep(0.3)
    assert not events_for(d.events(), r[0]["TCPOPS_PEER_CONID"])
    busy.close()
    assert d.stop() == 0


def test_upstream_refused_resets_upstream_conid_and_closes_client(daemon, tmp_path):
    dead = free_port()  # nothing listens here
    port = free_port()
    d = daemon(listeners=[listener("ref", port, f"127.0.0.1:{dead}")], events=hooked(tmp_path))
    s = connect(port)
    s.settimeout(5)
    assert s.recv(10) == b""  # the client is closed
    s.close()
    wait_for(lambda: d.events(), what="refused event")
    time.sleep(0.3)
    recs = d.events()
    assert len(recs) == 1, recs
    r = recs[0]
    assert r["TCPOPS_EVENT"] == "tcp:reset" and r["TCPOPS_REASON"] == "refused"
    assert r["TCPOPS_SIDE"] == "upstream" and r["TCPOPS_REMOTE_PORT"] == str(dead)
    assert d.stop() == 0


def test_closed_event_0_runs_no_hook(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("ce0", port, up.address)], events=hooked(tmp_path, closed_event=0))
    for _ in range(3):
        s = connect(port)
        s.sendall(b"x")
        s.recv(1)
        s.close()
    r = connect(port)
    reset_close(r)
    wait_for(lambda: d.logtext().count("relay ended") == 4, what="relays ended")
    time.sleep(0.5)
    assert d.events() == []
    assert "tcp:closed on" not in d.logtext()
    assert d.stop() == 0


def test_closed_event_2_only_enabled_listeners(daemon, echo, tmp_path):
    up = echo()
    on, off = free_port(), free_port()
    d = daemon(listeners=[listener("on", on, up.address, closed_event=True), listener("off", off, up.address)],
               events=hooked(tmp_path, closed_event=2), daemon={"log_level": "debug"})
    ports = {}
    for name, p in (("on", on), ("off", off)):
        s = connect(p)
        ports[name] = s.getsockname()[1]
        s.sendall(b"x")
        s.recv(1)
        s.close()
    wait_for(lambda: find_client_event(d.events(), ports["on"]), what="event on the enabled listener")
    wait_for(lambda: d.logtext().count("relay ended") == 2, what="relays ended")
    time.sleep(0.5)
    assert all(r["TCPOPS_LISTENER"] == "on" for r in d.events()), d.events()
    assert not find_client_event(d.events(), ports["off"])
    assert d.stop() == 0


def test_event_sides_client_only(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("sides", port, up.address, event_sides=["client"])], events=hooked(tmp_path))
    s = connect(port)
    s.sendall(b"x")
    s.recv(1)
    s.close()
    wait_for(lambda: d.logtext().count("relay ended") == 1, what="relay ended")
    time.sleep(0.5)
    recs = d.events()
    assert len(recs) == 1 and recs[0]["TCPOPS_SIDE"] == "client"
    assert d.stop() == 0


def test_route_and_callback_both_run(daemon, echo, tmp_path):
    up = echo()
    port = free_port()
    route = write_hook(tmp_path / "route.sh", tmp_path / "records")
    ev = hooked(tmp_path)
    d = daemon(listeners=[listener("both", port, up.address, event_sides=["client"])], events=ev,
               routes={"tcp:closed": [route, "fixed-arg"]})
    s = connect(port)
    s.close()
    wait_for(lambda: len(d.events()) == 2, what="callback and route")
    argvs = sorted(r["ARGV"] for r in d.events())
    assert argvs == ["fixed-arg", "tcp:closed"]
    assert d.stop() == 0


def test_relay_ended_is_info_only_where_a_side_raised_no_event(daemon, echo):
    """Both sides closed by their peers (two events say it all): the relay summary is debug, not in
    an info log. A relay that tcpopsd closes itself (tcpopsctl close: no event) is logged at info."""
    up = echo()
    port = free_port()
    d = daemon(listeners=[listener("summ", port, up.address)])
    s = connect(port)
    echoed(s, b"one")
    s.close()  # FIN from the client; the echo server answers with its own FIN
    def closed_events():
        return [l for l in d.ctl("events", "--json").stdout.splitlines() if '"tcp:closed"' in l]
    wait_for(lambda: len(closed_events()) == 2, what="both sides' events")
    wait_for(lambda: json.loads(d.ctl("stats", "--json").stdout)["relays_open"] == 0, what="relay gone")
    time.sleep(0.3)
    assert "relay ended" not in d.logtext()
    s = connect(port)
    echoed(s, b"two")
    conid = int(d.ctl("conid", "127.0.0.1:%d" % s.getsockname()[1]).stdout.strip())
    assert d.ctl("close", str(conid)).stdout.strip() == "1"
    wait_for(lambda: "relay ended" in d.logtext(), what="the summary of a relay tcpopsd closed")
    line = next(l for l in d.loglines() if "relay ended" in l)
    assert line.startswith("INFO ") and "client_reason=local" in line and "upstream_reason=local" in line
    s.close()
