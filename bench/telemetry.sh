#!/usr/bin/env bash
# The cost of telemetry on the L7 path (HTTP/1.1 keep-alive, one proxy hop, the topology of
# bench/l7.sh). Three agents run side by side, each with its own client and nginx namespaces,
# identical but for telemetry:
#   off      no metrics (--metrics-address none), no access log, no tracing
#   metrics  Istio's standard metrics only (the default)
#   on       metrics + a JSON access-log line per request to a file + tracing at 1% sampling
#            to an OTLP/gRPC receiver (a small Python grpcio server on loopback)
# The agents run on the first core, everything else (wrk, hey, nginx, the receiver) on the
# second. The run is --sessions sessions (5), each with fresh agents, namespaces and nginx
# (identical agent processes differ by up to a point and a half in CPU per request for as
# long as they live, so one set of processes is not enough), of --rounds rounds (6) each:
#   together  every round: the three loaded at once for --duration seconds, sharing the
#             agents' core (each agent is its own scheduling group; the loads start in an
#             order that turns each round): the agents' CPU time per request and their
#             requests are compared within the slice, so the machine's drift (tens of percent
#             over a minute here) hits all three alike and cancels out of the ratios. The
#             agent is CPU-bound, so its requests/s is 1 / CPU per request: the throughput
#             cost is 1 − CPU(off) / CPU(on), per round, median over all rounds. The headline.
#   alone     in two rounds of each session: each loaded on its own in turn (the order
#             turning each time): most requests/s with wrk, then latency at a fixed 1,000
#             requests/s with hey; medians.
# --same MODE runs all three agents as MODE (an A/A calibration: how far apart identical
# agents come out) and writes bench/reports/telemetry-calibration.md instead.
# Writes bench/reports/telemetry.md with the machine.
#
# Usage: sudo bench/telemetry.sh [--duration SECONDS (3)] [--rounds N (6)] [--sessions N (5)] [--weft PATH] [--same off|metrics|on]
set -Eeuo pipefail
trap 'echo "telemetry.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
SAME=""
SESSIONS=5
alone=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --same) SAME=${2:-}; shift 2 || { echo "telemetry.sh: --same needs off, metrics or on" >&2; exit 2; } ;;
    --sessions) SESSIONS=${2:-}; shift 2 || { echo "telemetry.sh: --sessions needs a number" >&2; exit 2; } ;;
    *) args+=("$1"); shift ;;
  esac
