#!/usr/bin/env bash
# L7 benchmark (HTTP/1.1 keep-alive): Weft's HTTP path against HAProxy in HTTP mode, one
# proxy hop each, in one topology (client netns → server netns with nginx, on one bridge),
# in one run:
#   direct        wrk/hey (plain client netns, no capture) → nginx
#   haproxy-http  → HAProxy (mode http, 1 thread, upstream keep-alive) on 127.0.0.1 in the
#                   plain client netns → nginx
#   nio-relay     → weft-nio-relay on 127.0.0.1 in the plain client netns → nginx: the least
#                   a proxy built on SwiftNIO's HTTP/1.1 codecs does (no routing, pooling,
#                   policy or telemetry) — the floor under Weft's L7 path
#   weft-l7       wrk/hey in the meshed client netns → the service's virtual IP, port
#                   declared /http → Weft's L7 outbound proxy (per-request endpoint choice,
#                   pooled upstream) → nginx
# The baselines run in their own netns: the meshed one captures every outbound connection
# (HTTP on any port is detected and proxied), so measuring them there would measure Weft.
# Two loads: the most requests/s (wrk, 32 connections) and latency at a fixed 1,000
# requests/s (hey, 10 workers × 100 req/s). Median of interleaved rounds. Writes
# bench/reports/l7.md with the machine and the ratios.
#
# Usage: sudo bench/l7.sh [--duration SECONDS] [--rounds N] [--weft PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
bench_args l7.sh "$@"
WEFT=$(bench_prepare l7.sh "$WEFT")

work=$(mktemp -d /tmp/weft-bench7.XXXXXX)
chmod 755 "$work"
BR=wbench7
CLI=wb7-cli
SRV=wb7-srv
SRV_IP=10.237.7.3
RAW=wb7-raw
pids=()
export WEFT_AGENT_SOCKET=$work/agent.sock
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  ip netns del $CLI 2>/dev/null; ip netns del $SRV 2>/dev/null; ip netns del $RAW 2>/dev/null
  ip link del $BR 2>/dev/null; ip link del wbagent7 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

bench_topology $BR 10.237.7 $CLI $SRV wb7h
# The plain client for the baselines: same bridge, no mesh.
ip netns add $RAW
ip link add wb7h3 type veth peer name eth0 netns $RAW
ip link set wb7h3 master $BR up
ip -n $RAW addr add 10.237.7.4/24 dev eth0
ip -n $RAW link set eth0 up
ip -n $RAW link set lo up
ip -n $RAW route add default via 10.237.7.1
pids+=($(bench_nginx "$work" $SRV))

cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen l7
  bind 127.0.0.1:18090
  server origin $SRV_IP:8080
CFG
ip netns exec $RAW haproxy -db -f "$work/haproxy.cfg" 2>>"$work/haproxy.log" & pids+=($!)
HAPROXY_PID=$!
swift build -c release --product weft-nio-relay >/dev/null
ip netns exec $RAW .build/release/weft-nio-relay 18091 $SRV_IP 8080 2>>"$work/relay.log" & pids+=($!)
RELAY_PID=$!

"$WEFT" agent --socket "$WEFT_AGENT_SOCKET" --bridge wbagent7 --pod-cidr 10.238.7.0/24 --dns-upstream none \
  --state-dir "$work/state" --log-level warning 2>"$work/agent.log" & pids+=($!)
AGENT_PID=$!
for _ in $(seq 100); do "$WEFT" get workloads >/dev/null 2>&1 && break; sleep 0.1; done
bench_plaintext_mesh "$WEFT" "$work"
# The server is registered as service "origin" (port 80 → 8080, HTTP) so it has a virtual
# IP; its own capture rules are removed so the comparison is one proxy hop on each side.
"$WEFT" attach --netns $SRV --service origin --port 80:8080/http >/dev/null
"$WEFT" init --netns $SRV --remove >/dev/null
"$WEFT" attach --netns $CLI --service bench-client >/dev/null
VIP=$("$WEFT" get services -o json | python3 -c 'import json,sys; print([s["vip"] for s in json.load(sys.stdin) if s["key"]["name"]=="origin"][0])')
for _ in $(seq 100); do ip netns exec $CLI curl -s -o /dev/null "http://$VIP/" && break; sleep 0.1; done

