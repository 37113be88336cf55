#!/usr/bin/env bash
# `make run`: an echo upstream on 127.0.0.1:5070, tcpopsd on 127.0.0.1:5060 with the example
# config (its log on this terminal), and three clients that show FIN, RST and lifetime events.
# In a terminal it keeps running until Ctrl-C; without one it stops after the demo.
set -euo pipefail
BIN=${1:-.build/release/tcpopsd}
CONFIG=${2:-config/tcpopsd.toml}
CTL=$(dirname "$BIN")/tcpopsctl
here=$(cd "$(dirname "$0")" && pwd)
SOCKET=$(sed -n 's/^control_socket *= *"\(.*\)".*/\1/p' "$CONFIG")
# Without root, /run/tcpopsd cannot be made: run the same config with the socket in /tmp.
if ! mkdir -p "$(dirname "$SOCKET")" 2>/dev/null || [ ! -w "$(dirname "$SOCKET")" ]; then
  SOCKET=${TMPDIR:-/tmp}/tcpopsd-demo-$$.sock
  sed "s|^control_socket *=.*|control_socket = \"$SOCKET\"|" "$CONFIG" > "${TMPDIR:-/tmp}/tcpopsd-demo-$$.toml"
  CONFIG=${TMPDIR:-/tmp}/tcpopsd-demo-$$.toml
  echo "(not root: the control socket goes to $SOCKET)"
fi

pids=()
daemon=
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
# Ctrl-C reaches every process of the terminal's group, tcpopsd too: it drains and stops on that one
# signal. A second one (cleanup's kill) would close its relays at once and hide the drain; so on
# INT the script only waits for tcpopsd, then stops the rest and exits 0 (make reports no error).
interrupted() {
  trap - INT
  if [ -n "$daemon" ]; then wait "$daemon" 2>/dev/null || true; fi
  pids=("${pids[@]/$daemon}")
  cleanup
  exit 0
}
trap cleanup EXIT TERM
trap interrupted INT

# Waits until something listens on 127.0.0.1:PORT, or says who is missing and gives up.
wait_for_port() {
  for _ in $(seq 100); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.1; done
  echo "demo: nothing listens on 127.0.0.1:$1 after 10 s ($2)" >&2
  exit 1
}

"$BIN" --check-config --config "$CONFIG"
for port in 5060 5070; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "demo: port $port is taken by another program; the demo needs 5060 and 5070 on 127.0.0.1" >&2
    exit 1
  fi
done
python3 "$here/echo_upstream.py" 5070 & pids+=($!)
wait_for_port 5070 "the echo upstream"
"$BIN" --config "$CONFIG" --log-target stderr & pids+=($!)
daemon=$!
wait_for_port 5060 "tcpopsd"
python3 "$here/demo_clients.py" 5060 "$CTL" "$SOCKET"
sleep 0.5
if [ -t 0 ]; then
  echo
  echo ">>> tcpopsd is relaying 127.0.0.1:5060 -> 127.0.0.1:5070; try: socat - TCP:127.0.0.1:5060"
  echo ">>> and in another terminal: $CTL list --socket $SOCKET   (Ctrl-C stops)"
  wait "$daemon"
else
  kill -TERM "$daemon"; wait "$daemon"
fi
