// Provisions one tenant from Node the way the fleet's messaging contract says
// (docs/integration.md), with the official NATS clients:
//
//   1. the tenant.created payload is built and checked against the TenantCreated JSON Schema
//      (from `fleetctl schema export`) — an invalid one is never sent;
//   2. hooks.tenant.created and hooks.tenant.failed are subscribed to BEFORE publishing, so the
//      answer cannot be missed;
//   3. tenant.created is published with JetStream under Nats-Msg-Id = the tenant id, and the
//      publish acknowledgement is awaited (the stream stored it);
//   4. the hook about this tenant is awaited (with a timeout), its data checked against the
//      TenantProvisioningResult schema;
//   5. the tenant's status is read from the fleet_tenants KV bucket.
//
// Usage: node provision.mjs <tenantId> [orgId] [region]
// Environment: NATS_URL (nats://127.0.0.1:4222), SCHEMAS (the folder `fleetctl schema export`
// wrote), TIMEOUT_MS (30000). A server that demands credentials (the fleet's production NATS
// does): NATS_CREDS (a .creds file), NATS_NKEY_SEED_FILE, NATS_USER + NATS_PASSWORD, or
// NATS_TOKEN — one of them. TLS: NATS_CA, a CA file to verify the server's certificate with;
// NATS_TLS_HANDSHAKE_FIRST=true (or 1) for a server set to handshake_first; a tls:// URL or
// either of those makes TLS required.
// Prints one JSON line; exit 0 when active, 1 when it failed, timed out, or could not connect
// (connectError) or publish (publishError), 2 when the input is invalid.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { connect, credsAuthenticator, nkeyAuthenticator } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import Ajv2020 from "ajv/dist/2020.js";

const [tenantId, orgId = "org_typescript", region = "us-east"] = process.argv.slice(2);
const url = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const schemas = process.env.SCHEMAS;
const timeoutMs = Number(process.env.TIMEOUT_MS ?? 30000);
if (!tenantId || !schemas) {
  console.error("usage: SCHEMAS=<dir> node provision.mjs <tenantId> [orgId] [region]");
  process.exit(2);
}

const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
const schema = (name) => ajv.compile(JSON.parse(readFileSync(join(schemas, `${name}.json`), "utf8")));
const issues = (validate) =>
  (validate.errors ?? []).map((e) => `${e.instancePath.slice(1).replaceAll("/", ".") || "(root)"}: ${e.message}`);

// 1. The payload, checked before anything is sent.
const payload = { tenantId, orgId, plan: "pro", region, displayName: `${tenantId} (from Node)` };
const validCommand = schema("TenantCreated");
if (!validCommand(payload)) {
  console.log(JSON.stringify({ tenantId, invalid: issues(validCommand) }));
  process.exit(2);
}

