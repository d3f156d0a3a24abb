#!/usr/bin/env bash
# mTLS benchmark: what the mesh tunnel costs. Two meshed workloads (client netns → server
# netns with nginx), HTTP/1.1 keep-alive through both proxies, in one run:
#   plaintext  PeerAuthentication DISABLE (mesh-wide): the client's proxy connects to the
#              server's pod in plaintext, the server's inbound capture delivers it
#   mtls       the default: the client's proxy sends each request over its pooled TLS 1.3
#              HTTP/2 tunnel to the server's proxy on 15008
# Loads: the most requests/s (wrk, 32 connections) and latency at a fixed 1,000 requests/s
# (hey); and new tunnel handshakes per second against the server's port 15008 (openssl
# s_time -new with a certificate minted by the mesh CA). Interleaved rounds, medians.
# Writes bench/reports/mtls.md.
#
# Usage: sudo bench/mtls.sh [--duration SECONDS] [--rounds N] [--weft PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
bench_args mtls.sh "$@"
WEFT=$(bench_prepare mtls.sh "$WEFT")

work=$(mktemp -d /tmp/weft-benchm.XXXXXX)
chmod 755 "$work"
BR=wbenchm
CLI=wbm-cli
SRV=wbm-srv
SRV_IP=10.237.8.3
pids=()
export WEFT_AGENT_SOCKET=$work/agent.sock
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  ip netns del $CLI 2>/dev/null; ip netns del $SRV 2>/dev/null
  ip link del $BR 2>/dev/null; ip link del wbagentm 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

bench_topology $BR 10.237.8 $CLI $SRV wbmh
pids+=($(bench_nginx "$work" $SRV))
"$WEFT" agent --socket "$WEFT_AGENT_SOCKET" --bridge wbagentm --pod-cidr 10.238.8.0/24 --dns-upstream none \
  --state-dir "$work/state" --log-level warning 2>"$work/agent.log" & pids+=($!)
for _ in $(seq 100); do "$WEFT" get workloads >/dev/null 2>&1 && break; sleep 0.1; done
"$WEFT" attach --netns $SRV --service origin --port 80:8080/http >/dev/null
"$WEFT" attach --netns $CLI --service bench-client >/dev/null
VIP=$("$WEFT" get services -o json | python3 -c 'import json,sys; print([s["vip"] for s in json.load(sys.stdin) if s["key"]["name"]=="origin"][0])')
for _ in $(seq 100); do ip netns exec $CLI curl -s -o /dev/null "http://$VIP/" && break; sleep 0.1; done


# A client certificate from the mesh CA for openssl s_time (identity of the bench client).
openssl ecparam -name prime256v1 -genkey -noout -out "$work/hs.key" 2>/dev/null
openssl req -new -key "$work/hs.key" -subj /O=weft -out "$work/hs.csr" 2>/dev/null
printf 'subjectAltName=URI:spiffe://weft.local/ns/default/sa/bench-client\nextendedKeyUsage=clientAuth\n' > "$work/hs.ext"
openssl x509 -req -in "$work/hs.csr" -CA "$work/state/ca/root-cert.pem" -CAkey "$work/state/ca/root-key.pem" \
  -CAcreateserial -days 1 -extfile "$work/hs.ext" -out "$work/hs.pem" 2>/dev/null

