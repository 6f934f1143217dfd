//! NATS decentralized authentication for tests, as `nsc` sets it up: [`TestOperator::new`]
//! makes an operator, its system account, an account it signed with JetStream enabled, and
//! user credentials files (`.creds`: the user's JWT and its NKey seed) — one of that account's,
//! one expired, and one of an account the server was never told of. [`TestOperator::server_block`] is the
//! nats-server configuration that trusts the operator and preloads the account (memory
//! resolver). [`user_seed_file`] writes a plain NKey user's seed.
//!
//! A JWT here is NATS's v2 encoding (nats-io/jwt): header `{"typ":"JWT","alg":"ed25519-nkey"}`,
//! the claims, and an Ed25519 signature by the issuer's NKey over `header.claims`, each part
//! base64url without padding. Only the claims the server needs are set; `jti` is random rather
//! than the hash `nsc` puts there (the server does not check it). The `nats-jwt` crate writes
//! neither operators nor JetStream limits, hence this module.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// The files and server settings of a test operator (files under a temp dir of their own).
#[derive(Debug)]
pub struct TestOperator {
    dir: tempfile::TempDir,
    operator_jwt: String,
    system_public_key: String,
    system_jwt: String,
    account_public_key: String,
    account_jwt: String,
    /// A user of the preloaded account: the server lets it in, with JetStream.
    pub creds_file: PathBuf,
    /// A user of that account whose JWT expired an hour ago.
    pub expired_creds_file: PathBuf,
    /// A user of an account the server was never given.
    pub stranger_creds_file: PathBuf,
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs() as i64
}

/// `claims` (with `iss`, `iat` and `jti` added) as a JWT signed by `issuer`.
fn encode(mut claims: Value, issuer: &KeyPair) -> String {
    claims["iss"] = issuer.public_key().into();
    claims["iat"] = now().into();
    claims["jti"] = format!("{:032x}", rand::random::<u128>()).into();
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("an NKey signs");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An account's JWT, signed by `operator`: unlimited, JetStream on if `jetstream` (never for
/// the system account: the server refuses to start).
fn account_jwt(account: &KeyPair, name: &str, operator: &KeyPair, jetstream: bool) -> String {
    let storage = if jetstream { -1 } else { 0 };
    encode(
        json!({
            "sub": account.public_key(),
            "name": name,
            "nats": {
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": storage, "disk_storage": storage,
                    "streams": storage, "consumer": storage,
                },
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2,
            },
        }),
        operator,
    )
}

/// A `.creds` file's text for a new user of `account`, its JWT expiring at `expires` (seconds
/// since the epoch) if given: the layout `nsc generate creds` writes.
fn user_creds(account: &KeyPair, name: &str, expires: Option<i64>) -> String {
    let user = KeyPair::new_user();
    let mut claims = json!({
        "sub": user.public_key(),
        "name": name,
        "nats": {
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user",
            "version": 2,
        },
    });
    if let Some(expires) = expires {
        claims["exp"] = expires.into();
    }
    let jwt = encode(claims, account);
    let seed = user.seed().expect("a user's seed");
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

impl TestOperator {
    /// A fresh operator, account and users, in a temp dir of their own.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let write = |name: &str, text: &str| crate::write_file(dir.path(), name, text);
        let operator = KeyPair::new_operator();
        // JetStream needs the server's own account (`SYS`) to start in operator mode.
        let system = KeyPair::new_account();
        let operator_jwt = encode(
            json!({
                "sub": operator.public_key(),
                "name": "fleet-test-operator",
                "nats": {
                    "system_account": system.public_key(),
                    "type": "operator",
                    "version": 2,
                },
            }),
            &operator,
        );
        let account = KeyPair::new_account();
        // An account whose JWT the server is never given.
        let stranger = KeyPair::new_account();
        Self {
            operator_jwt,
            system_public_key: system.public_key(),
            system_jwt: account_jwt(&system, "SYS", &operator, false),
            account_public_key: account.public_key(),
            account_jwt: account_jwt(&account, "fleet", &operator, true),
            creds_file: write("fleet.creds", &user_creds(&account, "fleet", None)),
            expired_creds_file: write(
                "expired.creds",
                &user_creds(&account, "expired", Some(now() - 3600)),
            ),
            stranger_creds_file: write("stranger.creds", &user_creds(&stranger, "stranger", None)),
            dir,
        }
    }

    /// The folder holding the credentials files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// nats-server's settings trusting this operator, with its system account and the fleet's
    /// preloaded in a memory resolver (`nsc generate config --mem-resolver` writes the same).
    pub fn server_block(&self) -> String {
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
            self.operator_jwt,
            self.system_public_key,
            self.system_public_key,
            self.system_jwt,
            self.account_public_key,
            self.account_jwt,
        )
    }
}

/// A new NATS user's NKey seed written to `dir/name` (as `nk -gen user` would); returns the
/// user's public key, for a server's `authorization { users = [ { nkey: … } ] }`, and the file.
pub fn user_seed_file(dir: &Path, name: &str) -> (String, PathBuf) {
    let user = KeyPair::new_user();
    let seed = user.seed().expect("a user's seed");
    (user.public_key(), crate::write_file(dir, name, seed))
}

impl Default for TestOperator {
    fn default() -> Self {
        Self::new()
    }
}
