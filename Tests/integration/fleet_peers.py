#!/usr/bin/env python3
"""The fleet test's peers, run inside its network namespaces (`ip netns exec NS python3 THIS ...`):

  echo ADDR PORT                 a threaded echo server (echoes, passes a half-close on)
  stream OUT STOP TARGET...      one client connection per TARGET (host:port:name), each sending a
                                 pattern of its own (1 KiB every 20 ms) and reading the echo,
                                 until the file STOP exists; then it half-closes, reads to the end
                                 and writes one JSON line per connection to OUT (sent, received,
                                 whether the echo is the pattern in order, errors)
  idle OUT STOP TARGET...        one connection per TARGET that sends one line, reads it back and
                                 then waits: for the other side's close (recording whether it was
                                 a FIN or a reset) or for STOP; writes the same JSON lines to OUT
  churn OUT STOP TARGET          new connections to TARGET one after another (one byte echoed,
                                 then closed) until STOP exists; writes {"ok": N, "failed": [...]}
  reset OUT TARGET...            one connection per TARGET, one line echoed, then closed with an RST
                                 (SO_LINGER 0); writes each connection's local address to OUT
"""
import json
import os
import socket
import struct
import sys
import threading
import time


def pattern(i, start, length):
    return bytes((i * 31 + k) % 251 for k in range(start, start + length))


def echo(addr, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, int(port)))
    srv.listen(1024)

    def serve(c):
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    c.shutdown(socket.SHUT_WR)
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def connect(target):
    host, port, name = target.rsplit(":", 2)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s, name


def stream(out, stop, targets):
    def one(i, target):
        r = {"i": i, "target": target, "sent": 0, "received": 0, "in_order": False, "early_eof": False, "error": None}
        try:
            s, r["name"] = connect(target)
            r["local"] = "%s:%d" % s.getsockname()
            s.settimeout(60)
            got = bytearray()

            def reader():
                try:
                    while True:
                        d = s.recv(65536)
                        if not d:
                            return
                        got.extend(d)
                except OSError as e:
                    r["error"] = f"read: {e!r}"

            t = threading.Thread(target=reader)
            t.start()
            while not os.path.exists(stop):
                chunk = pattern(i, r["sent"], 1024)
                s.sendall(chunk)
                r["sent"] += len(chunk)
                time.sleep(0.02)
                if not t.is_alive():
                    r["early_eof"] = True
                    break
            s.shutdown(socket.SHUT_WR)
            t.join(60)
            r["received"] = len(got)
            r["in_order"] = bytes(got) == pattern(i, 0, len(got))
            s.close()
        except OSError as e:
            r["error"] = r["error"] or repr(e)
        return r

    each(out, targets, one)


def idle(out, stop, targets):
    def one(i, target):
        r = {"i": i, "target": target, "closed": None, "error": None}
        try:
            s, r["name"] = connect(target)
            r["local"] = "%s:%d" % s.getsockname()
            s.sendall(b"hello\n")
            s.settimeout(10)
            r["echoed"] = s.recv(100) == b"hello\n"
            s.settimeout(0.2)
            while not os.path.exists(stop):
                try:
                    d = s.recv(100)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    r["closed"] = "reset"
                    break
                r["closed"] = "fin" if not d else "data"
                break
            s.close()
        except OSError as e:
            r["error"] = repr(e)
        return r

    each(out, targets, one)


def churn(out, stop, target):
    ok, failed = 0, []
    while not os.path.exists(stop):
        try:
            s, _ = connect(target)
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise OSError("no echo")
            s.close()
            ok += 1
        except OSError as e:
            failed.append(repr(e))
            time.sleep(0.01)
    write(out, [{"i": 0, "ok": ok, "failed": failed}])


def reset(out, targets):
    results = []
    for i, target in enumerate(targets):
        s, name = connect(target)
        s.sendall(b"bye\n")
        s.recv(100)
        results.append({"i": i, "target": target, "name": name, "local": "%s:%d" % s.getsockname()})
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    write(out, results)


def each(out, targets, one):
    """one(i, target) for every target, each on a thread of its own; their results to `out`."""
    results = [None] * len(targets)

    def run(i, target):
        results[i] = one(i, target)

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    write(out, results)


def write(out, results):
    with open(out + ".tmp", "w") as f:
        for r in sorted(results, key=lambda r: r["i"]):
            f.write(json.dumps(r) + "\n")
    os.rename(out + ".tmp", out)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "echo":
        echo(*args)
    elif cmd == "stream":
        stream(args[0], args[1], args[2:])
    elif cmd == "idle":
        idle(args[0], args[1], args[2:])
    elif cmd == "churn":
        churn(args[0], args[1], args[2])
    elif cmd == "reset":
        reset(args[0], [t for t in args[1:] if t])  # (an empty STOP slot may stand first)
    else:
        sys.exit(f"unknown command {cmd}")
