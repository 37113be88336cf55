"""Issue 8, item 11: `make install` puts the contract where an operator looks: `man tcpopsd`,
`man tcpopsctl`, `man tcpopsd.toml`, tcpopsctl's shell completions, the docs; the binaries it
installs run. Staged with DESTDIR, so nothing on the machine changes."""
import os
import shutil
import subprocess

import pytest

from helpers import ROOT


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    dest = tmp_path_factory.mktemp("stage")
    p = subprocess.run(["make", "-C", ROOT, "install", f"DESTDIR={dest}"], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return dest / "usr" / "local"


def lint(page):
    """mandoc -Tlint and groff -ww: no warning at all (the pages are written by hand)."""
    if shutil.which("mandoc"):
        p = subprocess.run(["mandoc", "-Tlint", "-W", "warning", str(page)], capture_output=True, text=True)
        assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr
    p = subprocess.run(["groff", "-ww", "-mandoc", "-Tutf8", "-z", str(page)], capture_output=True, text=True,
                       env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr


def render(page):
    lint(page)
    p = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env={**os.environ, "MANWIDTH": "100"})
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr.lower(), p.stderr
    return p.stdout


def test_man_pages(staged):
    if not shutil.which("man"):
        pytest.skip("man is not installed")
    d = render(staged / "share/man/man8/tcpopsd.8")
    assert "tcpopsd —" in d and "--check-config" in d and "EXIT STATUS" in d and "tcpopsd subcommand" not in d
    for section in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "FILES", "SEE ALSO"):
        assert section in d, section
    c = render(staged / "share/man/man1/tcpopsctl.1")
    assert "keepalive-enable" in c and "--json" in c and "TCPOPS_CONID" in c
    for section in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert section in c, section
    assert "-1 gone" in c and "69" in c  # the state table and the exit statuses, not "0 on success, >0 if an error"
    t = render(staged / "share/man/man5/tcpopsd.toml.5")
    for key in ("max_connections", "upstream_user_timeout", "proxy_protocol", "accept_proxy", "event_sides", "queue_limit"):
        assert key in t, key
    # Values with several quoted parts render as written (nested quoting mangled five of them).
    for line in ('listen = "a.b.c.d:port" | "[v6]:port"', 'upstream = "host:port" | ["host:port", ...]',
                 'event_sides = ["client", "upstream"]', 'proxy_protocol = "v1" | "v2"', 'accept_proxy_from = ["10.0.0.0/8", ...]'):
        assert line in t, line


def test_completions_docs_and_binaries(staged):
    bash = staged / "share/bash-completion/completions/tcpopsctl"
    p = subprocess.run(["bash", "-c", f"source {bash} && complete -p tcpopsctl"], capture_output=True, text=True)
    assert p.returncode == 0 and "tcpopsctl" in p.stdout, p.stderr
    assert (staged / "share/zsh/site-functions/_tcpopsctl").read_text().startswith("#compdef tcpopsctl")
    assert "tcpopsctl" in (staged / "share/fish/vendor_completions.d/tcpopsctl.fish").read_text()
    catalog = (staged / "lib/systemd/catalog/tcpopsd.catalog").read_text()
    assert "-- 6493216fb804485a9b6bdb453f8e94e3" in catalog  # tcp:reset's MESSAGE_ID
    docs = {p.name for p in (staged / "share/doc/tcpopsd").iterdir()}
    assert {"README.md", "configuration.md", "events.md", "tcpopsctl.md", "control.md", "journal.md", "proxy-protocol.md",
            "metrics.md"} <= docs
    for binary in ("tcpopsd", "tcpopsctl"):
        p = subprocess.run([str(staged / "bin" / binary), "--version"], capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.startswith(binary), p.stdout
    # The staged example configuration is the one a new user gets, and it is valid.
    example = staged.parent.parent / "etc/tcpopsd/tcpopsd.toml"
    p = subprocess.run([str(staged / "bin/tcpopsd"), "--check-config", "--config", str(example)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_the_installed_configuration_is_safe_to_enable(staged):
    """Issue 19: `make install` used to install the demo (lifetime 3 s, a shell hook on every event,
    an upstream where nothing listens) as /etc/tcpopsd/tcpopsd.toml. Now the production example:
    commented, no hooks, timers that find dead peers in minutes, max_connections within the fd
    limit; and an existing file is never replaced."""
    import tomllib
    etc = staged.parent.parent / "etc/tcpopsd/tcpopsd.toml"
    text = etc.read_text()
    assert text == open(os.path.join(ROOT, "config/production.toml")).read()
    conf = tomllib.loads(text)
    assert "callback" not in conf.get("events", {}) and "route" not in conf.get("events", {})
    for l in conf["listener"]:
        assert l.get("lifetime", 0) == 0 or l["lifetime"] >= 60, l
        assert "keepalive" in l and l.get("user_timeout", 0) >= 30, l
    assert conf["daemon"].get("max_connections", 0) <= 65536 - 64
    assert (staged / "share/doc/tcpopsd/examples/demo.toml").exists()
    # A second install keeps what the operator wrote.
    etc.write_text(text + "# edited by the operator\n")
    p = subprocess.run(["make", "-C", ROOT, "install", f"DESTDIR={staged.parent.parent}"], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    assert etc.read_text().endswith("# edited by the operator\n")


def test_the_docs_hook_example_runs_as_written(staged, tmp_path):
    """The hook example of docs/tcpopsctl.md, verbatim, against the installed binaries: hooks used
    to get PATH=/usr/sbin:/usr/bin:/sbin:/bin while tcpopsctl is installed in /usr/local/bin, and
    the example failed with "tcpopsctl: not found"."""
    import re
    import socket
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from helpers import Daemon, EchoServer, connect, free_port, listener, wait_for
    doc = open(os.path.join(ROOT, "docs/tcpopsctl.md")).read()
    script = re.search(r"## From a hook\n```sh\n(.*?)```", doc, re.S).group(1)
    hook = tmp_path / "on-close"
    hook.write_text(script)
    hook.chmod(0o755)
    up = EchoServer(mode="hold")  # keeps its side open after the client's FIN: the hook must end it
    port = free_port()
    import helpers
    old = helpers.BIN
    helpers.BIN = str(staged / "bin/tcpopsd")  # the installed binary, with tcpopsctl beside it
    try:
        d = Daemon(tmp_path, listeners=[listener("hooked", port, up.address)], routes={"tcp:closed": [str(hook)]})
        d.start()
        c = connect(port)
        c.sendall(b"bye")
        c.shutdown(socket.SHUT_WR)  # tcp:closed for the client: the hook sees eof and closes the relay
        c.settimeout(10)
        while c.recv(100):  # what the upstream holds never comes; tcpopsd's close ends it
            pass
        wait_for(lambda: "hook exited with status 0" in d.logtext(), what="the hook's clean exit")
        assert "not found" not in d.logtext(), d.logtext()[-2000:]
        assert d.stop() == 0
    finally:
        helpers.BIN = old
        up.close()
