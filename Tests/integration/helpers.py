"""Building blocks for tests: Daemon (the real tcpopsd), EchoServer, hook scripts, waiting."""
import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("TCPOPSD", os.path.join(ROOT, ".build", "debug", "tcpopsd"))
CTL = os.environ.get("TCPOPSCTL", os.path.join(ROOT, ".build", "debug", "tcpopsctl"))


_handed_out = set()


def _ephemeral_range():
    try:
        lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host="127.0.0.1"):
    """A port nothing listens on now, below the kernel's ephemeral range: a port the kernel hands
    out to a connect() (the test's own clients churning, say) could be taken between this call and
    the bind that wants it (EADDRINUSE was seen so on a busy machine). Never the same twice in one run."""
    import random
    lo, _ = _ephemeral_range()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(1000):
        p = random.randrange(10000, max(10001, lo))
        if p in _handed_out:
            continue
        s = socket.socket(family)
        try:
            s.bind((host, p))
        except OSError:
            continue
        finally:
            s.close()
        _handed_out.add(p)
        return p
    raise AssertionError("no free port below the ephemeral range")


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def render_config(daemon=None, events=None, routes=None, listeners=()):
    out = []
    if daemon:
        out.append("[daemon]")
        out += [f"{k} = {toml_value(v)}" for k, v in daemon.items()]
    if events:
        out.append("[events]")
        out += [f"{k} = {toml_value(v)}" for k, v in events.items()]
    if routes:
        out.append("[events.route]")
        out += [f'"{k}" = {toml_value(v)}' for k, v in routes.items()]
    for l in listeners:
        out.append("[[listener]]")
        out += [f"{k} = {toml_value(v)}" for k, v in l.items()]
    return "\n".join(out) + "\n"


