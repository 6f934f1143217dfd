#!/usr/bin/env bash
# `just demo`: the fleet on the embedded default — a local nats-server (the pinned one from
# `just setup`, JetStream on, data under .fleet/demo) and local files — running what exists today.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
fleetctl="$root/target/debug/fleetctl"
nats="${FLEET_HOME:-$root/.fleet}/bin/nats-server"
demo="$root/.fleet/demo"
rm -rf "$demo" && mkdir -p "$demo/jetstream" "$demo/schemas"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. A local nats-server with JetStream (pinned $("$nats" --version | awk '{print $2}'))"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$nats" -a 127.0.0.1 -p "$port" -m "$mport" -js -sd "$demo/jetstream" >"$demo/nats.log" 2>&1 &
nats_pid=$!
trap 'kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  if curl -fsS "http://127.0.0.1:$mport/healthz?js-enabled-only=true" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$mport/healthz?js-enabled-only=true" >/dev/null
echo "nats://127.0.0.1:$port is up, JetStream enabled (monitoring on :$mport)"

step "2. The effective configuration, pointed at it (defaults → config/*.toml → FLEET_* env)"
FLEET_NATS__URL="nats://127.0.0.1:$port" "$fleetctl" config

step "3. The provisioner, and tenants registering (tenant.created, as the registration service sends it)"
export FLEET_NATS__URL="nats://127.0.0.1:$port"
export FLEET_TENANTDB__DATA_DIR="$demo/tenants"
export FLEET_PROVISIONER__BACKUP_DIR="$demo/backups"
export FLEET_WORKER__HEALTH_ADDR="127.0.0.1:0"
"$root/target/debug/provisioner" >"$demo/provisioner.log" 2>&1 &
provisioner_pid=$!
"$root/target/debug/deployer" >"$demo/deployer.log" 2>&1 &
deployer_pid=$!
"$root/target/debug/installer" >"$demo/installer.log" 2>&1 &
installer_pid=$!
# The quota auditor on a demo's clock: a bucket every second, two seconds of grace.
FLEET_QUOTA__INTERVAL_SECS=1 FLEET_QUOTA__GRACE_SECS=2 "$root/target/debug/quota-auditor" >"$demo/quota-auditor.log" 2>&1 &
auditor_pid=$!
trap 'kill "$provisioner_pid" "$deployer_pid" "$installer_pid" "$auditor_pid" 2>/dev/null || true; wait "$provisioner_pid" "$deployer_pid" "$installer_pid" "$auditor_pid" 2>/dev/null || true; kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true' EXIT
"$fleetctl" tenant create --id acme --org org_42 --plan pro --region eu-west --admin-email ops@acme.example --wait
"$fleetctl" tenant create --count 10 --wait
echo
"$fleetctl" tenant status acme
echo
"$fleetctl" tenant list | head -5
echo "…"

step "3b. Suspend and resume one (tokens revoked, a read-only one while suspended)"
"$fleetctl" tenant suspend acme --reason "demo: unpaid invoice"
sleep 0.5 && "$fleetctl" tenant status acme | head -1
"$fleetctl" tenant resume acme
sleep 0.5 && "$fleetctl" tenant status acme | head -1

step "4. A platform engineer's deploy bundle (examples/crm-v1.bundle.json), validated and normalized"
"$fleetctl" validate DeployBundle examples/crm-v1.bundle.json >"$demo/crm-v1.normalized.json"
python3 - "$demo/crm-v1.normalized.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"valid: version {b['manifest']['version']}, {len(b['objects'])} objects")
for o in b["objects"]:
    kinds = sorted({f["type"] for f in o["fields"].values()})
    print(f"  {o['name']:<12} {len(o['fields'])} fields: {', '.join(kinds)}")
filled = [k for k in ("views", "flows", "permissions") if k in b["manifest"]] + ["seedData"]
print(f"upstream defaults filled in: manifest.{', manifest.'.join(filled[:-1])}, {filled[-1]}")
PY
echo "normalized JSON: $demo/crm-v1.normalized.json"

step "5. A bundle with three mistakes: every one reported with its path (exit 1)"
set +e
"$fleetctl" validate DeployBundle examples/invalid.bundle.json
echo "exit code: $?"
set -e

step "6. The registration service's tenant.created payload, as the provisioner will read it"
echo '{"tenantId":"acme","orgId":"org_42","plan":"pro","region":"eu-west","displayName":"Acme Inc","adminEmail":"ops@acme.example"}' \
  | "$fleetctl" validate TenantCreated - 2>&1

step "7. CRM v1 deployed to tenant acme's database (the local backend: a libSQL file), some rows"
# fleetctl issues itself a short-lived token and opens the database the way every worker will;
# the tenant's base system tables stay part of the desired schema.
"$fleetctl" db apply --tenant acme --bundle examples/crm-v1.bundle.json | tail -1
# The local backend spreads tenant files over 256 shard folders.
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

step "8. CRM v2 planned against it: a renamed field, new fields, a table rebuild"
"$fleetctl" db plan --tenant acme --bundle examples/crm-v2.bundle.json --format text

step "9. … applied in one transaction; every row kept"
"$fleetctl" db apply --tenant acme --bundle examples/crm-v2.bundle.json | tail -1
python3 - "$tenant_db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
for row in c.execute("SELECT id, company_name, industry FROM crm_account ORDER BY id"):
    print("  crm_account    ", row)
