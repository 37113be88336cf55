"""A new client every INTERVAL seconds to HOST:PORT, each on its own (not one after another): it
connects, sends one byte and waits for its echo. Runs in a process of its own, so that a test's
other threads cannot starve its schedule, until stdin closes; then waits for the clients still
open (at most TIMEOUT s each) and prints one JSON line: how many were served, and what went wrong
with the others (refused, reset, closed, no answer)."""
import errno
import json
import selectors
import socket
import sys
import threading
import time


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    sel = selectors.DefaultSelector()
    served, failures, attempts, slowest = 0, [], 0, 0.0
    next_at = time.monotonic()
    while not stop.is_set() or sel.get_map():
        now = time.monotonic()
        while not stop.is_set() and now >= next_at:
            c = socket.socket()
            c.setblocking(False)
            rc = c.connect_ex((host, port))
            attempts += 1
            if rc not in (0, errno.EINPROGRESS):
                failures.append(f"connect: {errno.errorcode.get(rc, rc)}")
                c.close()
            else:
                sel.register(c, selectors.EVENT_WRITE, [now, "connecting"])
            next_at += interval
        for key, _ in sel.select(timeout=0.002):
            c, state = key.fileobj, key.data
            try:
                if state[1] == "connecting":
                    err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, errno.errorcode.get(err, str(err)))
                    c.send(b"x")
                    state[1] = "waiting"
                    sel.modify(c, selectors.EVENT_READ, state)
                    continue
                got = c.recv(1)
                if got == b"x":
                    served += 1
                    slowest = max(slowest, time.monotonic() - state[0])
                else:
                    failures.append(f"answer {got!r}")
            except OSError as e:
                failures.append(f"{state[1]}: {e!r}")
            sel.unregister(c)
            c.close()
        for key in list(sel.get_map().values()):
            if time.monotonic() - key.data[0] > timeout:
                failures.append(f"{key.data[1]}: no answer in {timeout} s")
                sel.unregister(key.fileobj)
                key.fileobj.close()
    print(json.dumps({"attempts": attempts, "served": served, "failures": failures, "slowest_s": round(slowest, 3)}), flush=True)


if __name__ == "__main__":
    main()