def write_hook(path, record_dir, sleep=0, extra=""):
    """A hook script that writes its whole environment and argv to a file per run."""
    path = str(path)
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
out="{record_dir}/$TCPOPS_CONID.$$.$(basename "$0").env"
{{ env; echo "ARGV=$*"; }} > "$out.tmp"
mv "$out.tmp" "$out"
{extra}
{"sleep " + str(sleep) if sleep else ""}
""")
    os.chmod(path, 0o755)
    return path


def read_records(record_dir):
    """Every hook run recorded in record_dir, as dicts of its environment."""
    recs = []
    for name in sorted(os.listdir(record_dir)):
        if not name.endswith(".env"):
            continue
        env = {}
        with open(os.path.join(record_dir, name)) as f:
            for line in f:
                line = line.rstrip("\n")
                if "=" in line:
                    k, v = line.split("=", 1)
                    env[k] = v
        recs.append(env)
    return recs


class NotifySocket:
    """A datagram socket passed to tcpopsd as NOTIFY_SOCKET; collects its messages (and closes the
    fds that come with them: `received` says what else to do)."""
    max_fds = 64

    def __init__(self, path, read=True):
        """read=False: a receiver that never reads (PID 1 stuck in a daemon-reload, say)."""
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)  # a tcpopsd that runs as another user (setpriv) may send too
        self.messages = []
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        if read:
            self.thread.start()

    def _run(self):
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                msg, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(self.max_fds * 4))
            except socket.timeout:
                continue
            except OSError:
                return
            fds = []
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds += [struct.unpack("i", data[i:i + 4])[0] for i in range(0, len(data) - len(data) % 4, 4)]
            self.received(msg.decode(errors="replace"), fds)

    def received(self, text, fds):
        for fd in fds:
            os.close(fd)
        with self.lock:
            self.messages.append((time.monotonic(), text))

    def has(self, text):
        with self.lock:
            return [t for t, m in self.messages if text in m.split("\n")]

    def all(self):
        with self.lock:
            return list(self.messages)

    def close(self):
        self.stop = True
        self.sock.close()


_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(extra=None):
    """preexec_fn: the daemon gets SIGKILL if the test process dies (PR_SET_PDEATHSIG), so an
    interrupted test run leaves no tcpopsd behind."""
    def run():
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        if extra:
            extra()
    return run


class Daemon:
    def __init__(self, tmp, listeners=(), events=None, routes=None, daemon=None, log_target="stderr",
                 extra_env=None, config_text=None, wait_ready=True, preexec=None, popen_kw=None, wrapper=(),
                 notify_reader=True, config_extra=""):
        self.tmp = str(tmp)
        self.records = os.path.join(self.tmp, "records")
        os.makedirs(self.records, exist_ok=True)
        d = {"control_socket": os.path.join(self.tmp, "control.sock"), "shutdown_timeout": 5}
        d.update(daemon or {})
        self.control = d["control_socket"]
        self.config_path = os.path.join(self.tmp, "tcpopsd.toml")
        with open(self.config_path, "w") as f:
            f.write(config_text if config_text is not None else render_config(d, events, routes, listeners) + config_extra)
        self.log_path = os.path.join(self.tmp, "tcpopsd.log")
        self.log_target = log_target
        self.extra_env = extra_env or {}
        self.wait_ready = wait_ready
        self.preexec = preexec
        self.popen_kw = popen_kw or {}
        self.wrapper = list(wrapper)
        self.notify_reader = notify_reader
        self.proc = None
        self.notify = None

    def start(self):
        npath = os.path.join(self.tmp, "notify.sock")
        self.notify = NotifySocket(npath, read=self.notify_reader)
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        env.pop("INVOCATION_ID", None)
        env["NOTIFY_SOCKET"] = npath
        env.update(self.extra_env)
        self.fds_before = None
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.wrapper + [BIN, "--config", self.config_path, "--log-target", self.log_target],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent(self.preexec),
                                     **self.popen_kw)
        if self.wait_ready:
            wait_for(lambda: self.notify.has("READY=1") or self.proc.poll() is not None, timeout=20, what="READY=1")
            if self.proc.poll() is not None:
                raise AssertionError(f"tcpopsd exited with {self.proc.returncode}:\n{self.logtext()}")
        return self

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def loglines(self):
        return self.logtext().splitlines()

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self, timeout=15):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self.log.close()
        self.notify.close()
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.notify:
            self.notify.close()

    def events(self):
        return read_records(self.records)

    def ctl(self, *args, env=None, **kw):
        """Runs tcpopsctl against this daemon."""
        e = dict(os.environ)
        e.pop("TCPOPS_CONID", None)
        e.update(env or {})
        return subprocess.run([CTL, *args[:1], "--socket", self.control, *args[1:]], capture_output=True, text=True,
                              env=e, timeout=30, **kw)

    def request(self, obj_or_line):
        """One raw request on the control socket; returns the answer line."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.control)
        line = obj_or_line if isinstance(obj_or_line, (bytes, str)) else json.dumps(obj_or_line)
        if isinstance(line, str):
            line = line.encode()
        s.sendall(line + b"\n")
        buf = b""
        while b"\n" not in buf:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        s.close()
        return buf.split(b"\n")[0].decode()


class EchoServer:
    """A threaded upstream. mode 'echo' echoes and passes half-close on; 'sink' reads and discards;
    'after_fin' answers a FIN with a trailer then closes; 'hold' reads, never answers, and keeps
    its side open even after the client's FIN."""

    def __init__(self, host="127.0.0.1", port=0, mode="echo", trailer=b""):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.mode = mode
        self.trailer = trailer
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            if self.mode == "hold":
                while c.recv(65536):
                    pass
                self.done.wait()  # a FIN from the client does not end it: it stays open
                return
            while True:
                data = c.recv(262144)
                if not data:
                    break
                if self.mode == "echo":
                    c.sendall(data)
            if self.trailer:
                c.sendall(self.trailer)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.done.set()
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


def connect(port, host="127.0.0.1", timeout=10):
    s = socket.create_connection((host, port), timeout=timeout)
    return s


