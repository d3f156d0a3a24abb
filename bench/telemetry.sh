#!/usr/bin/env bash
# The cost of telemetry on the L7 path (HTTP/1.1 keep-alive, one proxy hop, the topology of
# bench/l7.sh). Three agents run side by side, each with its own client and nginx namespaces,
# identical but for telemetry:
#   off      no metrics (--metrics-address none), no access log, no tracing
#   metrics  Istio's standard metrics only (the default)
#   on       metrics + a JSON access-log line per request to a file + tracing at 1% sampling
#            to an OTLP/gRPC receiver (a small Python grpcio server on loopback)
# The agents run on the first core, everything else on the second. Each round loads the three in turn for --duration seconds (short slices, many rounds: this
# machine's speed drifts by tens of percent over a minute, so the modes are interleaved
# finely and compared by medians). Besides requests/s, each slice records the agent's CPU
# time per request (/proc), the cost the data path pays whatever else runs on the machine.
# Writes bench/reports/telemetry.md with the machine.
#
# Usage: sudo bench/telemetry.sh [--duration SECONDS (3)] [--rounds N (10)] [--weft PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
BENCH_DEFAULT_DURATION=3 BENCH_DEFAULT_ROUNDS=10 bench_args telemetry.sh "$@"
WEFT=$(bench_prepare telemetry.sh "$WEFT")

work=$(mktemp -d /tmp/weft-bencht.XXXXXX)
chmod 755 "$work"
MODES=(off metrics on)
# The agents on one core, the load (wrk/hey, nginx, the OTLP receiver) on the other: with
# everything floating on two cores, the kernel's network work lands on whichever process
# runs and the agents' CPU per request swung by ±40 % between identical slices.
AGENT_CPU=0
LOAD_CPU=$(( $(nproc) > 1 ? 1 : 0 ))
pids=()
declare -A AGENT VIP
cleanup() {
  set +e
  for p in "${AGENT[@]}" "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  local i
  for i in 1 2 3; do
    ip netns del wbt$i-cli 2>/dev/null; ip netns del wbt$i-srv 2>/dev/null
    ip link del wbencht$i 2>/dev/null; ip link del wbagentt$i 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The OTLP receiver: accepts Export calls and counts the bytes (spans are not decoded).
cat > "$work/otlp.py" <<'PY'
import sys, grpc
from concurrent import futures
got = [0]
def export(request, context):
    got[0] += len(request); return b""
server = grpc.server(futures.ThreadPoolExecutor(2))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService",
    {"Export": grpc.unary_unary_rpc_method_handler(export)}),))
server.add_insecure_port("127.0.0.1:14317"); server.start(); server.wait_for_termination()
PY
taskset -c "$LOAD_CPU" python3 "$work/otlp.py" 2>>"$work/otlp.log" & pids+=($!)

i=0
for m in "${MODES[@]}"; do
  i=$((i + 1))
  flags=(--metrics-address none --admin-address none)
  [ "$m" = metrics ] && flags=(--metrics-address 127.0.0.1:15990 --admin-address none)
  [ "$m" = on ] && flags=(--metrics-address 127.0.0.1:15991 --admin-address none --access-log "$work/access.log"
                         --tracing-collector 127.0.0.1:14317 --trace-sampling 1)
  bench_topology wbencht$i 10.237.1$i wbt$i-cli wbt$i-srv wbt${i}h
  nginx=$(bench_nginx "$work/$m" wbt$i-srv); pids+=($nginx)
  taskset -pc "$LOAD_CPU" "$nginx" >/dev/null
  sock=$work/$m.sock
  taskset -c "$AGENT_CPU" "$WEFT" agent --socket "$sock" --bridge wbagentt$i --pod-cidr 10.238.1$i.0/24 --dns-upstream none --egress-queue none \
    --state-dir "$work/$m-state" --log-level warning "${flags[@]}" 2>>"$work/agent-$m.log" &
  AGENT[$m]=$!
  export WEFT_AGENT_SOCKET=$sock
  for _ in $(seq 100); do "$WEFT" get workloads >/dev/null 2>&1 && break; sleep 0.1; done
  bench_plaintext_mesh "$WEFT" "$work"
  "$WEFT" attach --netns wbt$i-srv --service origin --port 80:8080/http >/dev/null
  "$WEFT" init --netns wbt$i-srv --remove >/dev/null
  "$WEFT" attach --netns wbt$i-cli --service bench-client >/dev/null
  VIP[$m]=$("$WEFT" get services -o json | python3 -c 'import json,sys; print([s["vip"] for s in json.load(sys.stdin) if s["key"]["name"]=="origin"][0])')
  for _ in $(seq 100); do ip netns exec wbt$i-cli curl -s -o /dev/null "http://${VIP[$m]}/" && break; sleep 0.1; done
  ip netns exec wbt$i-cli wrk -t1 -c32 -d2s "http://${VIP[$m]}/" >/dev/null 2>&1 || true