done
case "$SAME" in ""|off|metrics|on) ;; *) echo "telemetry.sh: --same $SAME: use off, metrics or on" >&2; exit 2 ;; esac
case "$SESSIONS" in ""|*[!0-9]*|0) echo "telemetry.sh: --sessions $SESSIONS: use a whole number of at least 1" >&2; exit 2 ;; esac
BENCH_DEFAULT_DURATION=3 BENCH_DEFAULT_ROUNDS=6 bench_args telemetry.sh "${args[@]}"
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
declare -A AGENT NGINX VIP
teardown_network() {
  local i
  # Each may be gone already (an agent removes its own bridge when it stops): not an error,
  # and under set -e it must not end the run.
  for i in 1 2 3; do
    ip netns del wbt$i-cli 2>/dev/null || true; ip netns del wbt$i-srv 2>/dev/null || true
    ip link del wbencht$i 2>/dev/null || true; ip link del wbagentt$i 2>/dev/null || true
  done
  return 0
}
cleanup() {
  trap - ERR
  set +e
  for p in "${AGENT[@]}" "${NGINX[@]}" "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  teardown_network
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

# One session: the three agents (fresh processes, fresh namespaces, nginx) set up, measured
# for ROUNDS rounds, and torn down. Identical agents differ by up to a point and a half in CPU
# per request for as long as they live (how their memory happens to be laid out: the
# calibration report), so the headline comes from several sets of processes, not one.
start_session() { # session
  local i=0 m config sock
  for m in "${MODES[@]}"; do
    i=$((i + 1))
    config=${SAME:-$m}
    flags=(--metrics-address none --admin-address none)
    [ "$config" = metrics ] && flags=(--metrics-address 127.0.0.1:1599$i --admin-address none)
    [ "$config" = on ] && flags=(--metrics-address 127.0.0.1:1599$i --admin-address none --access-log "$work/access-$m.log"
                                --tracing-collector 127.0.0.1:14317 --trace-sampling 1)
    bench_topology wbencht$i 10.237.1$i wbt$i-cli wbt$i-srv wbt${i}h
    NGINX[$m]=$(bench_nginx "$work/$m" wbt$i-srv)
    taskset -pc "$LOAD_CPU" "${NGINX[$m]}" >/dev/null
    sock=$work/$m-$1.sock
    # setsid: each agent its own session, so the scheduler's autogroups share the core between
    # the agents (not between their threads) when they are loaded together. SCHED_BATCH: an
    # agent woken by its traffic does not preempt the one running, so each works through its
    # batch as when alone (with preemption they handed the core back and forth per packet and
    # spent ~1.5x the CPU per request together).
    taskset -c "$AGENT_CPU" setsid chrt -b 0 "$WEFT" agent --socket "$sock" --bridge wbagentt$i --pod-cidr 10.238.1$i.0/24 --dns-upstream none --egress-queue none \
      --state-dir "$work/$m-state-$1" --log-level warning "${flags[@]}" 2>>"$work/agent-$m.log" &
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
}
stop_session() {
  local m
  for m in "${MODES[@]}"; do
    kill -TERM "${AGENT[$m]}" "${NGINX[$m]}" 2>/dev/null || true
    wait "${AGENT[$m]}" "${NGINX[$m]}" 2>/dev/null || true
  done
  AGENT=(); NGINX=()
  teardown_network
}

# CPU time of every thread of a process, in nanoseconds (the scheduler's own accounting).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { printf "%.0f", s }'; }
declare -A ALL_RPS ALL_P99 ALL_CPU ALL_F50 ALL_F99
measure() { # mode index
  local out t0 t1 n
  t0=$(cpu_ns "${AGENT[$1]}")
  out=$(ip netns exec wbt$2-cli taskset -c "$LOAD_CPU" wrk -t1 -c32 -d"${DURATION}s" --latency "http://${VIP[$1]}/")
  t1=$(cpu_ns "${AGENT[$1]}")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  ALL_RPS[$1]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  ALL_P99[$1]+="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
  ALL_CPU[$1]+="$(awk -v d=$((t1 - t0)) -v n="$n" 'BEGIN { printf "%.1f", d / 1000 / n }') "
  out=$(ip netns exec wbt$2-cli taskset -c "$LOAD_CPU" hey -z "${DURATION}s" -c 10 -q 100 "http://${VIP[$1]}/")
  ALL_F50[$1]+="$(echo "$out" | awk '/ 50% in / {printf "%.0f", $3 * 1000000}') "
  ALL_F99[$1]+="$(echo "$out" | awk '/ 99% in / {printf "%.0f", $3 * 1000000}') "
}
# All three loaded at once for a slice, sharing the agents' core: at each moment they run on
# the same machine, so its drift cancels out of the per-round ratios (the sequential slices
# above swing by tens of percent between identical agents on this machine).
declare -A ALL_TOGETHER ALL_TOGETHER_CPU
measure_together() { # round
  local m i k t0 t1 n
  declare -A T0 OUT
  for i in 1 2 3; do m=${MODES[$((i - 1))]}; T0[$m]=$(cpu_ns "${AGENT[$m]}"); done
  # The loads start in a turning order too (a few milliseconds apart), so no agent always
  # gets its load first.
  for k in 0 1 2; do
    i=$(( ($1 + k) % 3 + 1 ))
    m=${MODES[$((i - 1))]}
    ip netns exec wbt$i-cli taskset -c "$LOAD_CPU" wrk -t1 -c32 -d"${DURATION}s" "http://${VIP[$m]}/" > "$work/together-$m.txt" &
    OUT[$m]=$!
  done
  for m in "${MODES[@]}"; do wait "${OUT[$m]}"; done
  for m in "${MODES[@]}"; do
    t1=$(cpu_ns "${AGENT[$m]}")
    n=$(awk '/requests in/ {print $1}' "$work/together-$m.txt")
    ALL_TOGETHER[$m]+="$n "
    ALL_TOGETHER_CPU[$m]+="$(awk -v d=$((t1 - T0[$m])) -v n="$n" 'BEGIN { printf "%.2f", d / 1000 / n }') "
  done
}
declare -a SESSION_COST
round=0
for session in $(seq "$SESSIONS"); do
  start_session "$session"
  for r in $(seq "$ROUNDS"); do
    round=$((round + 1))
    # Alone (18 s a round) in two rounds of each session; the order turns each time (off
    # metrics on, metrics on off, on off metrics, ...), so no mode always runs first or last.
    if [ "$r" = 1 ] || [ "$r" = $((ROUNDS / 2 + 1)) ]; then
      alone=$((alone + 1))
      for k in 0 1 2; do
        i=$(( (alone + k) % 3 + 1 ))
        measure "${MODES[$((i - 1))]}" $i
      done
      echo "session $session round $r, alone: $(for m in "${MODES[@]}"; do printf '%s %s req/s %s us/req; ' "$m" "$(echo "${ALL_RPS[$m]}" | awk '{print $NF}')" "$(echo "${ALL_CPU[$m]}" | awk '{print $NF}')"; done)"
    fi
    measure_together "$round"
    echo "session $session round $r, together: $(for m in "${MODES[@]}"; do printf '%s %s requests %s us/req; ' "$m" "$(echo "${ALL_TOGETHER[$m]}" | awk '{print $NF}')" "$(echo "${ALL_TOGETHER_CPU[$m]}" | awk '{print $NF}')"; done)"
  done
  if [ "$session" = "$SESSIONS" ]; then
    series=$( { curl -s "http://127.0.0.1:15993/metrics" || true; } | grep -c '^istio_requests_total{' || true)
  fi
  stop_session
done
lines=$( { cat "$work"/access-*.log 2>/dev/null || true; } | wc -l)
logsize=$( { du -ch "$work"/access-*.log 2>/dev/null || true; } | tail -1 | cut -f1)

# Per round, within the together slice: 1 − CPU(off)/CPU(mode) (the throughput cost of a
# CPU-bound agent) and 1 − requests(mode)/requests(off).
paired_cpu() { # mode
  local k; local -a a b
  read -ra a <<< "${ALL_TOGETHER_CPU[$1]}"; read -ra b <<< "${ALL_TOGETHER_CPU[off]}"
  for k in "${!a[@]}"; do awk -v x="${a[$k]}" -v y="${b[$k]}" 'BEGIN { printf "%.1f ", (1 - y / x) * 100 }'; done
}
paired_requests() { # mode
  local k; local -a a b
  read -ra a <<< "${ALL_TOGETHER[$1]}"; read -ra b <<< "${ALL_TOGETHER[off]}"
  for k in "${!a[@]}"; do awk -v x="${a[$k]}" -v y="${b[$k]}" 'BEGIN { printf "%.1f ", (1 - x / y) * 100 }'; done
}
declare -A RPS P99 CPU F50 F99 TCPU TREQ PCPU PREQ
for m in "${MODES[@]}"; do
  RPS[$m]=$(echo "${ALL_RPS[$m]}" | median); P99[$m]=$(echo "${ALL_P99[$m]}" | median); CPU[$m]=$(echo "${ALL_CPU[$m]}" | median)
  F50[$m]=$(echo "${ALL_F50[$m]}" | median); F99[$m]=$(echo "${ALL_F99[$m]}" | median)
  TCPU[$m]=$(echo "${ALL_TOGETHER_CPU[$m]}" | median); TREQ[$m]=$(echo "${ALL_TOGETHER[$m]}" | median)
  PCPU[$m]=$(paired_cpu "$m"); PREQ[$m]=$(paired_requests "$m")
done
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }'; }
cost=$(echo "${PCPU[on]}" | median); mcost=$(echo "${PCPU[metrics]}" | median)
# The same per set of processes (session): how far one set's agents alone would have taken it.
per_session() { # mode
  local k; local -a a
  read -ra a <<< "${PCPU[$1]}"
  for k in $(seq 0 $((SESSIONS - 1))); do printf '%s ' "$(echo "${a[@]:$((k * ROUNDS)):$ROUNDS}" | median)"; done
}
req_cost=$(echo "${PREQ[on]}" | median); req_mcost=$(echo "${PREQ[metrics]}" | median)
alone_cost=$(pct "${RPS[on]}" "${RPS[off]}"); alone_mcost=$(pct "${RPS[metrics]}" "${RPS[off]}")
if [ -n "$SAME" ]; then
  report=bench/reports/telemetry-calibration.md
  title="Telemetry bench calibration: three identical agents (bench/telemetry.sh --same $SAME)"
  names="agents 1, 2 and 3 (named off, metrics and on below) are all configured as \"$SAME\": every difference between them is the bench's own error"
