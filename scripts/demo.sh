#!/usr/bin/env bash
# `just demo`: the whole mission on the embedded default — a local nats-server (the pinned one from
# `just setup`, JetStream on, data under .fleet/demo) and local libSQL files, the four workers and
# fleetctl. Registers DEMO_TENANTS tenants (200 by default), deploys the CRM to all of them in waves,
# installs and upgrades a marketplace app, runs quota audits, sends jobs that end in the
# dead-letter queue and replays one once its cause is fixed, and ends with `fleetctl status`.
# Re-running starts from scratch; Ctrl-C stops every process it started.
#
# Environment: DEMO_TENANTS (200), DEMO_DIR (.fleet/demo), DEMO_BIN_DIR (target/debug: the
# fleetctl and worker binaries), FLEET_NATS_SERVER (the pinned .fleet/bin/nats-server).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bin="${DEMO_BIN_DIR:-$root/target/debug}"
fleetctl="$bin/fleetctl"
nats="${FLEET_NATS_SERVER:-${FLEET_HOME:-$root/.fleet}/bin/nats-server}"
demo="${DEMO_DIR:-$root/.fleet/demo}"
tenants="${DEMO_TENANTS:-200}"
rm -rf "$demo" && mkdir -p "$demo/jetstream" "$demo/schemas" "$demo/config"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