// Authentication and TLS, one way at a time, as the fleet's own [nats.auth] and [nats.tls].
// A file that cannot be read, or holds no certificate, is named (never its content), exit 2.
const env = process.env;
const invalidEnv = (problem) => {
  console.log(JSON.stringify({ tenantId, invalid: [`environment: ${problem}`] }));
  process.exit(2);
};
const ways = ["NATS_CREDS", "NATS_NKEY_SEED_FILE", "NATS_USER", "NATS_TOKEN"].filter((name) => env[name]);
if (ways.length > 1 || Boolean(env.NATS_USER) !== Boolean(env.NATS_PASSWORD)) {
  invalidEnv("set one of NATS_CREDS, NATS_NKEY_SEED_FILE, NATS_USER with NATS_PASSWORD, or NATS_TOKEN");
}
const file = (name) => {
  try {
    return readFileSync(env[name]);
  } catch (error) {
    return invalidEnv(`${name} (${env[name]}) cannot be read: ${error.code ?? error.message}`);
  }
};
const options = { servers: url };
if (env.NATS_CREDS) options.authenticator = credsAuthenticator(file("NATS_CREDS"));
if (env.NATS_NKEY_SEED_FILE) {
  options.authenticator = nkeyAuthenticator(new TextEncoder().encode(file("NATS_NKEY_SEED_FILE").toString().trim()));
}
if (env.NATS_USER) Object.assign(options, { user: env.NATS_USER, pass: env.NATS_PASSWORD });
if (env.NATS_TOKEN) options.token = env.NATS_TOKEN;
// TLS when a CA is given, the handshake is to come first, or the URL says tls:// (never a
// silent downgrade to plain text, as the fleet's own client).
const tls = {};
if (env.NATS_CA) {
  // Read once, checked, and handed to the client as it is.
  tls.ca = file("NATS_CA").toString();
  if (!tls.ca.includes("-----BEGIN CERTIFICATE-----")) {
    invalidEnv(`NATS_CA (${env.NATS_CA}) holds no PEM certificate`);
  }
}
if (["true", "1"].includes(env.NATS_TLS_HANDSHAKE_FIRST?.toLowerCase())) tls.handshakeFirst = true;
if (env.NATS_CA || tls.handshakeFirst || url.split(",").some((u) => /^tls:\/\//i.test(u.trim()))) {
  options.tls = tls;
}

let nc;
try {
  nc = await connect(options);
} catch (error) {
  // What the server said (an authorization violation, say), never the credentials. A server
  // that wants the TLS handshake first hangs up on a client that waits for its greeting, and
  // Node has nothing to say of that.
  let connectError = String(error?.message ?? error);
  if (!tls.handshakeFirst && connectError.includes("undefined error")) {
    connectError += " (if the server wants the TLS handshake first, set NATS_TLS_HANDSHAKE_FIRST=true)";
  }
  console.log(JSON.stringify({ tenantId, connectError }));
  process.exit(1);
}
const js = jetstream(nc);
try {
  // 2. Subscribed before publishing.
  const hooks = nc.subscribe("hooks.tenant.*");
  const answer = (async () => {
    for await (const message of hooks) {
      const event = message.json();
      if (event.subject === tenantId && /\.(created|failed)\.v\d+$/.test(event.type)) {
        return event;
      }
    }
  })();

  // 3. Published with its id; the acknowledgement says the stream stored it. A server without
  // the fleet's streams (no responders) or one refusing it says so in the JSON line.
  let ack;
  try {
    ack = await js.publish("tenant.created", JSON.stringify(payload), { msgID: tenantId });
  } catch (error) {
    console.log(JSON.stringify({ tenantId, publishError: String(error?.message ?? error) }));
    await nc.close();
    process.exit(1);
  }

  // A re-sent registration is dropped as a duplicate: its hook was published before this
  // subscription, so the answer is the record itself once the tenant is active.
  const kv = await new Kvm(js).open("fleet_tenants");
  if (ack.duplicate) {
    const entry = await kv.get(tenantId);
    const record = entry ? entry.json() : null;
    if (record?.status === "active") {
      hooks.unsubscribe();
      console.log(JSON.stringify({ tenantId, stream: ack.stream, seq: ack.seq, duplicate: true, status: "active" }));
      process.exit(0);
    }
  }

  // 4. The hook, or a timeout.
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(null), timeoutMs);
  });
  const event = await Promise.race([answer, timeout]);
  clearTimeout(timer);
  hooks.unsubscribe();
  if (!event) {
    console.log(JSON.stringify({ tenantId, stream: ack.stream, seq: ack.seq, timedOut: timeoutMs }));
    process.exitCode = 1;
  } else {
    const validResult = schema("TenantProvisioningResult");
    const resultIssues = validResult(event.data) ? [] : issues(validResult);

    // 5. The record in KV.
    const entry = await kv.get(tenantId);
    const record = entry ? entry.json() : null;
    console.log(
      JSON.stringify({
        tenantId,
        stream: ack.stream,
        seq: ack.seq,
        duplicate: ack.duplicate,
        hook: event.type,
        hookId: event.id,
        result: event.data.status,
        resultIssues,
        status: record?.status ?? null,
        error: event.data.error ?? null,
      }),
    );
    process.exitCode = event.data.status === "active" && resultIssues.length === 0 ? 0 : 1;
  }
} finally {
  await nc.drain();
}