else
  report=bench/reports/telemetry.md
  title="Telemetry cost (bench/telemetry.sh)"
  names="off: no metrics, no access log, no tracing; metrics: Istio's standard metrics (the default); on: metrics + a JSON access-log line per request to a file + W3C tracing at 1% sampling exported over OTLP/gRPC to a receiver on loopback"
fi
{
  echo "# $title"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- HTTP/1.1 keep-alive through Weft's L7 outbound path (release build) to nginx, one hop, plaintext mesh (PeerAuthentication DISABLE)"
  echo "- three agents side by side, identical but for telemetry — $names"
  echo "- agents on core $AGENT_CPU (each its own scheduling group, SCHED_BATCH), wrk, hey, nginx and the OTLP receiver on core $LOAD_CPU (of $(nproc)); $SESSIONS sessions (each with fresh agents, namespaces and nginx) of $ROUNDS rounds of ${DURATION} s slices"
  echo "- **together**: per round, the three loaded at once (wrk -t1 -c32 each, started in an order that turns each round) sharing core $AGENT_CPU; an agent's CPU time per request (all its threads, /proc/PID/task/*/schedstat) and its requests are compared with off's in the same slice, so the machine's drift cancels; the agent is CPU-bound, so its throughput is 1 / CPU per request and the throughput cost is 1 − CPU(off)/CPU(mode); medians of the per-round figures"
  echo "- **alone**: in two rounds of each session, each loaded on its own in turn (the order turning each time): most requests/s with wrk -t1 -c32, then a fixed 1,000 requests/s with hey -c 10 -q 100 for latency; medians (this machine's speed drifts by tens of percent between slices: see the calibration report)"
  echo
  echo "| figure | value | target | |"
  echo "|---|---:|---:|---|"
  echo "| **throughput cost of metrics + access log + tracing at 1%** (together: 1 − CPU(off)/CPU(on) per request, median of rounds) | ${cost}% | ≤ 10% | $(verdict "$cost" "<=" 10) |"
  echo "| throughput cost of metrics alone, the default (same) | ${mcost}% | | |"
  echo "| fewer requests served than off in the same slice: all on / metrics alone (median of rounds) | ${req_cost}% / ${req_mcost}% | | |"
  echo "| requests/s alone (1 − on/off, medians): all on / metrics alone | ${alone_cost}% / ${alone_mcost}% | | |"
  echo
  echo "| telemetry | together: CPU µs/request | together: requests per slice | alone: requests/s (wrk) | alone: p99 µs (wrk) | alone: CPU µs/request | p50 µs @1k/s | p99 µs @1k/s |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for m in "${MODES[@]}"; do echo "| $m | ${TCPU[$m]} | ${TREQ[$m]} | ${RPS[$m]} | ${P99[$m]} | ${CPU[$m]} | ${F50[$m]} | ${F99[$m]} |"; done
  echo
  echo "Every round, together, throughput cost against off from CPU per request (%): on ${PCPU[on]}; metrics ${PCPU[metrics]}."
  echo
  echo "Per session (one set of agent processes), median of its rounds (%): on $(per_session on); metrics $(per_session metrics)."
  echo
  echo "Every round, together, CPU µs/request: off ${ALL_TOGETHER_CPU[off]}; metrics ${ALL_TOGETHER_CPU[metrics]}; on ${ALL_TOGETHER_CPU[on]}."
  echo
  echo "Every round, together, requests: off ${ALL_TOGETHER[off]}; metrics ${ALL_TOGETHER[metrics]}; on ${ALL_TOGETHER[on]}."
  echo
  echo "Every alone round, requests/s: off ${ALL_RPS[off]}; metrics ${ALL_RPS[metrics]}; on ${ALL_RPS[on]}."
  echo
  echo "Every alone round, agent CPU µs/request: off ${ALL_CPU[off]}; metrics ${ALL_CPU[metrics]}; on ${ALL_CPU[on]}."
  echo
  if [ -z "$SAME" ]; then
    echo "The \"on\" agent wrote $lines access-log lines ($logsize); its /metrics had $series istio_requests_total series."
  fi
} > "$report"
cat "$report"
