"""A stand-in for the part of systemd the crash keep relies on, for tests that must kill tcpopsd
many times fast: a notify socket that keeps what FDSTORE=1 sends (by FDNAME) and drops what
FDSTOREREMOVE=1 names, and a supervisor that (re)starts tcpopsd with the stored fds passed as
LISTEN_FDS/LISTEN_FDNAMES, as systemd does for a service with Restart=. The real thing is tested
in test_container.py."""
import fcntl
import os
import signal
import subprocess
import time

from helpers import BIN, NotifySocket, die_with_parent, wait_for


class FDStore(NotifySocket):
    """A notify socket that keeps what FDSTORE=1 sends, by FDNAME."""
    max_fds = 253

    def __init__(self, path):
        self.fds = {}  # name -> fd (ours)
        super().__init__(path)

    def received(self, text, fds):
        fields = dict(l.split("=", 1) for l in text.split("\n") if "=" in l)
        with self.lock:
            self.messages.append((time.monotonic(), text))
            name = fields.get("FDNAME", "stored")
            if fields.get("FDSTORE") == "1":
                for fd in fds:
                    old = self.fds.pop(name, None)
                    if old is not None:
                        os.close(old)
                    self.fds[name] = fd
                return
            if fields.get("FDSTOREREMOVE") == "1":
                old = self.fds.pop(name, None)
                if old is not None:
                    os.close(old)
        for fd in fds:
            os.close(fd)

    def has(self, line, since=0.0):
        with self.lock:
            return [t for t, m in self.messages if t >= since and line in m.split("\n")]

    def names(self):
        with self.lock:
            return sorted(self.fds)

    def close(self):
        super().close()
        self.thread.join(2)
        with self.lock:
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()


class Supervisor:
    """Runs tcpopsd as systemd would with an fd store, and restarts it after it dies."""

    def __init__(self, tmp, config_path, env=None):
        self.tmp = str(tmp)
        self.config = config_path
        self.store = FDStore(os.path.join(self.tmp, "notify.sock"))
        self.env = env or {}
        self.proc = None
        self.log = open(os.path.join(self.tmp, "tcpopsd.log"), "ab")
        self.starts = 0

    def start(self):
        with self.store.lock:
            items = sorted(self.store.fds.items())
            dups = [(name, os.dup(fd)) for name, fd in items]
        # Above every fd the passed ones will take (3..), so that dup2 cannot clobber a source.
        high = []
        for name, fd in dups:
            h = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000)  # the lowest free fd from 1000: clobbers none
            os.close(fd)
            high.append((name, h))
        env = dict(os.environ)
        for k in ("JOURNAL_STREAM", "INVOCATION_ID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(k, None)
        env.update({"NOTIFY_SOCKET": self.store.path, "TCPOPSD_FDSTORE": "65536"})
        env.update(self.env)
        if high:
            env["LISTEN_FDS"] = str(len(high))
            env["LISTEN_FDNAMES"] = ":".join(n for n, _ in high)

        def place():
            # (In the child: dup2 leaves the placed fds inheritable; every other fd of this
            # process is close-on-exec, as Python makes them, so close_fds=False passes only these.)
            for i, (_, h) in enumerate(high):
                os.dup2(h, 3 + i)
            for _, h in high:
                os.close(h)

        since = time.monotonic()
        # LISTEN_PID must be the pid that runs tcpopsd: sh's $$, which execs it.
        self.proc = subprocess.Popen(["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", BIN, "--config", self.config,
                                      "--log-target", "stderr"] if high else [BIN, "--config", self.config, "--log-target", "stderr"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=die_with_parent(place), close_fds=False)
        for _, h in high:
            os.close(h)
        self.starts += 1
        wait_for(lambda: self.store.has("READY=1", since) or self.proc.poll() is not None, timeout=20, what="READY=1")
        assert self.proc.poll() is None, f"tcpopsd exited with {self.proc.returncode}:\n{self.logtext()[-3000:]}"
        return self

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        self.proc.wait(10)

    def restart_after(self, sig=signal.SIGKILL):
        self.kill(sig)
        return self.start()

    def logtext(self):
        with open(os.path.join(self.tmp, "tcpopsd.log"), "rb") as f:
            return f.read().decode(errors="replace")

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.store.close()
        self.log.close()
