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


def render(page):
    p = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env={**os.environ, "MANWIDTH": "100"})
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr.lower(), p.stderr
    return p.stdout


def test_man_pages(staged):
    if not shutil.which("man"):
        pytest.skip("man is not installed")
    d = render(staged / "share/man/man8/tcpopsd.8")
    assert "tcpopsd —" in d and "--check-config" in d and "Exit status" in d and "tcpopsd subcommand" not in d
    c = render(staged / "share/man/man1/tcpopsctl.1")
    assert "keepalive-enable" in c and "--json" in c and "TCPOPS_CONID" in c
    t = render(staged / "share/man/man5/tcpopsd.toml.5")
    for key in ("max_connections", "upstream_user_timeout", "proxy_protocol", "accept_proxy", "event_sides", "queue_limit"):
        assert key in t, key


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
