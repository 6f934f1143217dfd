#!/usr/bin/env bash
# `just down`: stops what `just up` started (workers first, then the nats-server it started).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
home="${FLEET_HOME:-$root/.fleet}"
for name in gateway provisioner deployer installer quota-auditor nats-server nats-server-1 nats-server-2 nats-server-3; do
  pidfile="$home/run/$name.pid"
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
done
