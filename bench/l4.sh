#!/usr/bin/env bash
# L4 benchmark: requests/s and p50/p99 latency for a small HTTP response (keep-alive, wrk),
# measured in one run, in one topology, for:
#   direct            wrk (client netns) → nginx (server netns)
#   haproxy-1hop      wrk → [capture rules] → HAProxy (mode tcp, 1 thread, transparent: it
#                     reads SO_ORIGINAL_DST) in the client netns → nginx
#   weft-1hop         wrk → [capture rules] → Weft outbound proxy → nginx
#   haproxy-2hop      as haproxy-1hop, plus inbound capture → HAProxy in the server netns → nginx
#   weft-2hop         wrk → Weft outbound → Weft inbound (both netns attached) → nginx
#   haproxy-explicit  wrk → HAProxy on 127.0.0.1 (no capture rules, no NAT) → nginx; for scale
# Both proxies sit behind the same iptables REDIRECT rules (`weft init`; HAProxy's own
# sockets are excluded by its uid), so the comparison is proxy against proxy.
# Writes bench/reports/l4.md with the machine, the figures and the ratios to HAProxy.
#
# Every mode runs once per round, rounds interleave, and the report gives each figure's
# median over the rounds (this machine's run-to-run noise is larger than the gaps).
#
# Usage: sudo bench/l4.sh [--duration SECONDS] [--connections N] [--rounds N] [--weft PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
bench_args l4.sh "$@"
WEFT=$(bench_prepare l4.sh "$WEFT")

work=$(mktemp -d /tmp/weft-bench.XXXXXX)
chmod 755 "$work"
BR=wbench0
CLI=wbench-cli
SRV=wbench-srv
CLI_IP=10.237.0.2
SRV_IP=10.237.0.3
pids=()
export WEFT_AGENT_SOCKET=$work/agent.sock

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  ip netns del $CLI 2>/dev/null; ip netns del $SRV 2>/dev/null
  ip link del $BR 2>/dev/null; ip link del wbagent0 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# --- topology and origin ------------------------------------------------------------
bench_topology $BR 10.237.0 $CLI $SRV wbh
pids+=($(bench_nginx "$work" $SRV))

# --- HAProxy, TCP mode, one thread (as Weft's one loop thread per workload) ----------
HAPROXY_UID=1337
haproxy_cfg() { # bind target
  cat <<CFG
global
  nbthread 1
  maxconn 4000
  uid $HAPROXY_UID
  gid $HAPROXY_UID
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen l4
  bind $1
  server origin $2
CFG
}
# Transparent: "server 0.0.0.0" forwards to the connection's original destination.
haproxy_cfg 127.0.0.1:15101 0.0.0.0 > "$work/ha-out.cfg"
haproxy_cfg 0.0.0.0:15106 127.0.0.1:8080 > "$work/ha-in.cfg"
haproxy_cfg 127.0.0.1:18080 $SRV_IP:8080 > "$work/ha-explicit.cfg"
ip netns exec $CLI haproxy -db -f "$work/ha-out.cfg" 2>>"$work/haproxy.log" & pids+=($!); HA_OUT=$!
ip netns exec $SRV haproxy -db -f "$work/ha-in.cfg" 2>>"$work/haproxy.log" & pids+=($!); HA_IN=$!
ip netns exec $CLI haproxy -db -f "$work/ha-explicit.cfg" 2>>"$work/haproxy.log" & pids+=($!); HA_EXP=$!
haproxy_capture() { # netns: the same rules as Weft's, pointing at HAProxy's ports
  "$WEFT" init --netns "$1" --outbound-port 15101 --inbound-port 15106 --proxy-uid $HAPROXY_UID >/dev/null
}

# --- the Weft agent (release build) --------------------------------------------------
"$WEFT" agent --socket "$WEFT_AGENT_SOCKET" --bridge wbagent0 --pod-cidr 10.238.0.0/24 --log-level warning \
  2>"$work/agent.log" &
pids+=($!); AGENT=$!
for _ in $(seq 100); do "$WEFT" get workloads >/dev/null 2>&1 && break; sleep 0.1; done
bench_plaintext_mesh "$WEFT" "$work"
for _ in $(seq 100); do ip netns exec $CLI curl -s -o /dev/null "http://$SRV_IP:8080/" && break; sleep 0.1; done

