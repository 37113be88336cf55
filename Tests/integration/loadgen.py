"""Load for the crash tests, each side in a process of its own (one thread, non-blocking), so that
a test's threads cannot starve it and make a slow echo look like a lost byte.

  loadgen.py echo PORT_FILE          an echo server on 127.0.0.1 (an ephemeral port, written to
                                     PORT_FILE); a client's FIN is answered with one after its
                                     bytes. Runs until killed.
  loadgen.py stream PORT N [CHUNK] [PAUSE]
                                     N clients each send a checksummed pattern (CHUNK bytes every
                                     PAUSE s) and check every echoed byte against it as it comes.
                                     Until stdin closes; then each half-closes and waits for the
                                     rest of its echo and the FIN. Prints one JSON line: per
                                     client, bytes sent and received, whether every byte matched,
                                     and any error (a reset, an early FIN)."""
import json
import os
import selectors
import socket
import sys
import threading
import time

BASE = bytes(range(251)) * 2


def pattern_at(i, offset, length):
    """The pattern of client i, bytes offset..offset+length: (i*7 + k) % 251 for byte k."""
    out = bytearray()
    while length > 0:
        start = (i * 7 + offset) % 251
        n = min(length, 251)
        out += BASE[start:start + n]
        offset += n
        length -= n
    return bytes(out)


def echo(port_file):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    srv.setblocking(False)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, None)
    pending = {}  # socket -> bytes not yet echoed
    eof = set()

    def close(c):
        sel.unregister(c)
        pending.pop(c, None)
        eof.discard(c)
        c.close()

    def want(c):
        sel.modify(c, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending[c] else 0), "c")

    while True:
        for key, ev in sel.select():
            if key.data is None:
                while True:
                    try:
                        c, _ = srv.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    pending[c] = b""
                    sel.register(c, selectors.EVENT_READ, "c")
                continue
            c = key.fileobj
            try:
                if ev & selectors.EVENT_WRITE and pending[c]:
                    n = c.send(pending[c])
                    pending[c] = pending[c][n:]
                if ev & selectors.EVENT_READ and c not in eof and len(pending[c]) < (1 << 20):
                    d = c.recv(262144)
                    if d:
                        pending[c] += d
                    else:
                        eof.add(c)
                if c in eof and not pending[c]:
                    c.shutdown(socket.SHUT_WR)
                    close(c)
                    continue
                want(c)
            except OSError:
                close(c)


def stream(port, n, chunk, pause):
    sel = selectors.DefaultSelector()
    clients = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.setblocking(False)
        c = {"i": i, "s": s, "sent": 0, "got": 0, "same": True, "error": None, "done": False, "shut": False}
        clients.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    print("connected", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    next_send = time.monotonic()
    outbox = {c["i"]: b"" for c in clients}
    deadline = None
    while True:
        now = time.monotonic()
        if stop.is_set() and deadline is None:
            deadline = now + 60
        if not stop.is_set() and now >= next_send:
            for c in clients:
                if c["error"] is None and len(outbox[c["i"]]) < 4 * chunk:
                    outbox[c["i"]] += pattern_at(c["i"], c["sent"] + len(outbox[c["i"]]), chunk)
            next_send = now + pause
        for c in clients:
            if c["error"] is not None or c["shut"]:
                continue
            data = outbox[c["i"]]
            if data:
                try:
                    k = c["s"].send(data)
                    c["sent"] += k
                    outbox[c["i"]] = data[k:]
                except BlockingIOError:
                    pass
                except OSError as e:
                    c["error"] = f"send: {e!r}"
            elif stop.is_set():
                try:
                    c["s"].shutdown(socket.SHUT_WR)
                except OSError as e:
                    c["error"] = f"shutdown: {e!r}"
                c["shut"] = True
        for key, _ in sel.select(timeout=0.002):
            c = key.data
            try:
                d = c["s"].recv(262144)
            except BlockingIOError:
                continue
            except OSError as e:
                c["error"] = f"recv: {e!r}"
                sel.unregister(c["s"])
                continue
            if not d:
                if not c["shut"]:
                    c["error"] = "the relay closed before the client did"
                c["done"] = True
                sel.unregister(c["s"])
                continue
            if d != pattern_at(c["i"], c["got"], len(d)):
                c["same"] = False
            c["got"] += len(d)
        if all(c["done"] or c["error"] is not None for c in clients):
            break
        if deadline is not None and time.monotonic() > deadline:
            for c in clients:
                if not c["done"] and c["error"] is None:
                    c["error"] = "no FIN within 60 s of the end"
            break
    print(json.dumps([{k: c[k] for k in ("i", "sent", "got", "same", "error")} for c in clients]), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2])
    else:
        stream(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 8192,
               float(sys.argv[5]) if len(sys.argv) > 5 else 0.01)
