"""Issue 8: the PROXY protocol with real peers. HAProxy (send-proxy-v2) in front of tcpopsd: events
carry the original client's address. Kamailio (tcp_accept_haproxy=yes) behind tcpopsd, with SIPp
placing calls through both (and through HAProxy too): Kamailio's $si is SIPp's address, not
tcpopsd's. SIPp binds 127.0.0.5 so that its address differs from every proxy's (127.0.0.1)."""
import os
import shutil
import signal
import socket
import subprocess

import pytest

from helpers import Daemon, free_port, listener, wait_for, write_hook

CLIENT_IP = "127.0.0.5"


def need(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (make test installs haproxy, kamailio, sip-tester)")


class Process:
    """A peer program in its own process group (Kamailio forks its workers), logging to a file."""

    def __init__(self, args, log):
        self.log = log
        self.proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def text(self):
        return open(self.log, errors="replace").read()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def peers():
    started = []
    yield started
    for p in started:
        p.stop()


def haproxy(peers, tmp_path, port, backend_port):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend front
    bind 127.0.0.1:{port}
    default_backend tcpopsd
backend tcpopsd
    server t 127.0.0.1:{backend_port} send-proxy-v2
""")
    p = Process(["haproxy", "-f", str(cfg), "-db"], tmp_path / "haproxy.log")
    peers.append(p)
    wait_for(lambda: listening(port), what="haproxy listening")
    return p


def kamailio(peers, tmp_path, port):
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(f"""#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
tcp_accept_haproxy=yes
listen=tcp:127.0.0.1:{port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "sl.so"
loadmodule "xlog.so"
loadmodule "pv.so"
request_route {{
    xlog("L_NOTICE", "TCPOPSTEST $rm from $si:$sp\\n");
    if ($rm == "ACK") {{ exit; }}
    sl_send_reply("200", "OK");
}}
""")
    p = Process(["kamailio", "-f", str(cfg), "-DD", "-E", "-m", "32", "-M", "8", "-w", str(tmp_path)], tmp_path / "kamailio.log")
    peers.append(p)
    wait_for(lambda: listening(port), timeout=20, what="kamailio listening")
    return p


def sipp_calls(tmp_path, target_port, calls=5):
    p = subprocess.run(["sipp", "-sn", "uac", "-t", "t1", "-i", CLIENT_IP, "-p", str(free_port()), f"127.0.0.1:{target_port}",
                        "-m", str(calls), "-r", "10", "-d", "200", "-timeout", "30", "-nostdin", "-trace_err",
                        "-error_file", str(tmp_path / "sipp.err")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    line = [l for l in p.stdout.splitlines() if "Successful call" in l]
    successful = int(line[0].split("|")[2]) if line else -1
    return p.returncode, successful, p.stdout[-1500:]


def test_haproxy_in_front_events_carry_the_original_client(tmp_path, echo, peers):
    need("haproxy")
    up = echo()
    tport, hport = free_port(), free_port()
    hook = write_hook(tmp_path / "hook.sh", tmp_path / "records")
    d = Daemon(tmp_path, listeners=[listener("behind-lb", tport, up.address, accept_proxy=True, event_sides=["client"])],
               events={"callback": [hook]})
    d.start()
    try:
        haproxy(peers, tmp_path, hport, tport)
        c = socket.socket()
        c.bind((CLIENT_IP, 0))
        c.connect(("127.0.0.1", hport))
        c.settimeout(5)
        c.sendall(b"through haproxy")
        assert c.recv(100) == b"through haproxy"
        cport = c.getsockname()[1]
        assert d.ctl("conid", f"{CLIENT_IP}:{cport}").returncode == 0
        c.close()
        # (HAProxy relays the readiness probe's connection too, with the probe's own address.)
        ev = wait_for(lambda: [r for r in d.events() if r["TCPOPS_REMOTE_PORT"] == str(cport)], what="the client's event")[0]
        assert ev["TCPOPS_EVENT"] == "tcp:closed"
        assert (ev["TCPOPS_REMOTE_IP"], ev["TCPOPS_REMOTE_PORT"]) == (CLIENT_IP, str(cport)), ev
        assert (ev["TCPOPS_LOCAL_IP"], ev["TCPOPS_LOCAL_PORT"]) == ("127.0.0.1", str(hport)), ev
        assert d.stop() == 0
    finally:
        d.kill()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_kamailio_behind_tcpopsd_sees_the_sipp_address(tmp_path, peers, version):
    need("kamailio", "sipp")
    kport, tport = free_port(), free_port()
    k = kamailio(peers, tmp_path, kport)
    d = Daemon(tmp_path, listeners=[listener("sip", tport, f"127.0.0.1:{kport}", proxy_protocol=version)])
    d.start()
    try:
        rc, ok, out = sipp_calls(tmp_path, tport)
        assert rc == 0 and ok == 5, out
        lines = [l for l in k.text().splitlines() if "TCPOPSTEST" in l]
        assert len(lines) == 15, lines  # INVITE, ACK, BYE per call
        assert all(f"from {CLIENT_IP}:" in l for l in lines), lines
        print(f"kamailio with PROXY {version}: {lines[0].strip()}")
        assert d.stop() == 0
    finally:
        d.kill()


def test_sipp_through_haproxy_tcpopsd_and_kamailio(tmp_path, peers):
    """Two proxies between SIPp and Kamailio: HAProxy tells tcpopsd, tcpopsd tells Kamailio."""
    need("haproxy", "kamailio", "sipp")
    kport, tport, hport = free_port(), free_port(), free_port()
    k = kamailio(peers, tmp_path, kport)
    hook = write_hook(tmp_path / "hook.sh", tmp_path / "records")
    d = Daemon(tmp_path, listeners=[listener("sip", tport, f"127.0.0.1:{kport}", accept_proxy=True, proxy_protocol="v2",
                                             event_sides=["client"])], events={"callback": [hook]})
    d.start()
    try:
        haproxy(peers, tmp_path, hport, tport)
        rc, ok, out = sipp_calls(tmp_path, hport, calls=3)
        assert rc == 0 and ok == 3, out
        lines = [l for l in k.text().splitlines() if "TCPOPSTEST" in l]
        assert len(lines) == 9 and all(f"from {CLIENT_IP}:" in l for l in lines), lines
        assert d.stop() == 0  # the client connection ends with tcpopsd: its event says SIPp
        # SIPp's connection (the readiness probe's, through HAProxy, came from 127.0.0.1 with no bytes).
        ev = [r for r in d.events() if r["TCPOPS_SIDE"] == "client" and int(r["TCPOPS_BYTES_IN"]) > 100]
        assert len(ev) == 1 and ev[0]["TCPOPS_REMOTE_IP"] == CLIENT_IP, ev
    finally:
        d.kill()
