#!/usr/bin/env bash
# Time to eject a failing replica: three meshed replicas behind one service with
# outlierDetection {consecutive5xxErrors: 5}; a client sends a steady stream of requests; at a
# known moment one replica starts answering 500 to everything. Reports the time from that
# moment to the last error the client saw (the replica is out from then on), and how many
# requests failed. Writes bench/reports/outlier.md.
#
# Usage: sudo bench/outlier.sh [--rate N] [--weft PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
RATE=200
WEFT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --weft) WEFT=$2; shift 2 ;;
    *) echo "outlier.sh: unknown argument $1 (use --rate, --weft)" >&2; exit 2 ;;
  esac
done
WEFT=$(bench_prepare outlier.sh "$WEFT")

work=$(mktemp -d /tmp/weft-bench-outlier.XXXXXX)
chmod 755 "$work"
export WEFT_AGENT_SOCKET=$work/agent.sock
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  for ns in $(ip netns list | awk '/^wbo-/ {print $1}'); do ip netns del "$ns"; done
  ip link del wboutlier0 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

cat > "$work/app.py" <<'PY'
import sys, http.server
failing = False
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        global failing
        if self.path == "/fail": failing = True
        code = 500 if failing and self.path != "/fail" else 200
        self.send_response(code); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 3000), H).serve_forever()
PY
cat > "$work/client.py" <<'PY'
import sys, time, http.client, os
rate, seconds, flag = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("web", 80, timeout=10)
errors = []; sent = 0; start = time.monotonic(); t_fail = None
while time.monotonic() - start < seconds:
    if t_fail is None and os.path.exists(flag): t_fail = float(open(flag).read())
    conn.request("GET", "/"); r = conn.getresponse(); r.read(); sent += 1
    if r.status != 200: errors.append(time.time())
    time.sleep(max(0, start + sent / rate - time.monotonic()))
print(sent, len(errors), (max(errors) - t_fail) * 1000 if errors and t_fail else -1)
PY
cat > "$work/dr.yaml" <<'YAML'
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 5s, baseEjectionTime: 60s, maxEjectionPercent: 50}
YAML

"$WEFT" agent --socket "$WEFT_AGENT_SOCKET" --bridge wboutlier0 --pod-cidr 10.238.13.0/24 --dns-upstream none \
  --state-dir "$work/state" --log-level warning 2>"$work/agent.log" & pids+=($!)
for _ in $(seq 100); do "$WEFT" get workloads >/dev/null 2>&1 && break; sleep 0.1; done
"$WEFT" apply -f "$work/dr.yaml" >/dev/null
for r in a b c; do
  "$WEFT" run --name "wbo-$r" --service web --port 80:3000/http -- /usr/bin/python3 "$work/app.py" >/dev/null 2>&1 & pids+=($!)
done
for r in a b c; do
  for _ in $(seq 100); do ip netns exec "wbo-$r" bash -c 'exec 3<>/dev/tcp/127.0.0.1/3000' 2>/dev/null && break; sleep 0.1; done
done
C_IP=$("$WEFT" get workloads -o json | python3 -c 'import json,sys; print([w["spec"]["podIP"] for w in json.load(sys.stdin) if w["spec"]["name"]=="wbo-c"][0])')
flag=$work/failing-since
( sleep 2; date +%s.%N > "$flag.tmp"; curl -s -o /dev/null "http://$C_IP:3000/fail"; mv "$flag.tmp" "$flag"; chmod 644 "$flag" ) &
read -r sent errors ms < <("$WEFT" run --name wbo-client --service client -- /usr/bin/python3 "$work/client.py" "$RATE" 6 "$flag")
ejected=$("$WEFT" get services -o json | python3 -c 'import json,sys; print(",".join(next(s["ejected"] for s in json.load(sys.stdin) if s["key"]["name"]=="web")) or "none")')
report=bench/reports/outlier.md
{
  echo "# Ejection of a failing replica (bench/outlier.sh)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- three meshed python replicas of one service, LEAST_REQUEST; outlierDetection {consecutive5xxErrors: 5};"
  echo "  one client at $RATE requests/s for 6 s, one keep-alive connection; replica c starts answering 500 at t = 2 s"
  echo
  echo "| figure | value |"
  echo "|---|---:|"
  echo "| requests sent | $sent |"
  echo "| requests that failed (client-visible) | $errors |"
  echo "| from replica failing to its last client-visible error | $(printf '%.0f' "$ms") ms |"
  echo "| ejected at the end | $ejected |"
  echo
  echo "Ejection is immediate on the fifth consecutive 5xx (no interval wait): the time is that of the"
  echo "failing replica receiving five requests, which LEAST_REQUEST spreads over the three replicas."
} > "$report"
cat "$report"
