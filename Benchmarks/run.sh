#!/usr/bin/env bash
# Relay throughput (one iperf3 stream) and connections per second, each measured directly and
# through tcpopsd on loopback. Usage: Benchmarks/run.sh [path/to/tcpopsd]   (make bench)
set -euo pipefail
BIN=$(realpath "${1:-.build/release/tcpopsd}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
command -v iperf3 >/dev/null || { echo "iperf3 is needed (apt-get install iperf3)"; exit 1; }
gcc -O2 -pthread -o "$work/connrate" "$here/connrate.c"

cat > "$work/bench.toml" <<TOML
[daemon]
control_socket = "$work/control.sock"
log_level = "warning"
max_connections = 100000
[events]
closed_event = 0
[[listener]]
name = "iperf"
listen = "127.0.0.1:15201"
upstream = "127.0.0.1:5201"
[[listener]]
name = "echo"
listen = "127.0.0.1:15300"
upstream = "127.0.0.1:5300"
TOML

iperf3 -s -p 5201 -D -I "$work/iperf.pid" >/dev/null 2>&1; sleep 0.3; pids+=("$(cat "$work/iperf.pid")")
"$work/connrate" server 5300 & pids+=($!)
"$BIN" --config "$work/bench.toml" --log-target stderr 2>"$work/tcpopsd.log" & pids+=($!)
daemon=$!
# HAProxy in TCP mode over the same upstreams, for comparison, when it is installed.
haproxy=""
if command -v haproxy >/dev/null; then
  cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen iperf
  bind 127.0.0.1:16201
  server s 127.0.0.1:5201
listen echo
  bind 127.0.0.1:16300
  server s 127.0.0.1:5300
CFG
  haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
  haproxy=$!
fi
sleep 0.5

gbps() { iperf3 -c 127.0.0.1 -p "$1" -t "${SECONDS_PER_RUN:-5}" -J | python3 -c 'import json,sys; print("%.2f Gbit/s" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
echo "one stream, iperf3 -t ${SECONDS_PER_RUN:-5}:"
echo "  direct          $(gbps 5201)"
echo "  through tcpopsd $(gbps 15201)"
[ -n "$haproxy" ] && echo "  through haproxy $(gbps 16201)"
# connections/s, and the proxy's CPU time (user + system, from /proc/PID/stat) per connection.
cps() {
  local port=$1 pid=$2 t0 t1 out n
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$("$work/connrate" client "$port" "${SECONDS_PER_RUN:-5}" 8)
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  n=$(echo "$out" | sed -E 's/.*\(([0-9]+) in.*/\1/')
  echo "$out, $(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / (n > 0 ? n : 1) )) us proxy CPU per connection"
}
echo "connections/s, connect + 32-byte echo + close, 8 client threads, ${SECONDS_PER_RUN:-5} s:"
echo "  direct          $("$work/connrate" client 5300 "${SECONDS_PER_RUN:-5}" 8)"
echo "  through tcpopsd $(cps 15300 "$daemon")"
[ -n "$haproxy" ] && echo "  through haproxy $(cps 16300 "$haproxy")"
echo "tcpopsd RSS after the runs: $(awk '/VmRSS/ {print $2, $3}' /proc/$daemon/status)"