declare -A ALL_RPS ALL_P50 ALL_P99 ALL_F50 ALL_F99 ALL_CPU
# CPU time (user + system, clock ticks) of a process
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # mode url netns [proxy pid]
  ip netns exec $3 wrk -t1 -c32 -d2s "$2" >/dev/null 2>&1 || true
  local out t0 t1
  [ -n "${4:-}" ] && t0=$(ticks "$4")
  out=$(ip netns exec $3 wrk -t1 -c32 -d"${DURATION}s" --latency "$2")
  if [ -n "${4:-}" ]; then
    t1=$(ticks "$4")
    # The proxy's CPU per request, µs: ticks are 1/100 s.
    ALL_CPU[$1]+="$(echo "$out" | awk -v d=$((t1 - t0)) '/requests in/ {printf "%.1f", d * 10000 / $1}') "
  fi
  ALL_RPS[$1]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  ALL_P50[$1]+="$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')") "
  ALL_P99[$1]+="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
  # Fixed rate: 10 workers × 100 requests/s, keep-alive; hey reports seconds.
  out=$(ip netns exec $3 hey -z "${DURATION}s" -c 10 -q 100 "$2")
  ALL_F50[$1]+="$(echo "$out" | awk '/ 50% in / {printf "%.0f", $3 * 1000000}') "
  ALL_F99[$1]+="$(echo "$out" | awk '/ 99% in / {printf "%.0f", $3 * 1000000}') "
  echo "$1: $(echo "${ALL_RPS[$1]}" | awk '{print $NF}') req/s; at 1,000 req/s p50 $(echo "${ALL_F50[$1]}" | awk '{print $NF}') us"
}
for round in $(seq "$ROUNDS"); do
  echo "-- round $round of $ROUNDS"
  measure direct "http://$SRV_IP:8080/" $RAW
  measure haproxy-http "http://127.0.0.1:18090/" $RAW "$HAPROXY_PID"
  measure nio-relay "http://127.0.0.1:18091/" $RAW "$RELAY_PID"
  measure weft-l7 "http://$VIP/" $CLI "$AGENT_PID"
done
"$WEFT" get workloads > "$work/workloads.txt"

declare -A RPS P50 P99 F50 F99 CPU
MODES="direct haproxy-http nio-relay weft-l7"
for m in $MODES; do
  RPS[$m]=$(echo "${ALL_RPS[$m]}" | median); P50[$m]=$(echo "${ALL_P50[$m]}" | median); P99[$m]=$(echo "${ALL_P99[$m]}" | median)
  F50[$m]=$(echo "${ALL_F50[$m]}" | median); F99[$m]=$(echo "${ALL_F99[$m]}" | median); CPU[$m]=$(echo "${ALL_CPU[$m]:-}" | median)
done
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a - b }'; }
rps=$(ratio "${RPS[weft-l7]}" "${RPS[haproxy-http]}")
relay_rps=$(ratio "${RPS[nio-relay]}" "${RPS[haproxy-http]}")
relay_cpu=$(ratio "${CPU[nio-relay]}" "${CPU[haproxy-http]}")
weft_cpu=$(ratio "${CPU[weft-l7]}" "${CPU[nio-relay]}")
added50=$(added "${F50[weft-l7]}" "${F50[direct]}")
added50ha=$(added "${F50[haproxy-http]}" "${F50[direct]}")
report=bench/reports/l7.md
{
  echo "# L7 benchmark (bench/l7.sh)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- HTTP/1.1 keep-alive, 3-byte body from nginx (1 worker); one proxy hop: HAProxy $(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}') mode http (1 thread, http-reuse always) vs Weft's L7 outbound path (release build)"
  echo "- most requests/s: wrk -t1 -c32 -d${DURATION}s; fixed rate: hey -c 10 -q 100 (1,000 requests/s) -z ${DURATION}s"
  echo "- direct, HAProxy and the NIO relay (weft-nio-relay: NIO's HTTP/1.1 server and client codecs, parts relayed, nothing else) from a plain client netns, Weft from a meshed one, all on one bridge"
  echo "- proxy CPU per request: the proxy process's user + system time during the wrk run over the requests wrk completed"
  echo "- $ROUNDS interleaved rounds, medians; all on the same $(nproc) cores"
  echo
  echo "| mode | requests/s (wrk) | p50 µs (wrk) | p99 µs (wrk) | p50 µs @1k/s | p99 µs @1k/s | proxy CPU µs per request |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for m in $MODES; do
    echo "| $m | ${RPS[$m]} | ${P50[$m]} | ${P99[$m]} | ${F50[$m]} | ${F99[$m]} | ${CPU[$m]} |"
  done
  echo
  echo "| figure | value | target | |"
  echo "|---|---:|---:|---|"
  echo "| Weft / HAProxy requests/s | $rps | ≥ 0.80 | $(verdict "$rps" ">=" 0.8) |"
  echo "| added p50 per hop at 1,000 req/s, Weft | $added50 µs | ≤ 100 µs | $(verdict "$added50" "<=" 100) |"
  echo "| added p50 per hop at 1,000 req/s, HAProxy (for scale) | $added50ha µs | | |"
  echo "| NIO relay / HAProxy requests/s (the ceiling of any proxy on NIO's HTTP/1.1 codecs) | $relay_rps | | |"
  echo "| NIO relay / HAProxy CPU per request | $relay_cpu | | |"
  echo "| Weft / NIO relay CPU per request (what routing, pooling, policy and metrics add) | $weft_cpu | | |"
  echo
  echo "Every round: requests/s direct ${ALL_RPS[direct]}; haproxy-http ${ALL_RPS[haproxy-http]}; nio-relay ${ALL_RPS[nio-relay]}; weft-l7 ${ALL_RPS[weft-l7]}"
  echo "; CPU µs per request haproxy-http ${ALL_CPU[haproxy-http]}; nio-relay ${ALL_CPU[nio-relay]}; weft-l7 ${ALL_CPU[weft-l7]}"
  echo
  echo '```'
  cat "$work/workloads.txt"
  echo '```'
} > "$report"
cat "$report"
