# Shared by bench/l4.sh and bench/l7.sh (sourced, not run): the two-namespace topology, the
# nginx origin, and the arithmetic of the reports.

# bench_prepare SCRIPT WEFT: root check, benchmark peers installed, and the Weft binary to
# measure (the given one, else a fresh release build). Prints the binary's path.
bench_prepare() {
  [ "$(id -u)" = 0 ] || { echo "$1: run as root" >&2; exit 1; }
  scripts/setup-deps --bench >/dev/null
  if [ -n "$2" ]; then echo "$2"; return; fi
  swift build -c release --product weft >/dev/null
  echo .build/release/weft
}

# bench_args SCRIPT ARGS...: the flags every bench script takes; sets DURATION (10, or
# $BENCH_DEFAULT_DURATION), ROUNDS (3, or $BENCH_DEFAULT_ROUNDS),
# CONNS (32, wrk connections where a script uses them) and WEFT (empty: build a release).
bench_args() {
  local name=$1; shift
  DURATION=${BENCH_DEFAULT_DURATION:-10}; ROUNDS=${BENCH_DEFAULT_ROUNDS:-3}; CONNS=32; WEFT=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --duration) DURATION=$2; shift 2 ;;
      --rounds) ROUNDS=$2; shift 2 ;;
      --connections) CONNS=$2; shift 2 ;;
      --weft) WEFT=$2; shift 2 ;;
      *) echo "$name: unknown argument $1 (use --duration, --rounds, --connections, --weft)" >&2; exit 2 ;;
    esac
  done
}

# bench_plaintext_mesh WEFT WORKDIR: PeerAuthentication DISABLE mesh-wide, so meshed workloads
# talk in plaintext (the L4/L7 comparisons with HAProxy are proxy against proxy; the cost of
# the mTLS tunnel is bench/mtls.sh's subject).
bench_plaintext_mesh() {
  cat > "$2/plaintext.yaml" <<YAML
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: bench-plaintext, namespace: weft-system}
spec:
  mtls: {mode: DISABLE}
YAML
  "$1" apply -f "$2/plaintext.yaml" >/dev/null
}

# bench_topology BRIDGE PREFIX CLIENT_NS SERVER_NS VETH_PREFIX
# Two namespaces on a bridge at PREFIX.1, client PREFIX.2, server PREFIX.3, default route
# via the bridge.
bench_topology() {
  local br=$1 prefix=$2 cli=$3 srv=$4 veth=$5 n=0 pair ns ip
  # The last session's teardown may still be finishing in the kernel (veth and bridge removal
  # is asynchronous): wait, up to 5 s, until its names are free rather than fail with
  # "File exists".
  for _ in $(seq 50); do
    ip link show "$br" >/dev/null 2>&1 || ip link show "${veth}1" >/dev/null 2>&1 || [ -e "/run/netns/$cli" ] || [ -e "/run/netns/$srv" ] || break
    sleep 0.1
  done
  ip link add "$br" type bridge && ip addr add "$prefix.1/24" dev "$br" && ip link set "$br" up
  for pair in "$cli:$prefix.2" "$srv:$prefix.3"; do
    ns=${pair%%:*}; ip=${pair##*:}; n=$((n + 1))
    ip netns add "$ns"
    ip link add "$veth$n" type veth peer name eth0 netns "$ns"
    ip link set "$veth$n" master "$br" up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "$prefix.1"
  done
}

# bench_nginx WORKDIR NETNS: nginx (1 worker, no access log) answering 200 "ok" on :8080.
# Prints its pid.
bench_nginx() {
  local work=$1 ns=$2
  mkdir -p "$work/nginx"
  cat > "$work/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  keepalive_requests 1000000;
  server { listen 8080; location / { return 200 "ok\n"; } }
}
CONF
  ip netns exec "$ns" nginx -c "$work/nginx.conf" -e "$work/nginx.err" >/dev/null 2>&1 &
  echo $!
}

# wrk latency such as 512.00us, 1.23ms, 2.00s → microseconds
to_us() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n }'
}

# Median of whitespace-separated numbers on stdin ("-" when none).
median() {
  tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{v[NR]=$1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR+1)/2]; else printf "%.2f", (v[NR/2] + v[NR/2+1]) / 2}'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }

# verdict VALUE OP TARGET → met / NOT met
verdict() {
  awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN { if (v == "n/a") print "n/a"; else if ((op == ">=" && v >= t) || (op == "<=" && v <= t)) print "met"; else print "NOT met" }'
}

bench_machine() {
  local cpu
  cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
  echo "$(nproc) cores, ${cpu:-unknown CPU}, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
}