def reset_close(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def recv_all(s, timeout=30):
    s.settimeout(timeout)
    chunks = []
    while True:
        d = s.recv(262144)
        if not d:
            return b"".join(chunks)
        chunks.append(d)


def report(fault, event, seconds):
    """One line for the record (pytest -s shows it): which fault, the event it raised, how soon."""
    print(f"\nFAULT {fault}: {event} after {seconds:.2f} s", flush=True)


def echoed(s, payload=b"ping", timeout=10):
    """Sends `payload` on a connection to an echo upstream and reads as much back: the bytes read
    (shorter if the connection closed first)."""
    s.settimeout(timeout)
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        d = s.recv(65536)
        if not d:
            break
        got += d
    return got


def hooked(tmp_path, **kw):
    """[events] with a callback hook that records every event's environment in tmp_path/records."""
    ev = {"callback": [write_hook(tmp_path / "hook.sh", tmp_path / "records")]}
    ev.update(kw)
    return ev


class AcceptOnce:
    """An upstream that accepts one connection and hands it to the test (`wait()`)."""

    def __init__(self, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.accepted = []
        threading.Thread(target=lambda: self.accepted.append(self.sock.accept()[0]), daemon=True).start()

    @property
    def address(self):
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def wait(self):
        wait_for(lambda: self.accepted, what="the upstream's accept")
        return self.accepted[0]

    def close(self):
        self.sock.close()


def listener(name, port, upstream, **kw):
    l = {"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream}
    l.update(kw)
    return l


def events_for(records, conid):
    return [r for r in records if r.get("TCPOPS_CONID") == str(conid)]


def find_client_event(records, client_port, event=None):
    out = [r for r in records if r.get("TCPOPS_SIDE") == "client" and r.get("TCPOPS_REMOTE_PORT") == str(client_port)]
    if event:
        out = [r for r in out if r.get("TCPOPS_EVENT") == event]
    return out


# Set by `make test-sanitize` to the sanitizer the binaries were built with. Memory bounds do not
# hold there (ASan keeps freed memory in quarantine; TSan shadows it), so tests skip only those.
SANITIZER = os.environ.get("TCPOPS_SANITIZER", "")

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer", "runtime error:")


def sanitizer_report(d):
    """What AddressSanitizer, LeakSanitizer or ThreadSanitizer said in tcpopsd's log (make
    test-sanitize runs the suite with such builds), or ""."""
    try:
        text = d.logtext()
    except OSError:
        return ""
    at = min((text.find(m) for m in SANITIZER_MARKS if m in text), default=-1)
    return text[at:at + 6000] if at >= 0 else ""


def is_root():
    return os.geteuid() == 0


def journal_alive(path="/run/systemd/journal/socket"):
    """True when a journald answers on its socket. A socket file alone is not enough: a journald that
    was killed leaves its sockets behind, and sending to them fails with ECONNREFUSED."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def stream_pattern(i, start, length):
    return bytes((i * 7 + k) % 251 for k in range(start, start + length))


class Streamer:
    """A client that sends a checksummed pattern in chunks and reads its echo back."""

    def __init__(self, port, i, chunk=4096, pause=0.005):
        self.i, self.chunk, self.pause = i, chunk, pause
        self.s = connect(port)
        self.s.settimeout(60)
        self.sent = 0
        self.got = bytearray()
        self.error = None
        self.go = threading.Event()
        self.go.set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer = threading.Thread(target=self._write, daemon=True)

    def start(self):
        self.reader.start()
        self.writer.start()
        return self

    def _read(self):
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return
                self.got.extend(d)
        except OSError as e:
            self.error = f"read: {e!r}"

    def _write(self):
        try:
            while self.go.is_set():
                self.s.sendall(stream_pattern(self.i, self.sent, self.chunk))
                self.sent += self.chunk
                time.sleep(self.pause)
            self.s.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = f"write: {e!r}"

    def finish(self, timeout=60):
        self.go.clear()
        self.writer.join(timeout)
        self.reader.join(timeout)
        self.s.close()

    def verdict(self):
        ok = self.error is None and len(self.got) == self.sent and bytes(self.got) == stream_pattern(self.i, 0, self.sent)
        return ok, f"client {self.i}: sent {self.sent}, got {len(self.got)}, error {self.error}"