for row in c.execute("SELECT id, title, stage FROM crm_opportunity"):
    print("  crm_opportunity", row)
PY
echo "planning v2 again:"
"$fleetctl" db plan --tenant acme --bundle examples/crm-v2.bundle.json --format text
echo "the tenant's record (tokens are kept as hashes only):"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  tenant", r["tenant"], "group", r["group"], "tokens", [t["scope"] for t in r["tokens"]])' "${tenant_db%.db}.meta.json"

step "10. The CRM bundle deployed to every demo tenant, in waves (canary, 10%, the rest)"
# acme already has CRM v2 (steps 7-9); the others get it from scratch. A dry run first.
"$fleetctl" deploy examples/crm-v2.bundle.json --all --waves 1,10%,100% --dry-run --id crm-v2-dry
"$fleetctl" deploy examples/crm-v2.bundle.json --all --waves 1,10%,100% --id crm-v2
echo "deploying the same version again is a no-op for every tenant:"
"$fleetctl" deploy examples/crm-v2.bundle.json --all --waves 100% --id crm-v2-again

step "11. Marketplace apps: contacts, and a helpdesk that needs it, into three tenants"
others="$("$fleetctl" tenant list | awk 'NR > 1 && $1 != "acme" {print $1}' | head -2 | tr '\n' ' ')"
echo "the compatibility check alone — the helpdesk before contacts is installed:"
"$fleetctl" app check examples/apps/helpdesk-1.0.0.json --tenant acme | python3 -c 'import json,sys; c=json.load(sys.stdin); print("  compatible:", c["compatible"]); [print("  ", i["category"] + ":", i["message"]) for i in c["issues"]]' || true
for t in acme $others; do
  "$fleetctl" app install examples/apps/contacts-1.0.0 --tenant "$t"
  "$fleetctl" app install examples/apps/helpdesk-1.0.0.json --tenant "$t"
done
echo "helpdesk 1.1 on every tenant that has it, in waves (a new field, a new object with its seed; the rows kept):"
"$fleetctl" app upgrade examples/apps/helpdesk-1.1.0.json --has-app --waves 1,100% --id helpdesk-1-1
"$fleetctl" app list --tenant acme
echo "contacts cannot go while the helpdesk needs it:"
"$fleetctl" app uninstall contacts --tenant acme || true
echo "a platform deploy beside the apps (CRM 2.1: a new field on account) touches none of their objects:"
python3 - "$demo/crm-v2.1.bundle.json" <<'PY'
import json, sys
b = json.load(open("examples/crm-v2.bundle.json"))
b["manifest"]["version"] = "2.1.0"
next(o for o in b["objects"] if o["name"] == "account")["fields"]["tier"] = {"type": "select", "options": [{"label": "Gold", "value": "gold"}]}
json.dump(b, open(sys.argv[1], "w"))
PY
"$fleetctl" deploy "$demo/crm-v2.1.bundle.json" --tenants acme --waves 100% --id crm-v2-1 | tail -1
python3 - "$tenant_db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
for row in c.execute("SELECT t.id, t.subject, t.priority, p.first_name || ' ' || p.last_name FROM helpdesk_ticket t JOIN contacts_person p ON p.id = t.person"):
    print("  helpdesk_ticket", row)
for row in c.execute("SELECT metadata_type, metadata_name, source FROM sys_metadata WHERE source LIKE 'app:%' ORDER BY source, metadata_name"):
    print("  registered     ", row)
PY

echo "acme's usage against its plan's quotas, measured from its database:"
"$fleetctl" quota show acme

step "12. Quotas: a free tenant over maxRecordsPerObject is warned, suspended after its grace period, and resumed once back under"
"$fleetctl" tenant create --id freebie --org org_7 --plan free --wait | tail -1
freebie_db="$(find "$demo/tenants" -name freebie.db | head -1)"
python3 - "$freebie_db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.executescript("""
CREATE TABLE note (id TEXT NOT NULL PRIMARY KEY, created_at TEXT NOT NULL DEFAULT '', updated_at TEXT NOT NULL DEFAULT '', body TEXT);
INSERT INTO sys_metadata (id, metadata_type, metadata_name, body, source)
  VALUES ('object:note', 'object', 'note', '{"name":"note","fields":{"body":{"type":"text"}}}', 'deployment:demo');
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 10200)
  INSERT INTO note (id, body) SELECT 'n' || i, 'note ' || i FROM k;
""")
c.commit()
print("freebie: 10 200 notes written (the free plan allows 10 000 records per object)")
PY
wait_for() { for _ in $(seq 1 60); do "$fleetctl" tenant status freebie | head -1 | grep -q "$1" && return 0; sleep 0.5; done; return 1; }
wait_for suspended && "$fleetctl" tenant status freebie | head -1
"$fleetctl" quota list --over 80
python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute("DELETE FROM note WHERE rowid > 5000"); c.commit(); print("freebie: back to 5 000 notes")' "$freebie_db"
wait_for active && "$fleetctl" tenant status freebie | head -1
"$fleetctl" quota show freebie || true

step "13. The protocol's JSON Schemas, exported"
"$fleetctl" schema export --out "$demo/schemas"

step "Coming next"
cat <<'TXT'
  - operating the fleet: dead letters at a glance, status of everything
  - the reliability suite, fleet-client, the gateway, production manifests
TXT
