#!/usr/bin/env bash
# Retry amplification: a chain of five meshed services (hop1 → … → hop5 → leaf), each
# route configured with retries (attempts: 2 → 3 tries per hop, retryOn 5xx), in front of a
# leaf that fails every request. Counts the requests that reach the leaf per client request:
#   naive    weft agent --no-retry-budget: every hop retries every failure; the client's
#            own proxy retries hop1 too, so six retrying levels: 3^6 = 729
#   budget   the defaults: per-service retry budget (20% + 3/s over 10 s) and node-local
#            suppression (a hop does not retry an endpoint whose own retries are spent)
# Target (issue 4): ≤ 1.5 with budgets. Writes bench/reports/retries.md.
#
# Usage: sudo bench/retries.sh [--requests N] [--weft PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export PATH="/opt/swift/usr/bin:$PATH"
REQUESTS=300
NAIVE_REQUESTS=3
WEFT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) REQUESTS=$2; shift 2 ;;
    --weft) WEFT=$2; shift 2 ;;
    *) echo "retries.sh: unknown argument $1 (use --requests, --weft)" >&2; exit 2 ;;
  esac
done
WEFT=$(bench_prepare retries.sh "$WEFT")

work=$(mktemp -d /tmp/weft-bench-retries.XXXXXX)
chmod 755 "$work"
export WEFT_AGENT_SOCKET=$work/agent.sock
pids=()
agent=""
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  [ -n "$agent" ] && kill -TERM "$agent" 2>/dev/null
  wait 2>/dev/null
  for ns in $(ip netns list | awk '/^wbr-/ {print $1}'); do ip netns del "$ns"; done
  ip link del wbretry0 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

cat > "$work/hop.py" <<'PY'
import sys, http.server, urllib.request, urllib.error, threading
port, upstream = int(sys.argv[1]), sys.argv[2]
count = 0; lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        global count
        if upstream == "-":  # the leaf
            if self.path == "/count": return self.reply(200, str(count).encode())
            with lock: count += 1
            return self.reply(503, b"leaf down")
        try:
            with urllib.request.urlopen("http://%s/" % upstream, timeout=60) as r: code, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            code, body = e.code, e.read()
        self.reply(code, body)
    def reply(self, code, body):
        self.send_response(code); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
PY
cat > "$work/client.py" <<'PY'
import sys, urllib.request, urllib.error
n = int(sys.argv[1]); failed = 0
for _ in range(n):
    try: urllib.request.urlopen("http://hop1/", timeout=300).read()
    except urllib.error.HTTPError: failed += 1
print(failed)
PY
{
  echo "apiVersion: networking.istio.io/v1"
  for s in hop1 hop2 hop3 hop4 hop5 leaf; do
    cat <<YAML
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: $s}
spec:
  hosts: [$s]
  http:
  - route: [{destination: {host: $s}}]
    retries: {attempts: 2, retryOn: 5xx}
YAML
  done
} | sed 1d > "$work/retries.yaml"

run_chain() { # mode requests agent-flags...
  local mode=$1 n=$2; shift 2
  "$WEFT" agent --socket "$WEFT_AGENT_SOCKET" --bridge wbretry0 --pod-cidr 10.238.11.0/24 --dns-upstream none \
    --state-dir "$work/state-$mode" --log-level warning "$@" 2>"$work/agent-$mode.log" &
  agent=$!
  for _ in $(seq 100); do "$WEFT" get workloads >/dev/null 2>&1 && break; sleep 0.1; done
  "$WEFT" apply -f "$work/retries.yaml" >/dev/null
  local next=leaf
  for s in leaf hop5 hop4 hop3 hop2 hop1; do
    local up=$next
    [ "$s" = leaf ] && up=-
    "$WEFT" run --name "wbr-$s" --service "$s" --port 80:8000/http -- /usr/bin/python3 "$work/hop.py" 8000 "$up" \
      >/dev/null 2>&1 & pids+=($!)
    next=$s
  done
  for s in leaf hop5 hop4 hop3 hop2 hop1; do
    for _ in $(seq 100); do ip netns exec "wbr-$s" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8000' 2>/dev/null && break; sleep 0.1; done
  done
  local started=$SECONDS
  local failed
  failed=$("$WEFT" run --name wbr-client --service client -- /usr/bin/python3 "$work/client.py" "$n")
  local leaf
  leaf=$("$WEFT" run --name wbr-count --service client -- curl -sS -m 10 http://leaf/count)
  echo "$mode $n $failed $leaf $((SECONDS - started))" >> "$work/results.txt"
  echo "$mode: $n client requests ($failed failed) → $leaf leaf requests in $((SECONDS - started)) s"
  "$WEFT" get workloads -o json > "$work/workloads-$mode.json"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
  kill -TERM "$agent"; wait "$agent" 2>/dev/null || true; agent=""
}
run_chain naive "$NAIVE_REQUESTS" --no-retry-budget
run_chain budget "$REQUESTS"

read -r _ nn _ nl nt < <(grep '^naive' "$work/results.txt")
read -r _ bn _ bl bt < <(grep '^budget' "$work/results.txt")
naive=$(awk -v a="$nl" -v b="$nn" 'BEGIN { printf "%.2f", a / b }')
budget=$(awk -v a="$bl" -v b="$bn" 'BEGIN { printf "%.2f", a / b }')
report=bench/reports/retries.md
{
  echo "# Retry amplification (bench/retries.sh)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- machine: $(bench_machine)"
  echo "- chain: client → hop1 → hop2 → hop3 → hop4 → hop5 → leaf, six meshed python services on one agent;"
  echo "  every route: \`retries: {attempts: 2, retryOn: 5xx}\` (3 tries per hop); the leaf answers 503 to everything"
  echo
  echo "| mode | client requests | leaf requests | leaf requests per client request | target | | time |"
  echo "|---|---:|---:|---:|---:|---|---:|"
  echo "| naive (\`--no-retry-budget\`) | $nn | $nl | $naive | (3^6 = 729: the client's proxy and hop1–hop5 each try 3 times) | | $nt s |"
  echo "| budget (defaults) | $bn | $bl | $budget | ≤ 1.50 | $(verdict "$budget" "<=" 1.5) | $bt s |"
  echo
  echo "Naive retries multiply at every hop. With the defaults only hop5 retries the leaf, within its"
  echo "budget (20% of its requests + 3/s over 10 s); hop1–hop4 see 503s from endpoints whose own retries"
  echo "are spent and do not retry them (node-local: every hop's proxy is in this agent)."
} > "$report"
cat "$report"
