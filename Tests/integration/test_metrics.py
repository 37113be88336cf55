"""Issue 9: metrics an operator can graph and alert on. GET /metrics (off the relay's loop, bounded)
and `tcpopsctl stats --openmetrics` give the same Prometheus text; promtool accepts it; a real
Prometheus server scrapes tcpopsd and answers a query about the resets the test provoked; the Grafana
dashboard in contrib/ refers only to metrics that exist."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from helpers import connect, free_port, listener, render_config, reset_close, wait_for

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def get(url, method="GET", data=None):
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def value(text, name, **labels):
    """The sample `name{labels...}` (labels in any order), or None."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-z_]+)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


def provoke(d, port, fins=3, resets=2):
    for _ in range(fins):
        s = connect(port)
        s.sendall(b"abc")
        s.recv(3)
        s.close()
    for _ in range(resets):
        s = connect(port)
        s.sendall(b"abc")
        s.recv(3)
        reset_close(s)
    wait_for(lambda: "relays_open 0" in d.ctl("stats").stdout, what="the relays to end")


def test_metrics_endpoint_promtool_and_openmetrics(daemon, echo, tmp_path):
    up = echo()
    port, rport, mport, dead = free_port(), free_port(), free_port(), free_port()
    d = daemon(listeners=[listener("m", port, up.address), listener("ref", rport, f"127.0.0.1:{dead}")],
               config_extra=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    provoke(d, port)
    s = connect(rport)
    s.settimeout(5)
    assert s.recv(1) == b""  # its upstream refused
    status, headers, text = get(f"http://127.0.0.1:{mport}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    if shutil.which("promtool"):
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    assert value(text, "tcpopsd_events_total", event="tcp:reset", reason="rst", side="client", listener="m") == 2
    assert value(text, "tcpopsd_events_total", event="tcp:closed", reason="fin", side="client", listener="m") == 3
    assert value(text, "tcpopsd_accepted_total", listener="m") == 5
    assert value(text, "tcpopsd_relayed_bytes_total", listener="m", direction="to_upstream") == 15
    assert value(text, "tcpopsd_connections_open", listener="m") == 0
    assert value(text, "tcpopsd_connection_duration_seconds_count", listener="m") == 5
    assert value(text, "tcpopsd_upstream_connect_failures_total", listener="ref", reason="refused") == 1
    assert value(text, "tcpopsd_build_info", version=d.ctl("--version").stdout.split()[1]) == 1
    assert value(text, "tcpopsd_process_start_time_seconds") > 1.7e9
    # Bounded labels: listener names and reasons, never an address.
    assert "127.0.0.1" not in text
    # The same text from tcpopsctl, for node_exporter's textfile collector.
    o = d.ctl("stats", "--openmetrics")
    assert o.returncode == 0 and value(o.stdout, "tcpopsd_events_total", event="tcp:reset", reason="rst", side="client", listener="m") == 2
    # Anything but GET /metrics.
    assert get(f"http://127.0.0.1:{mport}/other")[0] == 404
    assert get(f"http://127.0.0.1:{mport}/metrics", method="POST", data=b"x")[0] == 405
    raw = socket.create_connection(("127.0.0.1", mport))
    raw.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
    raw.settimeout(5)
    assert raw.recv(100).startswith(b"HTTP/1.1 431")
    raw.close()
    # A client that never finishes its request is closed after 5 s; the endpoint serves meanwhile.
    slow = socket.create_connection(("127.0.0.1", mport))
    slow.sendall(b"GET /met")
    assert get(f"http://127.0.0.1:{mport}/metrics")[0] == 200
    slow.settimeout(10)
    t0 = time.monotonic()
    assert slow.recv(10) == b"" and 3 <= time.monotonic() - t0 <= 8
    assert d.stop() == 0


def test_metrics_follow_a_reload(daemon, echo, tmp_path):
    up = echo()
    port, m1, m2 = free_port(), free_port(), free_port()
    d = daemon(listeners=[listener("r", port, up.address)], config_extra=f'[metrics]\nlisten = "127.0.0.1:{m1}"\n')
    assert get(f"http://127.0.0.1:{m1}/metrics")[0] == 200
    with open(d.config_path, "w") as f:
        f.write(render_config({"control_socket": d.control}, listeners=[listener("r", port, up.address)])
                + f'[metrics]\nlisten = "127.0.0.1:{m2}"\n')
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.logtext(), what="reload")
    status, _, text = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(get(f"http://127.0.0.1:{m2}/metrics")), what="the new address")
    assert value(text, "tcpopsd_reloads_total", result="ok") == 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{m1}/metrics", timeout=2)
    assert d.stop() == 0


@pytest.mark.skipif(not shutil.which("prometheus"), reason="the prometheus server is not installed (Debian package prometheus)")
def test_a_prometheus_server_scrapes_tcpopsd(daemon, echo, tmp_path):
    up = echo()
    port, mport, pport = free_port(), free_port(), free_port()
    d = daemon(listeners=[listener("prom", port, up.address)], config_extra=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: tcpopsd
    static_configs:
      - targets: ["127.0.0.1:{mport}"]
""")
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{pport}"], stdout=open(tmp_path / "prom.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{pport}/-/ready")[0] == 200 if _up(pport) else False, timeout=30,
                 what="prometheus ready")
        provoke(d, port, fins=1, resets=3)
        query = 'sum(tcpopsd_events_total{event="tcp:reset",reason="rst",listener="prom"})'

        def answer():
            _, _, body = get(f"http://127.0.0.1:{pport}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
            result = json.loads(body)["data"]["result"]
            return result and float(result[0]["value"][1]) == 3 and result

        r = wait_for(answer, timeout=30, what="prometheus to have scraped the 3 resets")
        print(f"\nprometheus: {query} = {r[0]['value'][1]}")
        targets = json.loads(get(f"http://127.0.0.1:{pport}/api/v1/targets")[2])["data"]["activeTargets"]
        assert targets[0]["health"] == "up", targets
    finally:
        os.killpg(prom.pid, signal.SIGTERM)
        prom.wait(20)
    assert d.stop() == 0


def _up(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_the_dashboard_refers_to_metrics_that_exist(daemon, echo):
    up = echo()
    port, mport = free_port(), free_port()
    d = daemon(listeners=[listener("dash", port, up.address)], config_extra=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    text = get(f"http://127.0.0.1:{mport}/metrics")[2]
    exported = {l.split()[2] for l in text.splitlines() if l.startswith("# TYPE")}
    names = exported | {n + s for n in exported for s in ("_bucket", "_sum", "_count")}
    board = json.load(open(os.path.join(ROOT, "contrib", "grafana", "tcpopsd.json")))
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 5
    used = {m for e in exprs for m in re.findall(r"tcpopsd_[a-z_]+", e)}
    assert used and used <= names, used - names
    for wanted in ("tcpopsd_connections_open", "tcpopsd_accepted_total", "tcpopsd_events_total", "tcpopsd_relayed_bytes_total",
                   "tcpopsd_hook_duration_seconds_bucket"):
        assert wanted in used, wanted
    assert d.stop() == 0