declare -A ALL_RPS ALL_P50 ALL_P99 ALL_F50 ALL_F99
ALL_HS=""
measure() { # mode
  ip netns exec $CLI wrk -t1 -c32 -d2s "http://$VIP/" >/dev/null 2>&1 || true
  local out
  out=$(ip netns exec $CLI wrk -t1 -c32 -d"${DURATION}s" --latency "http://$VIP/")
  ALL_RPS[$1]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
  ALL_P50[$1]+="$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')") "
  ALL_P99[$1]+="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
  out=$(ip netns exec $CLI hey -z "${DURATION}s" -c 10 -q 100 "http://$VIP/")
  ALL_F50[$1]+="$(echo "$out" | awk '/ 50% in / {printf "%.0f", $3 * 1000000}') "
  ALL_F99[$1]+="$(echo "$out" | awk '/ 99% in / {printf "%.0f", $3 * 1000000}') "
  echo "$1: $(echo "${ALL_RPS[$1]}" | awk '{print $NF}') req/s"
}
for round in $(seq "$ROUNDS"); do
  echo "-- round $round of $ROUNDS"
  bench_plaintext_mesh "$WEFT" "$work"
  measure plaintext
  "$WEFT" delete -f "$work/plaintext.yaml" >/dev/null
  measure mtls
  # Full TLS 1.3 handshakes (no resumption) against the server's tunnel port, from the host.
  hs=$(openssl s_time -connect $SRV_IP:15008 -new -time "$DURATION" -cert "$work/hs.pem" -key "$work/hs.key" \
        -CAfile "$work/state/ca/root-cert.pem" 2>/dev/null | awk '/connections in .* real seconds/ {print $1 / $4}' | head -1)
  ALL_HS+="${hs:-0} "
  echo "handshakes/s: ${hs:-?}"
done
"$WEFT" get workloads > "$work/workloads.txt"
# Proof of the two modes: tunnel streams opened by the client, tunnel connections and
# plaintext connections accepted by the server, over the whole run.
TUNNEL=$("$WEFT" get workloads -o json | python3 -c '
import json, sys
w = {x["spec"]["name"]: x["counters"] for x in json.load(sys.stdin)}
print("client tunnel streams opened %d; server tunnel connections %d, plaintext connections %d" % (
    w["wbm-cli"]["tunnelStreamsOut"], w["wbm-srv"]["tunnelConnections"], w["wbm-srv"]["plaintextInbound"]))')

declare -A RPS P50 P99 F50 F99
for m in plaintext mtls; do
  RPS[$m]=$(echo "${ALL_RPS[$m]}" | median); P50[$m]=$(echo "${ALL_P50[$m]}" | median); P99[$m]=$(echo "${ALL_P99[$m]}" | median)
  F50[$m]=$(echo "${ALL_F50[$m]}" | median); F99[$m]=$(echo "${ALL_F99[$m]}" | median)
done
HS=$(echo "$ALL_HS" | median)
cost=$(awk -v a="${RPS[mtls]}" -v b="${RPS[plaintext]}" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }')
report=bench/reports/mtls.md
{
  echo "# mTLS benchmark (bench/mtls.sh)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- two meshed workloads, both proxies in the path (client outbound L7, server inbound), nginx (1 worker) behind; HTTP/1.1 keep-alive"
  echo "- plaintext = PeerAuthentication DISABLE mesh-wide; mtls = the default (TLS 1.3 + HTTP/2 tunnel on 15008, pooled)"
  echo "- most requests/s: wrk -t1 -c32 -d${DURATION}s; fixed rate: hey -c 10 -q 100 (1,000 requests/s); handshakes: openssl s_time -new against 15008"
  echo "- $ROUNDS interleaved rounds, medians; everything shares the same $(nproc) cores"
  echo
  echo "| mode | requests/s (wrk) | p50 µs (wrk) | p99 µs (wrk) | p50 µs @1k/s | p99 µs @1k/s |"
  echo "|---|---:|---:|---:|---:|---:|"
  for m in plaintext mtls; do
    echo "| $m | ${RPS[$m]} | ${P50[$m]} | ${P99[$m]} | ${F50[$m]} | ${F99[$m]} |"
  done
  echo
  echo "| figure | value | target | |"
  echo "|---|---:|---:|---|"
  echo "| throughput cost of mTLS (1 − mtls/plaintext requests/s) | ${cost}% | ≤ 15% | $(verdict "$cost" "<=" 15) |"
  echo "| new tunnel handshakes per second (server side, full TLS 1.3) | $HS | | |"
  echo
  echo "Counters: $TUNNEL"
  echo
  echo "Every round: requests/s plaintext ${ALL_RPS[plaintext]}; mtls ${ALL_RPS[mtls]}; handshakes/s $ALL_HS"
  echo
  echo '```'
  cat "$work/workloads.txt"
  echo '```'
} > "$report"
cat "$report"
