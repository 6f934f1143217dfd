#!/usr/bin/env bash
# `just up`: a local fleet on the embedded default — the pinned nats-server (when none answers at
# the configured URL) with its data under .fleet/nats, then the four workers (provisioner, deployer,
# installer, quota-auditor) as release builds on the local libSQL backend. Logs in .fleet/logs, pids
# in .fleet/run. Running it again starts only what is not running; `just down` stops what it started.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
home="${FLEET_HOME:-$root/.fleet}"
mkdir -p "$home/logs" "$home/run" "$home/nats"
url="${FLEET_NATS__URL:-nats://127.0.0.1:4222}"
hostport="${url#nats://}"
host="${hostport%:*}"
port="${hostport##*:}"

answers() { python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.3); sys.exit(s.connect_ex(('$host', $port)))"; }

if answers; then
  echo "nats-server already answers at $url"
else
  "$home/bin/nats-server" -a "$host" -p "$port" -js -sd "$home/nats" >>"$home/logs/nats-server.log" 2>&1 &
  echo $! > "$home/run/nats-server.pid"
  for _ in $(seq 1 50); do answers && break; sleep 0.1; done
  answers || { echo "nats-server did not start; see $home/logs/nats-server.log" >&2; exit 1; }
  echo "nats-server started at $url (pid $(cat "$home/run/nats-server.pid"))"
fi

echo "building the workers (release; the first build takes a few minutes)…"
cargo build --release --quiet -p provisioner -p deployer -p installer -p quota-auditor -p fleetctl
# Each worker serves its probes and metrics on a port of its own (9464, 9465, …): two on the
# default address would collide and the second would exit.
health_port=9464
for worker in provisioner deployer installer quota-auditor; do
  health="127.0.0.1:$health_port"
  health_port=$((health_port + 1))
  pidfile="$home/run/$worker.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$worker already running (pid $(cat "$pidfile"))"
    continue
  fi
  FLEET_NATS__URL="$url" FLEET_WORKER__HEALTH_ADDR="$health" "$root/target/release/$worker" >>"$home/logs/$worker.log" 2>&1 &
  echo $! > "$pidfile"
  echo "$worker started (pid $!), probes and metrics on http://$health, log $home/logs/$worker.log"
done
echo
echo "the fleet is up: target/release/fleetctl status (FLEET_NATS__URL=$url)"