# --- measuring -----------------------------------------------------------------------
declare -A RPS P50 P99 CPU ALL_RPS ALL_P50 ALL_P99 ALL_CPU
cpu_ticks() { # total user+system clock ticks of the given pids and their children (ip netns exec → proxy)
  local t=0 p
  for p in "$@"; do
    for q in $p $(pgrep -P "$p" 2>/dev/null); do
      [ -r /proc/$q/stat ] && t=$((t + $(awk '{print $14 + $15}' /proc/$q/stat)))
    done
  done
  echo $t
}
measure() { # mode url proxy-pids...
  local mode=$1 url=$2; shift 2
  ip netns exec $CLI wrk -t1 -c"$CONNS" -d2s "$url" >/dev/null 2>&1 || true   # warm-up
  local out before after
  before=$(cpu_ticks "$@")
  out=$(ip netns exec $CLI wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url")
  after=$(cpu_ticks "$@")
  set -- "$mode" "$url"
  echo "$out" >> "$work/wrk-$1.txt"
  RPS[$1]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  P50[$1]=$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  P99[$1]=$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  # Proxy CPU per request in µs (clock ticks are 1/100 s here).
  CPU[$1]=$(awk -v d=$((after - before)) -v r="${RPS[$1]}" -v s="$DURATION" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { if (r == 0) print "-"; else printf "%.1f", d / hz * 1e6 / (r * s) }')
  local errors
  errors=$(echo "$out" | awk '/Socket errors|Non-2xx/ {print}')
  ALL_RPS[$1]+="${RPS[$1]} "; ALL_P50[$1]+="${P50[$1]} "; ALL_P99[$1]+="${P99[$1]} "; ALL_CPU[$1]+="${CPU[$1]} "
  printf '%-16s %10s req/s  p50 %8s us  p99 %8s us  proxy cpu %6s us/req %s\n' "$1" "${RPS[$1]}" "${P50[$1]}" "${P99[$1]}" "${CPU[$1]}" "$errors"
}

for round in $(seq "$ROUNDS"); do
  echo "-- round $round of $ROUNDS"
  measure direct "http://$SRV_IP:8080/"
  measure haproxy-explicit "http://127.0.0.1:18080/" $HA_EXP
  haproxy_capture $CLI
  measure haproxy-1hop "http://$SRV_IP:8080/" $HA_OUT
  haproxy_capture $SRV
  measure haproxy-2hop "http://$SRV_IP:8080/" $HA_OUT $HA_IN
  "$WEFT" init --netns $CLI --remove >/dev/null
  "$WEFT" init --netns $SRV --remove >/dev/null
  "$WEFT" attach --netns $CLI --service bench-client >/dev/null
  # The origin is a mesh service whose port is declared /tcp, so both hops take the L4 path
  # (an undeclared port would be detected as HTTP and proxied at L7: that is bench/l7.sh).
  # For one hop its own capture rules are removed; for two they are put back.
  "$WEFT" attach --netns $SRV --service bench-origin --port 8080/tcp >/dev/null
  "$WEFT" init --netns $SRV --remove >/dev/null
  measure weft-1hop "http://$SRV_IP:8080/" $AGENT
  "$WEFT" init --netns $SRV >/dev/null
  measure weft-2hop "http://$SRV_IP:8080/" $AGENT
  "$WEFT" get workloads > "$work/workloads.txt"
  "$WEFT" detach --netns $SRV >/dev/null
  "$WEFT" detach --netns $CLI >/dev/null
done
for m in direct haproxy-explicit haproxy-1hop weft-1hop haproxy-2hop weft-2hop; do
  RPS[$m]=$(echo "${ALL_RPS[$m]}" | median); P50[$m]=$(echo "${ALL_P50[$m]}" | median)
  P99[$m]=$(echo "${ALL_P99[$m]}" | median); CPU[$m]=$(echo "${ALL_CPU[$m]}" | median)
done

# --- report ----------------------------------------------------------------------------
rps1=$(ratio "${RPS[weft-1hop]}" "${RPS[haproxy-1hop]}")
p99_1=$(ratio "${P99[weft-1hop]}" "${P99[haproxy-1hop]}")
rps2=$(ratio "${RPS[weft-2hop]}" "${RPS[haproxy-2hop]}")
p99_2=$(ratio "${P99[weft-2hop]}" "${P99[haproxy-2hop]}")
report=bench/reports/l4.md
{
  echo "# L4 benchmark (bench/l4.sh)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- load: wrk -t1 -c$CONNS -d${DURATION}s --latency (keep-alive, after a 2 s warm-up), 3-byte body from nginx (1 worker)"
  echo "- $ROUNDS interleaved rounds; every figure below is the median of its rounds (all rounds are listed at the end)"
  echo "- peers: HAProxy $(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}') mode tcp nbthread 1, transparent behind the same capture rules as Weft (\`weft init --proxy-uid\`); Weft release build, one loop thread per workload"
  echo "- everything shares the same $(nproc) cores: wrk, nginx and the proxies compete for CPU, as on a real node"
  echo
  echo "| mode | requests/s | p50 (µs) | p99 (µs) | proxy CPU per request (µs) |"
  echo "|---|---:|---:|---:|---:|"
  for m in direct haproxy-explicit haproxy-1hop weft-1hop haproxy-2hop weft-2hop; do
    echo "| $m | ${RPS[$m]} | ${P50[$m]} | ${P99[$m]} | ${CPU[$m]:--} |"
  done
  echo
  echo "| ratio (Weft / HAProxy, same hops) | value | target | |"
  echo "|---|---:|---:|---|"
  echo "| 1 hop requests/s | $rps1 | ≥ 0.90 | $(verdict "$rps1" ">=" 0.9) |"
  echo "| 1 hop p99 | $p99_1 | ≤ 1.20 | $(verdict "$p99_1" "<=" 1.2) |"
  echo "| 2 hops requests/s | $rps2 | ≥ 0.90 | $(verdict "$rps2" ">=" 0.9) |"
  echo "| 2 hops p99 | $p99_2 | ≤ 1.20 | $(verdict "$p99_2" "<=" 1.2) |"
  echo
  echo "haproxy-explicit is HAProxy as a plain forwarder on 127.0.0.1 (no REDIRECT, no NAT): it shows what the"
  echo "capture path itself costs, which both transparent proxies pay."
  echo
  echo "Every round (requests/s):"
  echo
  for m in direct haproxy-explicit haproxy-1hop weft-1hop haproxy-2hop weft-2hop; do echo "- $m: ${ALL_RPS[$m]}"; done
  echo
  echo "Weft's counters after the 2-hop run (proof the traffic went through the proxies):"
  echo
  echo '```'
  cat "$work/workloads.txt"
  echo '```'
} > "$report"
cat "$report"
