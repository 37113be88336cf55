#!/usr/bin/env bash
# `make run`: an echo upstream on 127.0.0.1:5070, tcpopsd on 127.0.0.1:5060 with the example
# config (its log on this terminal), and three clients that show FIN, RST and lifetime events.
# In a terminal it keeps running until Ctrl-C; without one it stops after the demo.
set -euo pipefail
BIN=${1:-.build/release/tcpopsd}
CONFIG=${2:-config/tcpopsd.toml}
here=$(cd "$(dirname "$0")" && pwd)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN" --check-config --config "$CONFIG"
python3 "$here/echo_upstream.py" 5070 & pids+=($!)
"$BIN" --config "$CONFIG" --log-target stderr & pids+=($!)
daemon=$!
for _ in $(seq 50); do ss -Hltn "sport = :5060" | grep -q . && break; sleep 0.1; done
python3 "$here/demo_clients.py" 5060
sleep 0.5
if [ -t 0 ]; then
  echo
  echo ">>> tcpopsd is relaying 127.0.0.1:5060 -> 127.0.0.1:5070; try: socat - TCP:127.0.0.1:5060   (Ctrl-C stops)"
  wait "$daemon"
else
  kill -TERM "$daemon"; wait "$daemon"
fi
