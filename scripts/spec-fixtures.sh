#!/usr/bin/env bash
# Fetches @objectstack/spec@VERSION with `npm pack` into target/spec-fixtures (cached) and
# installs the zod runtime its compiled dist/ needs next to it, so the conformance tests can use
# both the JSON Schemas (json-schema/) and the runtime (dist/) as oracles.
set -euo pipefail
version="${1:?usage: spec-fixtures.sh SPEC_VERSION ZOD_VERSION}"
zod="${2:?usage: spec-fixtures.sh SPEC_VERSION ZOD_VERSION}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/target/spec-fixtures/spec-$version"

if [ -f "$dest/package/json-schema/system/DeployBundle.json" ] && [ -f "$dest/node_modules/zod/package.json" ]; then
  echo "spec fixtures: $dest (cached)"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is required (Node.js): apt-get install nodejs npm" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
(cd "$dest" && npm pack --silent "@objectstack/spec@$version" >/dev/null)
tar -xzf "$dest"/objectstack-spec-"$version".tgz -C "$dest"
rm "$dest"/objectstack-spec-"$version".tgz
# Installed beside package/, not inside it, so its devDependencies are not pulled in.
echo '{"private": true}' > "$dest/package.json"
(cd "$dest" && npm install --silent --no-audit --no-fund --no-package-lock "zod@$zod" >/dev/null)
echo "spec fixtures: $dest ($(find "$dest/package/json-schema" -name '*.json' | wc -l) JSON Schemas, zod $zod)"
