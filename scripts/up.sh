#!/usr/bin/env bash
# `just up`: a local fleet on the embedded default — the pinned nats-server (when none answers at
# the configured URL) with its data under .fleet/nats, then the four workers (provisioner, deployer,
# installer, quota-auditor) and the data gateway (on 127.0.0.1:8080) as release builds on the local
# libSQL backend. Logs in .fleet/logs, pids
# in .fleet/run. Running it again starts only what is not running; `just down` stops what it started.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
home="${FLEET_HOME:-$root/.fleet}"
mkdir -p "$home/logs" "$home/run" "$home/nats"

# `just up --cluster`: three nats-servers on loopback (client ports 4222-4224, routes 6222-6224)
# as one JetStream cluster, streams and buckets with three replicas; the workers get every node.
if [ "${1:-}" = "--cluster" ]; then
  routes="nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224"
  urls=()
  for n in 1 2 3; do
    cport=$((4221 + n)); rport=$((6221 + n)); mport=$((8221 + n))
    urls+=("nats://127.0.0.1:$cport")
    pidfile="$home/run/nats-server-$n.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "nats-server n$n already running (pid $(cat "$pidfile"))"
      continue
    fi
    mkdir -p "$home/nats-cluster/n$n"
    "$home/bin/nats-server" -a 127.0.0.1 -p "$cport" -m "$mport" -js -sd "$home/nats-cluster/n$n" \
      -n "n$n" --cluster_name fleet --cluster "nats://127.0.0.1:$rport" --routes "$routes" \
      >>"$home/logs/nats-server-$n.log" 2>&1 &
    echo $! > "$pidfile"
    echo "nats-server n$n started at nats://127.0.0.1:$cport (pid $!, monitoring http://127.0.0.1:$mport)"
  done
  # Until the cluster has elected its meta leader, JetStream is not available.
  for _ in $(seq 1 100); do
    curl -fsS http://127.0.0.1:8222/jsz 2>/dev/null | grep -q '"leader"' && break
    sleep 0.1
  done
  export FLEET_NATS__URL="$(IFS=,; echo "${urls[*]}")"
  export FLEET_NATS__REPLICAS=3
  export FLEET_WORKER__RETRY__MAX_ATTEMPTS="${FLEET_WORKER__RETRY__MAX_ATTEMPTS:-10}"
  export FLEET_WORKER__RETRY__MAX_MS="${FLEET_WORKER__RETRY__MAX_MS:-5000}"
fi
url="${FLEET_NATS__URL:-nats://127.0.0.1:4222}"
hostport="${url%%,*}"
hostport="${hostport#nats://}"
hostport="${hostport%%/*}"
host="${hostport%:*}"
port="${hostport##*:}"
if [ "$host" = "$hostport" ]; then port=4222; fi  # no port in the URL: NATS's default
case "$port" in
  ''|*[!0-9]*) echo "FLEET_NATS__URL=$url: cannot read a host and port from it" >&2; exit 2 ;;
esac

answers() { python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.3); sys.exit(s.connect_ex(('$host', $port)))"; }

if answers; then
  echo "nats-server already answers at $url"
else
  "$home/bin/nats-server" -a "$host" -p "$port" -js -sd "$home/nats" >>"$home/logs/nats-server.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 1 50); do answers && break; sleep 0.1; done
  answers || { echo "nats-server did not start; see $home/logs/nats-server.log" >&2; exit 1; }
  # Recorded only once it answers: `just down` stops what really runs.
  echo "$nats_pid" > "$home/run/nats-server.pid"
  echo "nats-server started at $url (pid $nats_pid)"
fi

echo "building the workers (release; the first build takes a few minutes)…"
cargo build --release --quiet -p provisioner -p deployer -p installer -p quota-auditor -p gateway -p fleetctl
# Each worker serves its probes and metrics on a port of its own (9464, 9465, …): two on the
# default address would collide and the second would exit.
health_port=9464
started=()
for worker in provisioner deployer installer quota-auditor gateway; do
  health="127.0.0.1:$health_port"
  health_port=$((health_port + 1))
  pidfile="$home/run/$worker.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$worker already running (pid $(cat "$pidfile"))"
    continue
  fi
  # The gateway's data API on 127.0.0.1:8080 (FLEET_GATEWAY__LISTEN moves it).
  FLEET_GATEWAY__LISTEN="${FLEET_GATEWAY__LISTEN:-127.0.0.1:8080}" \
    FLEET_NATS__URL="$url" FLEET_WORKER__HEALTH_ADDR="$health" "$root/target/release/$worker" >>"$home/logs/$worker.log" 2>&1 &
  pid=$!
  echo "$pid" > "$pidfile"
  started+=("$worker:$pid")
  echo "$worker started (pid $pid), probes and metrics on http://$health, log $home/logs/$worker.log"
done
# A worker that cannot start (its probe port taken, a bad setting) exits within a second or two.
sleep 2
failed=0
for entry in "${started[@]}"; do
  worker="${entry%%:*}"; pid="${entry##*:}"
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$worker exited at once; the end of $home/logs/$worker.log:" >&2
    tail -n 5 "$home/logs/$worker.log" >&2
    rm -f "$home/run/$worker.pid"
    failed=1
  fi
done
[ "$failed" -eq 0 ] || exit 1
echo
echo "the fleet is up: target/release/fleetctl status (FLEET_NATS__URL=$url)"
echo "the data API: curl -H 'X-Tenant-ID: <tenant>' http://${FLEET_GATEWAY__LISTEN:-127.0.0.1:8080}/api/v1/data/<object>"
