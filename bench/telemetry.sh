#!/usr/bin/env bash
# The cost of telemetry on the L7 path (HTTP/1.1 keep-alive, one proxy hop, the topology of
# bench/l7.sh): the same agent and workloads measured with
#   off      no metrics (--metrics-address none), no access log, no tracing
#   metrics  Istio's standard metrics only (the default)
#   on       metrics + a JSON access-log line per request to a file + tracing at 1% sampling
#            to an OTLP/gRPC receiver (a small Python grpcio server on loopback)
# The agent is restarted between modes on the same state directory (the workloads are
# re-attached from it), modes interleaved per round; medians. Writes
# bench/reports/telemetry.md with the machine.
#
# Usage: sudo bench/telemetry.sh [--duration SECONDS] [--rounds N] [--weft PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
bench_args telemetry.sh "$@"
WEFT=$(bench_prepare telemetry.sh "$WEFT")

work=$(mktemp -d /tmp/weft-bencht.XXXXXX)
chmod 755 "$work"
BR=wbencht
CLI=wbt-cli
SRV=wbt-srv
SRV_IP=10.237.9.3
pids=()
agent=""
export WEFT_AGENT_SOCKET=$work/agent.sock
cleanup() {
  set +e
  [ -n "$agent" ] && kill -TERM "$agent" 2>/dev/null
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  "$WEFT" init --netns $CLI --remove >/dev/null 2>&1
  ip netns del $CLI 2>/dev/null; ip netns del $SRV 2>/dev/null
  ip link del $BR 2>/dev/null; ip link del wbagentt 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

bench_topology $BR 10.237.9 $CLI $SRV wbth
pids+=($(bench_nginx "$work" $SRV))

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
python3 "$work/otlp.py" 2>>"$work/otlp.log" & pids+=($!)

start_agent() { # off|metrics|on
  local flags=(--metrics-address none --admin-address none)
  [ "$1" = metrics ] && flags=(--metrics-address 127.0.0.1:15990 --admin-address none)
  [ "$1" = on ] && flags=(--metrics-address 127.0.0.1:15990 --admin-address none --access-log "$work/access.log"
                          --tracing-collector 127.0.0.1:14317 --trace-sampling 1)
  "$WEFT" agent --socket "$WEFT_AGENT_SOCKET" --bridge wbagentt --pod-cidr 10.238.9.0/24 --dns-upstream none \
    --state-dir "$work/state" --log-level warning "${flags[@]}" 2>>"$work/agent.log" &
  agent=$!
  for _ in $(seq 100); do "$WEFT" get workloads >/dev/null 2>&1 && break; sleep 0.1; done
}
stop_agent() {
  kill -TERM "$agent"; wait "$agent" 2>/dev/null || true; agent=""
}

start_agent off
bench_plaintext_mesh "$WEFT" "$work"
"$WEFT" attach --netns $SRV --service origin --port 80:8080/http >/dev/null
"$WEFT" init --netns $SRV --remove >/dev/null
"$WEFT" attach --netns $CLI --service bench-client >/dev/null
VIP=$("$WEFT" get services -o json | python3 -c 'import json,sys; print([s["vip"] for s in json.load(sys.stdin) if s["key"]["name"]=="origin"][0])')

declare -A ALL_RPS ALL_P99 ALL_F50 ALL_F99
measure() { # mode
  for _ in $(seq 100); do ip netns exec $CLI curl -s -o /dev/null "http://$VIP/" && break; sleep 0.1; done
  ip netns exec $CLI wrk -t1 -c32 -d2s "http://$VIP/" >/dev/null 2>&1 || true
  local out
  out=$(ip netns exec $CLI wrk -t1 -c32 -d"${DURATION}s" --latency "http://$VIP/")
  ALL_RPS[$1]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  ALL_P99[$1]+="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
  out=$(ip netns exec $CLI hey -z "${DURATION}s" -c 10 -q 100 "http://$VIP/")
  ALL_F50[$1]+="$(echo "$out" | awk '/ 50% in / {printf "%.0f", $3 * 1000000}') "
  ALL_F99[$1]+="$(echo "$out" | awk '/ 99% in / {printf "%.0f", $3 * 1000000}') "
  echo "$1: $(echo "${ALL_RPS[$1]}" | awk '{print $NF}') req/s"
}
for round in $(seq "$ROUNDS"); do
  echo "-- round $round of $ROUNDS"
  [ "$round" -gt 1 ] && { stop_agent; start_agent off; }
  measure off
  stop_agent; start_agent metrics
  measure metrics
  stop_agent; start_agent on
  measure on
  [ "$round" -eq "$ROUNDS" ] && curl -s http://127.0.0.1:15990/metrics > "$work/metrics.txt"
done
lines=$(wc -l < "$work/access.log")
series=$(grep -c '^istio_requests_total{' "$work/metrics.txt" || true)

declare -A RPS P99 F50 F99
for m in off metrics on; do
  RPS[$m]=$(echo "${ALL_RPS[$m]}" | median); P99[$m]=$(echo "${ALL_P99[$m]}" | median)
  F50[$m]=$(echo "${ALL_F50[$m]}" | median); F99[$m]=$(echo "${ALL_F99[$m]}" | median)
done
cost=$(awk -v a="${RPS[on]}" -v b="${RPS[off]}" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }')
mcost=$(awk -v a="${RPS[metrics]}" -v b="${RPS[off]}" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }')
report=bench/reports/telemetry.md
{
  echo "# Telemetry cost (bench/telemetry.sh)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- HTTP/1.1 keep-alive through Weft's L7 outbound path (release build) to nginx, one hop, plaintext mesh (PeerAuthentication DISABLE)"
  echo "- off: no metrics, no access log, no tracing; metrics: Istio's standard metrics (the default); on: metrics + a JSON access-log line per request to a file + W3C tracing at 1% sampling exported over OTLP/gRPC to a receiver on loopback"
  echo "- most requests/s: wrk -t1 -c32 -d${DURATION}s; fixed rate: hey -c 10 -q 100 (1,000 requests/s) -z ${DURATION}s"
  echo "- $ROUNDS rounds, modes interleaved (the agent restarted between them on the same state), medians; all on the same $(nproc) cores"
  echo
  echo "| telemetry | requests/s (wrk) | p99 µs (wrk) | p50 µs @1k/s | p99 µs @1k/s |"
  echo "|---|---:|---:|---:|---:|"
  for m in off metrics on; do echo "| $m | ${RPS[$m]} | ${P99[$m]} | ${F50[$m]} | ${F99[$m]} |"; done
  echo
  echo "| figure | value | target | |"
  echo "|---|---:|---:|---|"
  echo "| throughput cost of metrics + access log + tracing at 1% | ${cost}% | ≤ 10% | $(verdict "$cost" "<=" 10) |"
  echo "| throughput cost of metrics alone (the default) | ${mcost}% | | |"
  echo
  echo "Every round: off ${ALL_RPS[off]}; metrics ${ALL_RPS[metrics]}; on ${ALL_RPS[on]}. The last round's agent wrote $lines access-log lines ($(du -h "$work/access.log" | cut -f1)); its /metrics had $series istio_requests_total series."
} > "$report"
cat "$report"
