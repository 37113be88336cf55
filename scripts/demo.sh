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
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN" --check-config --config "$CONFIG"
python3 "$here/echo_upstream.py" 5070 & pids+=($!)
"$BIN" --config "$CONFIG" --log-target stderr & pids+=($!)
daemon=$!
for _ in $(seq 50); do ss -Hltn "sport = :5060" | grep -q . && break; sleep 0.1; done
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