pids=()        # the workers
nats_pid=""
cleanup() {
  trap - EXIT INT TERM
  # The workers first, while the server is still there for them to settle and say goodbye.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'echo; echo "interrupted: stopping the demo fleet"; cleanup; exit 130' INT TERM

step "1. A local nats-server with JetStream (pinned $("$nats" --version | awk '{print $2}'))"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
mport="$(free_port)"
"$nats" -a 127.0.0.1 -p "$port" -m "$mport" -js -sd "$demo/jetstream" >"$demo/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 1 50); do
  if curl -fsS "http://127.0.0.1:$mport/healthz?js-enabled-only=true" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$mport/healthz?js-enabled-only=true" >/dev/null
echo "nats://127.0.0.1:$port is up, JetStream enabled (monitoring on :$mport)"

step "2. The four workers on the local backend (a config in which region ap-northeast has no database group yet)"
# The demo's configuration: the repository's, with one region left unmapped — section 10 maps it.
cp config/*.toml "$demo/config/"
python3 - "$demo/config/dev.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"\[provisioner\.regions\.ap-northeast\]\n(?:[^\[\n][^\n]*\n|\n)*", "", text)
open(path, "w").write(text)
PY
export FLEET_CONFIG_DIR="$demo/config"
export FLEET_NATS__URL="nats://127.0.0.1:$port"
export FLEET_TENANTDB__DATA_DIR="$demo/tenants"
export FLEET_PROVISIONER__BACKUP_DIR="$demo/backups"
export FLEET_WORKER__HEALTH_ADDR="127.0.0.1:0"
start_provisioner() {
  "$bin/provisioner" >>"$demo/provisioner.log" 2>&1 &
  provisioner_pid=$!
  pids+=($provisioner_pid)
}
start_provisioner
"$bin/deployer" >"$demo/deployer.log" 2>&1 &
pids+=($!)
"$bin/installer" >"$demo/installer.log" 2>&1 &
pids+=($!)
# The quota auditor on a demo's clock: a bucket every second, two seconds of grace.
FLEET_QUOTA__INTERVAL_SECS=1 FLEET_QUOTA__GRACE_SECS=2 "$bin/quota-auditor" >"$demo/quota-auditor.log" 2>&1 &
pids+=($!)
# The data gateway: upstream's data API in front of every tenant's database.
gw="http://127.0.0.1:$(free_port)"
FLEET_GATEWAY__LISTEN="${gw#http://}" "$bin/gateway" >"$demo/gateway.log" 2>&1 &
pids+=($!)
FLEET_NATS__URL="nats://127.0.0.1:$port" "$fleetctl" config | python3 -c '
import json, sys
c = json.load(sys.stdin)
print("nats", c["nats"]["url"], "· backend", c["tenantdb"]["backend"], "· data", c["tenantdb"]["data_dir"])
print("regions mapped:", ", ".join(sorted(c["provisioner"]["regions"])))'
echo "logs: $demo/{provisioner,deployer,installer,quota-auditor,gateway}.log; data API at $gw"

step "3. $tenants tenants register (tenant.created, as the registration service sends it)"
"$fleetctl" tenant create --id acme --org org_42 --plan pro --region eu-west --admin-email ops@acme.example --wait
echo "all $tenants sent at once: register → active includes the time each waits in the queue"
"$fleetctl" tenant create --count "$tenants" --plan pro --wait --timeout 300
echo
"$fleetctl" tenant status acme | head -12
echo
"$fleetctl" tenant list | head -4
echo "…"

step "4. Suspend and resume one (tokens revoked; a read-only one while suspended)"
"$fleetctl" tenant suspend acme --reason "demo: unpaid invoice"
wait_status() { for _ in $(seq 1 120); do "$fleetctl" tenant status "$1" | head -1 | grep -q "$2" && return 0; sleep 0.25; done; return 1; }
wait_status acme suspended && "$fleetctl" tenant status acme | head -1
"$fleetctl" tenant resume acme
wait_status acme active && "$fleetctl" tenant status acme | head -1

step "5. A platform engineer's deploy bundle, validated; one with three mistakes, each with its path"
"$fleetctl" validate DeployBundle examples/crm-v1.bundle.json >"$demo/crm-v1.normalized.json"
python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); print("crm-v1: valid, version", b["manifest"]["version"] + ",", len(b["objects"]), "objects:", ", ".join(o["name"] for o in b["objects"]))' "$demo/crm-v1.normalized.json"
set +e
"$fleetctl" validate DeployBundle examples/invalid.bundle.json
echo "exit code: $? (1: the document is invalid)"
set -e

step "6. CRM v1 into acme's database, some rows; v2 planned (a rename, new fields, a table rebuild) and applied"
"$fleetctl" db apply --tenant acme --bundle examples/crm-v1.bundle.json | tail -1
tenant_db="$(find "$demo/tenants" -name acme.db | head -1)"
python3 - "$tenant_db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.executescript("""
INSERT INTO crm_account (id, name, industry, annual_revenue) VALUES ('a1', 'Acme', 'software', 1000), ('a2', 'Globex', NULL, NULL);
INSERT INTO crm_contact (id, first_name, last_name, email, account) VALUES ('c1', 'Ada', 'Lovelace', 'ada@acme.example', 'a1');
INSERT INTO crm_opportunity (id, title, amount, stage, account, primary_contact) VALUES ('o1', 'Big deal', 5000, NULL, 'a1', 'c1');
""")
c.commit()
print("inserted 2 accounts, 1 contact, 1 opportunity")
PY
"$fleetctl" db plan --tenant acme --bundle examples/crm-v2.bundle.json --format text
"$fleetctl" db apply --tenant acme --bundle examples/crm-v2.bundle.json | tail -1
python3 - "$tenant_db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
for row in c.execute("SELECT id, company_name, industry FROM crm_account ORDER BY id"):
    print("  crm_account    ", row)
PY

step "7. CRM v2 to every tenant in waves (canary, 10%, the rest): a dry run first"
"$fleetctl" deploy examples/crm-v2.bundle.json --all --waves 1,10%,100% --dry-run --id crm-v2-dry
"$fleetctl" deploy examples/crm-v2.bundle.json --all --waves 1,10%,100% --id crm-v2
echo "the same version again is a no-op for every tenant:"
"$fleetctl" deploy examples/crm-v2.bundle.json --all --waves 100% --id crm-v2-again

step "8. Marketplace apps: contacts and a helpdesk that needs it, into three tenants; the helpdesk upgraded"
others="$("$fleetctl" tenant list | awk 'NR > 1 && $1 != "acme" && $2 == "active" {print $1}' | head -2 | tr '\n' ' ')"
echo "the compatibility check alone — the helpdesk before contacts is installed:"
"$fleetctl" app check examples/apps/helpdesk-1.0.0.json --tenant acme | python3 -c 'import json,sys; c=json.load(sys.stdin); print("  compatible:", c["compatible"]); [print("  ", i["category"] + ":", i["message"]) for i in c["issues"]]' || true
for t in acme $others; do
  "$fleetctl" app install examples/apps/contacts-1.0.0 --tenant "$t"
  "$fleetctl" app install examples/apps/helpdesk-1.0.0.json --tenant "$t"
done
echo "helpdesk 1.1 on every tenant that has it, in waves (a new field, a new object with its seed; rows kept):"
"$fleetctl" app upgrade examples/apps/helpdesk-1.1.0.json --has-app --waves 1,100% --id helpdesk-1-1
"$fleetctl" app list --tenant acme
echo "contacts cannot go while the helpdesk needs it:"
"$fleetctl" app uninstall contacts --tenant acme || true

step "9. Quota audits: one tenant near maxRecordsPerObject is warned; one over it is suspended, then resumed"
notes() {
  python3 - "$1" "$2" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.executescript(f"""
CREATE TABLE IF NOT EXISTS note (id TEXT NOT NULL PRIMARY KEY, created_at TEXT NOT NULL DEFAULT '', updated_at TEXT NOT NULL DEFAULT '', body TEXT);
INSERT OR IGNORE INTO sys_metadata (id, metadata_type, metadata_name, body, source)
  VALUES ('object:note', 'object', 'note', '{{"name":"note","fields":{{"body":{{"type":"text"}}}}}}', 'deployment:demo');
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < {int(sys.argv[2])})
  INSERT OR IGNORE INTO note (id, body) SELECT 'n' || i, 'note ' || i FROM k;
""")
c.commit()
PY
}
"$fleetctl" tenant create --id nearly --org org_8 --plan free --wait | tail -1
"$fleetctl" tenant create --id freebie --org org_7 --plan free --wait | tail -1
notes "$(find "$demo/tenants" -name nearly.db | head -1)" 8500
notes "$(find "$demo/tenants" -name freebie.db | head -1)" 10200
echo "nearly: 8 500 notes, freebie: 10 200 (the free plan allows 10 000 records per object)"
wait_status freebie suspended && "$fleetctl" tenant status freebie | head -1
for _ in $(seq 1 60); do "$fleetctl" hooks --subject quota.warning --tenant nearly | grep -q "^0 hook" || break; sleep 0.25; done
echo "the hooks the platform received (hooks.quota.warning, hooks.tenant.suspended):"
"$fleetctl" hooks --subject quota.warning --tenant nearly | head -1
"$fleetctl" hooks --subject tenant.suspended --tenant freebie | head -1
"$fleetctl" quota list --over 80
python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("DELETE FROM note WHERE rowid > 5000"); c.commit(); print("freebie: back to 5 000 notes")' "$(find "$demo/tenants" -name freebie.db | head -1)"
wait_status freebie active && "$fleetctl" tenant status freebie | head -1

step "10. Dead letters: a malformed job, and a tenant in a region with no database group yet"
# Another service's bug: a tenant.created without its orgId, straight onto NATS.
python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.recv(4096)  # the server's INFO
headers = b"NATS/1.0\r\nNats-Msg-Id: broken-co-1\r\n\r\n"
body = b'{"tenantId":"broken-co","plan":"pro","region":"us-east"}'
s.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n')
s.sendall(b"HPUB tenant.created %d %d\r\n%s%s\r\nPING\r\n" % (len(headers), len(headers) + len(body), headers, body))
reply = b""
while b"PONG" not in reply and b"-ERR" not in reply:
    reply += s.recv(4096)
assert b"-ERR" not in reply, reply
print("published a tenant.created without orgId, as a buggy registration service would")
PY
"$fleetctl" tenant create --id tokyo-co --org org_9 --plan pro --region ap-northeast --wait || true
for _ in $(seq 1 60); do [ "$("$fleetctl" dlq list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -ge 2 ] && break; sleep 0.25; done
"$fleetctl" dlq list
seq_of() { "$fleetctl" dlq list --json | python3 -c 'import json,sys; print(next(e["sequence"] for e in json.load(sys.stdin) if e["tenantId"] == sys.argv[1]))' "$1"; }
tokyo="$(seq_of tokyo-co)"
broken="$(seq_of broken-co)"
"$fleetctl" dlq show "$broken"
echo "the fix for tokyo-co: map ap-northeast to a database group, roll the provisioner"
printf '\n[provisioner.regions.ap-northeast]\ngroup = "local"\nprimary_location = "local"\n' >>"$demo/config/dev.toml"
kill -TERM "$provisioner_pid" && wait "$provisioner_pid" 2>/dev/null || true
start_provisioner
"$fleetctl" dlq replay "$tokyo"
wait_status tokyo-co active && "$fleetctl" tenant status tokyo-co | head -1
echo "broken-co's job can never succeed as sent: purged"
"$fleetctl" dlq purge "$broken" --yes
"$fleetctl" dlq list

step "11. Instant ObjectOS: a new tenant registers, gets CRM, and writes its first record through the gateway"
ms() { python3 -c 'import time; print(int(time.time() * 1000))'; }
started="$(ms)"
"$fleetctl" tenant create --id instant-co --org org_7 --plan pro --region eu-west --wait >/dev/null
"$fleetctl" deploy examples/crm-v1.bundle.json --tenants instant-co --waves 100% --id instant-crm >/dev/null
first="$(curl -fsS -X POST "$gw/api/v1/data/account" -H 'X-Tenant-ID: instant-co' -H 'content-type: application/json' \
  -d '{"data": {"name": "First Customer Ltd", "industry": "software"}}')"
written="$(ms)"
id="$(printf '%s' "$first" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
echo "POST /api/v1/data/account → $first"
echo "GET  /api/v1/data/account/$id → $(curl -fsS "$gw/api/v1/data/account/$id" -H 'X-Tenant-ID: instant-co')"
echo "tenant.created → database, base schema, CRM deployed, first record written: $((written - started)) ms"
echo "the same object in another tenant's database — acme's own rows, never instant-co's:"
curl -sS "$gw/api/v1/data/account?top=3" -H 'X-Tenant-ID: acme' | python3 -c 'import json,sys; b=json.load(sys.stdin); print("  acme:", b["total"], "account(s):", ", ".join(r.get("company_name") or r.get("name") or "?" for r in b["records"]))'
echo "a bad value, answered with its path:"
curl -sS -X POST "$gw/api/v1/data/account" -H 'X-Tenant-ID: instant-co' -H 'content-type: application/json' \
  -d '{"data": {"industry": "mining"}}' | python3 -c 'import json,sys; e=json.load(sys.stdin)["error"]; print("  " + e["code"] + ":", "; ".join(i["path"] + " " + i["code"] for i in e["details"]["issues"]))'

step "12. The fleet at a glance"
"$fleetctl" status

step "Where to look next"
cat <<TXT
  fleetctl status --watch            the fleet, live        fleetctl dlq list | show | replay | purge
  fleetctl tenant status <id>        one tenant's history   fleetctl deploy status <id> --watch
  fleetctl app list --tenant <id>    its apps               fleetctl quota show <id>
  curl -H 'X-Tenant-ID: <id>' $gw/api/v1/data/<object>   the data API (while the demo runs)
  just up / just down                a local fleet that stays up (release builds, logs in .fleet/logs)
  logs of this run                   $demo/*.log
TXT
