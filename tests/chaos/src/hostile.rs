//! Generated bad messages for every subject the workers consume: truncated JSON, wrong types,
//! empty and oversized payloads, invalid UTF-8, deep nesting, path- and SQL-shaped identifiers,
//! unknown payload versions, and a reused `Nats-Msg-Id` with another body. Each is malformed by
//! construction — no worker can ever carry it out — so each must end in the dead-letter stream
//! with a reason, unless the boundary refuses it first (too large) or JetStream drops it (a
//! reused id).

/// One bad message.
#[derive(Debug, Clone)]
pub struct Bad {
    /// The subject (without prefix).
    pub subject: String,
    /// Its `Nats-Msg-Id` (unique, except for [`Kind::ReusedId`]).
    pub id: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// What is wrong with it.
    pub kind: Kind,
}

/// What is wrong with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// JSON cut in the middle.
    Truncated,
    /// A field of the wrong type.
    WrongType,
    /// No bytes at all.
    Empty,
    /// Over the stream's per-message limit (64 KiB commands) or the server's max_payload.
    Oversized,
    /// Not UTF-8.
    InvalidUtf8,
    /// Arrays nested thousands deep.
    DeepNesting,
    /// A tenant id shaped like a path or SQL.
    HostileIdentifier,
    /// A payload version no worker knows.
    UnknownVersion,
    /// A valid-looking command under an id already used for another body.
    ReusedId,
}

const KINDS: [Kind; 9] = [
    Kind::Truncated,
    Kind::WrongType,
    Kind::Empty,
    Kind::Oversized,
    Kind::InvalidUtf8,
    Kind::DeepNesting,
    Kind::HostileIdentifier,
    Kind::UnknownVersion,
    Kind::ReusedId,
];

/// Subjects the workers consume, with a well-formed body for each (the base the bad ones are
/// made from). Per-tenant subjects name a tenant that does not exist.
fn subjects() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    vec![
        (
            "tenant.created",
            json!({"tenantId": "x", "orgId": "o", "plan": "pro", "region": "us-east"}),
        ),
        ("tenant.suspended", json!({"tenantId": "x"})),
        ("tenant.resumed", json!({"tenantId": "x"})),
        ("tenant.deleted", json!({"tenantId": "x"})),
        (
            "tenant.plan_changed",
            json!({"tenantId": "x", "plan": "pro"}),
        ),
        (
            "deploy.requested",
            json!({"deploymentId": "d", "bundle": {"manifest": {"version": "1"}, "objects": []}, "target": {"all": true}}),
        ),
        ("deploy.rollback", json!({"deploymentId": "d"})),
        (
            "app.install_requested",
            json!({"tenantId": "x", "appId": "a", "package": {}}),
        ),
        (
            "app.uninstall_requested",
            json!({"tenantId": "x", "appId": "a"}),
        ),
        ("quota.audit.x", json!({"tenantId": "x"})),
    ]
}

/// The `n`th bad message of a run (`run` keeps ids unique across runs).
pub fn bad(run: &str, n: usize) -> Bad {
    let all = subjects();
    // Kinds vary fastest, so a short run sends every kind; subjects turn over across rounds.
    let mut kind = KINDS[n % KINDS.len()];
    let (subject, base) = &all[(n / KINDS.len()) % all.len()];
    // Ids are deduplicated per stream: a reused id is one of a registration, so only the tenant
    // commands' stream can drop it.
    if kind == Kind::ReusedId && !subject.starts_with("tenant.") {
        kind = Kind::Truncated;
    }
    let id = format!("bad:{run}:{n}");
    let text = base.to_string();
    let mut headers = Vec::new();
    let wrong_types = || {
        let mut value = base.clone();
        if let Some(object) = value.as_object_mut() {
            for (_, field) in object.iter_mut() {
                *field = serde_json::json!([42, {"no": true}]);
            }
        }
        value
    };
    let payload = match kind {
        Kind::Truncated => text.as_bytes()[..text.len() / 2].to_vec(),
        Kind::WrongType => wrong_types().to_string().into_bytes(),
        Kind::Empty => Vec::new(),
        // 100 KiB: over every small-command stream's 64 KiB; the deploy and app streams take it,
        // and the worker refuses it as malformed (every field of the wrong type).
        Kind::Oversized => {
            let mut value = wrong_types();
            value["padding"] = serde_json::json!("x".repeat(100 * 1024));
            value.to_string().into_bytes()
        }
        Kind::InvalidUtf8 => {
            let mut bytes = text.into_bytes();
            bytes.splice(2..2, [0xff, 0xfe, 0xc3, 0x28]);
            bytes
        }
        Kind::DeepNesting => {
            let depth = 5000;
            let mut s = String::from("{\"tenantId\":");
            s.push_str(&"[".repeat(depth));
            s.push_str(&"]".repeat(depth));
            s.push('}');
            s.into_bytes()
        }
        Kind::HostileIdentifier => {
            let hostile = [
                "../../etc/passwd",
                "a'; DROP TABLE sys_metadata; --",
                "/absolute",
                "UPPER\u{0}null",
            ][n % 4];
            let mut value = base.clone();
            for key in ["tenantId", "deploymentId", "appId"] {
                if value.get(key).is_some() {
                    value[key] = serde_json::json!(hostile);
                }
            }
            value.to_string().into_bytes()
        }
        Kind::UnknownVersion => {
            headers.push((fleet_runtime::jobs::VERSION_HEADER, "99".to_owned()));
            text.into_bytes()
        }
        Kind::ReusedId => text.into_bytes(),
    };
    Bad {
        subject: subject.to_string(),
        id,
        payload,
        headers,
        kind,
    }
}