done
unset WEFT_AGENT_SOCKET

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A ALL_RPS ALL_P99 ALL_CPU ALL_F50 ALL_F99
measure() { # mode index
  local out t0 t1 n
  t0=$(cpu_ticks "${AGENT[$1]}")
  out=$(ip netns exec wbt$2-cli taskset -c "$LOAD_CPU" wrk -t1 -c32 -d"${DURATION}s" --latency "http://${VIP[$1]}/")
  t1=$(cpu_ticks "${AGENT[$1]}")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  ALL_RPS[$1]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  ALL_P99[$1]+="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
  ALL_CPU[$1]+="$(awk -v d=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", d * 1000000 / hz / n }') "
  out=$(ip netns exec wbt$2-cli taskset -c "$LOAD_CPU" hey -z "${DURATION}s" -c 10 -q 100 "http://${VIP[$1]}/")
  ALL_F50[$1]+="$(echo "$out" | awk '/ 50% in / {printf "%.0f", $3 * 1000000}') "
  ALL_F99[$1]+="$(echo "$out" | awk '/ 99% in / {printf "%.0f", $3 * 1000000}') "
}
for round in $(seq "$ROUNDS"); do
  i=0
  for m in "${MODES[@]}"; do i=$((i + 1)); measure "$m" $i; done
  echo "round $round of $ROUNDS: $(for m in "${MODES[@]}"; do printf '%s %s req/s %s us/req; ' "$m" "$(echo "${ALL_RPS[$m]}" | awk '{print $NF}')" "$(echo "${ALL_CPU[$m]}" | awk '{print $NF}')"; done)"
done
curl -s http://127.0.0.1:15991/metrics > "$work/metrics.txt"
lines=$(wc -l < "$work/access.log")
series=$(grep -c '^istio_requests_total{' "$work/metrics.txt" || true)

declare -A RPS P99 CPU F50 F99 BEST_RPS BEST_CPU
for m in "${MODES[@]}"; do
  RPS[$m]=$(echo "${ALL_RPS[$m]}" | median); P99[$m]=$(echo "${ALL_P99[$m]}" | median); CPU[$m]=$(echo "${ALL_CPU[$m]}" | median)
  BEST_RPS[$m]=$(echo "${ALL_RPS[$m]}" | tr ' ' '\n' | grep -v '^$' | sort -g | tail -1)
  BEST_CPU[$m]=$(echo "${ALL_CPU[$m]}" | tr ' ' '\n' | grep -v '^$' | sort -g | head -1)
  F50[$m]=$(echo "${ALL_F50[$m]}" | median); F99[$m]=$(echo "${ALL_F99[$m]}" | median)
done
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }'; }
cost=$(pct "${RPS[on]}" "${RPS[off]}")
mcost=$(pct "${RPS[metrics]}" "${RPS[off]}")
cpu_on=$(awk -v a="${CPU[on]}" -v b="${CPU[off]}" 'BEGIN { printf "%.1f", (a / b - 1) * 100 }')
best_cost=$(pct "${BEST_RPS[on]}" "${BEST_RPS[off]}")
best_cpu=$(awk -v a="${BEST_CPU[on]}" -v b="${BEST_CPU[off]}" 'BEGIN { printf "%.1f", (a / b - 1) * 100 }')
cpu_metrics=$(awk -v a="${CPU[metrics]}" -v b="${CPU[off]}" 'BEGIN { printf "%.1f", (a / b - 1) * 100 }')
report=bench/reports/telemetry.md
{
  echo "# Telemetry cost (bench/telemetry.sh)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- HTTP/1.1 keep-alive through Weft's L7 outbound path (release build) to nginx, one hop, plaintext mesh (PeerAuthentication DISABLE)"
  echo "- three agents side by side, identical but for telemetry — off: no metrics, no access log, no tracing; metrics: Istio's standard metrics (the default); on: metrics + a JSON access-log line per request to a file + W3C tracing at 1% sampling exported over OTLP/gRPC to a receiver on loopback"
  echo "- $ROUNDS rounds; each loads the three in turn: most requests/s with wrk -t1 -c32 -d${DURATION}s (and the agent's CPU time per request over that slice), then a fixed rate with hey -c 10 -q 100 (1,000 requests/s) -z ${DURATION}s; medians; agents on core $AGENT_CPU, load generators, nginx and the OTLP receiver on core $LOAD_CPU (of $(nproc))"
  echo
  echo "| telemetry | requests/s (wrk) | best round | p99 µs (wrk) | agent CPU µs/request | least | p50 µs @1k/s | p99 µs @1k/s |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for m in "${MODES[@]}"; do echo "| $m | ${RPS[$m]} | ${BEST_RPS[$m]} | ${P99[$m]} | ${CPU[$m]} | ${BEST_CPU[$m]} | ${F50[$m]} | ${F99[$m]} |"; done
  echo
  echo "| figure | value | target | |"
  echo "|---|---:|---:|---|"
  echo "| throughput cost of metrics + access log + tracing at 1% (1 − on/off requests/s) | ${cost}% | ≤ 10% | $(verdict "$cost" "<=" 10) |"
  echo "| throughput cost of metrics alone (the default) | ${mcost}% | | |"
  echo "| added agent CPU per request, all on / metrics alone | ${cpu_on}% / ${cpu_metrics}% | | |"
  echo "| best round of each mode (most requests/s; least CPU per request), all on against off | ${best_cost}%; +${best_cpu}% CPU | | |"
  echo
  echo "Every round, requests/s: off ${ALL_RPS[off]}; metrics ${ALL_RPS[metrics]}; on ${ALL_RPS[on]}."
  echo
  echo "Every round, agent CPU µs/request: off ${ALL_CPU[off]}; metrics ${ALL_CPU[metrics]}; on ${ALL_CPU[on]}."
  echo
  echo "The \"on\" agent wrote $lines access-log lines ($(du -h "$work/access.log" | cut -f1)); its /metrics had $series istio_requests_total series."
} > "$report"
cat "$report"
