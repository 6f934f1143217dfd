#!/usr/bin/env bash
# What the deploy/ tests render and validate manifests with: kubectl (its built-in kustomize)
# and kubernetes-validate (PyPI, pinned; the Kubernetes API's schemas, offline) in
# $FLEET_HOME/venv. kubectl comes with this machine's image; on a machine without one, install
# it with your package manager (Debian: kubectl from the Kubernetes apt repository).
set -euo pipefail
version="${1:?usage: install-k8s-tools.sh KUBERNETES_VALIDATE_VERSION}"
home="${FLEET_HOME:-$(cd "$(dirname "$0")/.." && pwd)/.fleet}"
venv="$home/venv"

if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl is missing: the deploy/ tests render the kustomize overlays with it" >&2
  exit 1
fi
if [ -x "$venv/bin/kubernetes-validate" ] \
  && "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$version"; then
  echo "kubernetes-validate $version: $venv/bin/kubernetes-validate"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
echo "kubernetes-validate $version: $venv/bin/kubernetes-validate"
