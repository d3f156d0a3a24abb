#!/usr/bin/env bash
# Config propagation through the control plane: the time from `weft apply` (to the control
# plane's socket) until each of N subscribed agents has the new version and ACKed it, for
# N = 10, 100, 1000. The agents are simulated (weft-control-bench): each is what a real agent
# is on the wire (own node key, join with token + pin, own TLS connection and Subscribe
# stream, ACK per snapshot), without a data path behind it. A fresh `weft control` per N;
# everything on this machine, over 127.0.0.1. Writes bench/reports/propagation.md.
#
# Usage: sudo bench/propagation.sh [--rounds N] [--weft PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
bench_args propagation.sh "$@"
[ "$(id -u)" = 0 ] || { echo "propagation.sh: run as root" >&2; exit 1; }
if [ -z "$WEFT" ]; then
  swift build -c release --product weft >/dev/null
  WEFT=.build/release/weft
fi
SIM=$(dirname "$WEFT")/weft-control-bench
if [ ! -x "$SIM" ]; then
  swift build -c release --product weft-control-bench >/dev/null
  SIM=.build/release/weft-control-bench
fi
ulimit -n "$(ulimit -Hn)"  # 1,000 agents: 1,000 connections on each side

work=$(mktemp -d /tmp/weft-benchp.XXXXXX)
pid=""
cleanup() {
  set +e
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

rows=""
for n in 10 100 1000; do
  [ -n "$pid" ] && { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; }
  port=$((21000 + RANDOM % 4000))
  rm -rf "$work/state"
  "$WEFT" control --listen 127.0.0.1:$port --socket "$work/control.sock" --state-dir "$work/state" --log-level error \
    2>"$work/control-$n.log" & pid=$!
  for _ in $(seq 100); do "$WEFT" get agents --control-socket "$work/control.sock" >/dev/null 2>&1 && break; sleep 0.1; done
  read -r token pin < <("$WEFT" control token create --ttl 1h -o json --control-socket "$work/control.sock" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["token"], d["caPin"])')
  echo "-- $n agents"
  out=$("$SIM" --control 127.0.0.1:$port --socket "$work/control.sock" --token "$token" --pin "$pin" --agents $n --rounds "$ROUNDS")
  echo "$out"
  rows+=$(echo "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("| %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |" % (d["agents"], d["p50ms"], d["p99ms"], d["maxms"],
      d["allAckedMedianMs"], d["allAckedMaxMs"], d["joinSeconds"]))')$'\n'
  if [ "$n" = 1000 ]; then P99=$(echo "$out" | python3 -c 'import json,sys; print("%.1f" % json.load(sys.stdin)["p99ms"])'); fi
done

report=bench/reports/propagation.md
{
  echo "# Config propagation benchmark (bench/propagation.sh)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- one \`weft control\` (release build) per N, fresh state; N simulated agents (weft-control-bench) in one process,"
  echo "  each with its own node certificate, TLS connection and Subscribe stream; all over 127.0.0.1 on the same $(nproc) cores"
  echo "- per round: \`applyConfig\` on the control plane's socket, then the time until each agent received the new"
  echo "  version (and sent its ACK), and until the control plane listed every ACK (polled every 5 ms); $ROUNDS rounds per N"
  echo
  echo "| agents | p50 ms (per agent) | p99 ms | max ms | every ACK at the control plane, median ms | … worst round ms | joining all, s |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  printf "%s" "$rows"
  echo
  echo "| figure | value | target | |"
  echo "|---|---:|---:|---|"
  echo "| p99 propagation at 1,000 agents (ms) | $P99 | < 1000 | $(verdict "$P99" "<=" 1000) |"
} > "$report"
cat "$report"
