"""Shared helpers for the integration tests: the real tcpopsd binary on loopback, a notify socket
of our own, real upstream servers and hook scripts that write their environment to files."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import *  # noqa: E402,F401,F403


@pytest.fixture
def daemon(tmp_path):
    """Factory: daemon(listeners=[...], events={...}, daemon={...}) -> a running Daemon."""
    started = []

    def start(**kw):
        d = Daemon(tmp_path, **kw)
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()
    for d in started:
        report = sanitizer_report(d)
        if report:
            pytest.fail(f"the sanitizer reported on tcpopsd:\n{report}", pytrace=False)


@pytest.fixture
def echo():
    servers = []

    def start(**kw):
        s = EchoServer(**kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()
