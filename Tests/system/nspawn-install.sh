#!/usr/bin/env bash
# Weft under a real systemd: boots Debian 12 inside systemd-nspawn (its own network namespace),
# installs Weft with scripts/install, runs an unmodified web server as weft-run@web through
# systemctl and calls it by name through the mesh; SIGKILLs the agent and checks systemd
# restarts it, the workload survives and traffic recovers; reloads, stops the workload (its
# namespace goes), then scripts/uninstall leaves nothing behind.
#   Tests/system/nspawn-install.sh [WEFT_BINARY]
# Needs root, debootstrap and systemd-container (scripts/setup-deps installs them). The
# Debian tree is built once (about a minute, from deb.debian.org) into
# /var/cache/weft-test/bookworm and copied for every run. Exit 0 = every check passed; 77 =
# this machine cannot boot a container at all (no Debian mirror, nspawn refused), said loudly;
# anything else = a check failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${1:-$root/.build/debug/weft}")
cache=/var/cache/weft-test/bookworm
step() { printf '[nspawn %s] %s\n' "$(date +%T)" "$*"; }
leader=""
die() {
  printf '[nspawn] FAILED: %s\n' "$*" >&2
  if [ -n "$leader" ]; then
    echo "--- the container's journal (last 60 lines of weft units):" >&2
    nsenter -t "$leader" -a -- journalctl --no-pager -n 60 -u weft-agent -u 'weft-run@*' >&2 || true
  fi
  exit 1
}
unable() { printf '[nspawn] CANNOT RUN HERE: %s\n' "$*" >&2; exit 77; }
[ "$(id -u)" = 0 ] || die "run as root"
for t in debootstrap systemd-nspawn; do command -v "$t" >/dev/null || die "$t is not installed (scripts/setup-deps)"; done
[ -x "$bin" ] || die "no weft binary at $bin"
case "$bin" in "$root"/*) ;; *) die "the binary must be inside the checkout ($root), which is mounted into the container" ;; esac

if [ ! -x "$cache/usr/bin/python3" ] || [ ! -e "$cache/.weft-complete-2" ]; then
  step "debootstrap Debian 12 into $cache (once)"
  rm -rf "$cache"; mkdir -p "$(dirname "$cache")"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,iptables,iproute2,util-linux,procps,curl,python3,ca-certificates,libmnl0,libcap2,libnetfilter-queue1 \
    bookworm "$cache" http://deb.debian.org/debian >/tmp/weft-debootstrap.log 2>&1 || { tail -20 /tmp/weft-debootstrap.log; unable "debootstrap from deb.debian.org failed"; }
  touch "$cache/.weft-complete-2"
fi

tree=$(mktemp -d /var/tmp/weft-nspawn.XXXXXX)
machine="weftns$$"
nspawn_pid=""
mounted_run=0
cleanup() {
  set +e
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid"   # nspawn asks the container's systemd to power off
    for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$nspawn_pid" 2>/dev/null
    wait "$nspawn_pid" 2>/dev/null
  fi
  [ "$mounted_run" = 1 ] && umount /run/systemd/nspawn 2>/dev/null
  rm -rf "$tree"
}
trap cleanup EXIT
cp -a "$cache/." "$tree/"
echo "$machine" > "$tree/etc/hostname"

# nspawn keeps per-machine state under /run/systemd/nspawn and refuses to clean it up unless
# it is a tmpfs (on hosts without systemd as PID 1, /run may be an ordinary directory).
mkdir -p /run/systemd/nspawn
if ! [ "$(stat -f -c %T /run/systemd/nspawn)" = tmpfs ]; then mount -t tmpfs tmpfs /run/systemd/nspawn && mounted_run=1; fi
binds=(--bind-ro="$root:/src")
# A debug build links the Swift runtime dynamically: the same directory, read-only.
runtime=$(ldd "$bin" | awk '/libswiftCore.so/ {print $3}' | xargs -r dirname)
[ -n "$runtime" ] && binds+=(--bind-ro="$runtime")
rel=${bin#"$root"/}

step "booting $machine (systemd-nspawn -b, private network)"
systemd-nspawn -q --keep-unit --register=no --private-network -M "$machine" -D "$tree" "${binds[@]}" -b \
  >"$tree.console" 2>&1 </dev/null &
nspawn_pid=$!
leader=""
for _ in $(seq 100); do
  leader=$(pgrep -P "$nspawn_pid" | head -1 || true)
  [ -n "$leader" ] && [ "$(readlink "/proc/$leader/exe" 2>/dev/null)" = /usr/lib/systemd/systemd ] && break
  leader=""; sleep 0.1
done
[ -n "$leader" ] || { cat "$tree.console"; unable "systemd-nspawn did not start the container's systemd"; }
inside() { nsenter -t "$leader" -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
state=""
for _ in $(seq 100); do  # systemctl answers once the container's systemd has its socket up
  state=$(inside timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
  [ -n "$state" ] && break
  sleep 0.2
done
step "container systemd is $state"
case "$state" in running|degraded) ;; *) die "container did not boot ($state)" ;; esac

step "scripts/install --binary /src/$rel"
inside /src/scripts/install --binary "/src/$rel" --no-deps
inside systemctl is-active --quiet weft-agent || { inside journalctl -u weft-agent --no-pager | tail -30; die "weft-agent is not active after install"; }
inside test -x /usr/local/bin/weft || die "no /usr/local/bin/weft"
inside getent passwd weft >/dev/null || die "no weft user"
[ "$(inside stat -c %a /etc/weft/agent.env)" = 600 ] || die "/etc/weft/agent.env must be 0600"
for unit in weft-agent.service weft-control.service weft-run@web.service; do
  step "systemd-analyze security $unit: $(inside systemd-analyze security --no-pager "$unit" 2>/dev/null | tail -1 | sed 's/^→ //')"
done

step "weft-run@web: an unmodified python3 http.server described in /etc/weft/workloads/web.conf"
inside mkdir -p /srv/www
inside sh -c 'echo "hello from web" > /srv/www/index.html; chmod -R a+rX /srv/www'
inside sh -c 'cat > /etc/weft/workloads/web.conf <<CONF
# the demo web server
command = /usr/bin/python3 -m http.server 8000 --directory /srv/www
service = web
port = 8000/http
label = version=v1
user = weft
CONF'
inside systemctl start weft-run@web || die "systemctl start weft-run@web"
inside systemctl is-active --quiet weft-run@web || { inside journalctl -u weft-run@web --no-pager | tail -30; die "weft-run@web is not active"; }
[ "$(inside systemctl show -p User --value weft-run@web)" = "" ] || true
inside ip netns list | grep -q '^web' || die "no netns web"
for _ in $(seq 50); do inside ip netns exec web sh -c 'exec 3<>/dev/tcp/127.0.0.1/8000' 2>/dev/null && break; sleep 0.1; done
owner=$(inside sh -c 'ps -o user= -C python3 | head -1')
[ "$owner" = weft ] || die "the workload runs as '$owner', not as the unprivileged weft user"

call() { inside timeout 20 weft run --service client -- curl -sS -m 5 http://web:8000/index.html 2>&1; }
out=$(call) || true
[ "$out" = "hello from web" ] || { inside journalctl -u weft-agent --no-pager | tail -30; die "client → web through the mesh: '$out'"; }
metrics=$(inside curl -s http://127.0.0.1:15090/metrics)
echo "$metrics" | grep -q 'istio_requests_total{.*destination_service_name="web".*response_code="200"' \
  || die "the agent's metrics do not show the request to web"
step "client → web by name through the mesh: ok (counted in istio_requests_total)"

step "SIGKILL to the agent: systemd restarts it, the workload stays, traffic recovers"
before=$(inside systemctl show -p MainPID --value weft-agent)
inside systemctl kill -s SIGKILL weft-agent
restarted=""
for _ in $(seq 100); do
  pid=$(inside systemctl show -p MainPID --value weft-agent)
  if [ "$pid" != 0 ] && [ "$pid" != "$before" ] && inside systemctl is-active --quiet weft-agent; then restarted=1; break; fi
  sleep 0.1
done
[ -n "$restarted" ] || die "weft-agent was not restarted (NRestarts=$(inside systemctl show -p NRestarts --value weft-agent))"
up=$(date +%s.%N)
ok=""
for _ in $(seq 40); do
  out=$(call) || true
  if [ "$out" = "hello from web" ]; then ok=1; break; fi
  sleep 0.05
done
recovered=$(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $up}")
[ -n "$ok" ] || die "traffic did not recover after the restart: '$out'"
inside systemctl is-active --quiet weft-run@web || die "weft-run@web did not survive the agent's restart"
step "restarted by systemd (NRestarts=$(inside systemctl show -p NRestarts --value weft-agent)); a new call succeeded ${recovered}s after the agent was up"

inside systemctl reload weft-agent
sleep 0.5
inside systemctl is-active --quiet weft-agent || die "reload stopped the agent"
inside journalctl -u weft-agent --no-pager | grep -q "SIGHUP: reloaded" || die "SIGHUP reload not logged"
step "systemctl reload weft-agent: reloaded"

inside systemctl stop weft-run@web
for _ in $(seq 50); do inside ip netns list | grep -q '^web' || break; sleep 0.1; done
! inside ip netns list | grep -q '^web' || die "the web namespace outlived its unit"
step "systemctl stop weft-run@web: namespace removed"

inside systemctl start weft-run@web
inside /src/scripts/uninstall
for path in /usr/local/bin/weft /etc/systemd/system/weft-agent.service /etc/systemd/system/weft-run@.service /etc/weft /var/lib/weft; do
  ! inside test -e "$path" || die "$path is left after uninstall"
done
! inside ip link show weft0 >/dev/null 2>&1 || die "the bridge weft0 is left after uninstall"
[ -z "$(inside ip netns list)" ] || die "namespaces left after uninstall: $(inside ip netns list)"
! inside getent passwd weft >/dev/null || die "the weft user is left after uninstall"
! inside pgrep -x python3 >/dev/null || die "the workload is still running after uninstall"
step "scripts/uninstall: nothing left (binary, units, config, state, bridge, namespaces, user, processes)"
echo "nspawn-install: PASS (agent recovered, new calls succeeded ${recovered}s after it was up)"
