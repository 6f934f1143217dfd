//! A local HTTP double of the Turso Platform API (test support, never shipped), built from the
//! API's OpenAPI document (`fixtures/turso-openapi.json`, a copy of
//! `../shared/reference/turso-openapi.json`): the database and token endpoints the fleet uses,
//! with their documented request and response shapes, and faults — queued
//! ([`TursoDouble::inject`]) or at a rate ([`TursoDouble::fail_at_rate`]): 429 with Retry-After,
//! 500/503, answers slower than the client's timeout. Every answer it gives is checked against
//! the document's response schema for that path, method and status; a mismatch is recorded and
//! fails the test that caused it.
//!
//! Attached to a [`crate::sqld::Sqld`] ([`TursoDouble::serve_databases`]), the databases it
//! creates and deletes are namespaces of that real libSQL server, reached over Hrana like Turso
//! Cloud's.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// A fault the double injects into the next matching answers.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 Too Many Requests with `Retry-After: <secs>`.
    RateLimited {
        /// The `Retry-After` header's seconds.
        retry_after_secs: u64,
    },
    /// A 5xx status.
    Status(u16),
    /// Answer correctly, but only after this delay.
    Slow(Duration),
}

#[derive(Debug, Default)]
struct State {
    /// Share of requests (0–1) answered with a random fault.
    fault_rate: f64,
    /// Faults answered, by kind.
    faults_answered: BTreeMap<&'static str, usize>,
    /// The sqld admin API (`127.0.0.1:port`) whose namespaces are the databases.
    sqld_admin: Option<String>,
    groups: BTreeSet<String>,
    databases: BTreeMap<String, (String, String)>,
    tokens: BTreeMap<String, u64>,
    faults: VecDeque<Fault>,
    requests: Vec<String>,
    violations: Vec<String>,
    next_id: u64,
}

/// The running double.
#[derive(Clone)]
pub struct TursoDouble {
    server: Arc<MockServer>,
    state: Arc<Mutex<State>>,
}

/// The organisation slug the double serves.
pub const ORG: &str = "acme-org";
/// The Platform API token the double accepts (`Authorization: Bearer …`).
pub const API_TOKEN: &str = "platform-api-token-double";

fn openapi() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/turso-openapi.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// The documented JSON schema of an answer, with `components` alongside so `$ref`s resolve.
fn response_schema(template: &str, method: &str, status: u16) -> Option<Value> {
    let doc = openapi();
    let mut response = doc
        .pointer(&format!(
            "/paths/{}/{method}/responses/{status}",
            template.replace('/', "~1")
        ))?
        .clone();
    if let Some(reference) = response.get("$ref").and_then(Value::as_str) {
        response = doc.pointer(reference.trim_start_matches('#'))?.clone();
    }
    let schema = response
        .pointer("/content/application~1json/schema")?
        .clone();
    Some(json!({"allOf": [schema], "components": doc["components"]}))
}

impl std::fmt::Debug for TursoDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TursoDouble")
            .field("uri", &self.server.uri())
            .finish_non_exhaustive()
    }
}

impl TursoDouble {
    /// Starts the double with the given groups.
    pub async fn start(groups: &[&str]) -> Self {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State {
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..State::default()
        }));
        Mock::given(any())
            .respond_with(Responder {
                state: state.clone(),
            })
            .mount(&server)
            .await;
        Self {
            server: Arc::new(server),
            state,
        }
    }

    /// Base URL of the API.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Answers `rate` (0–1) of all requests with a fault drawn at random: 429 with
    /// `Retry-After: 1`, 500, 503, or an answer `slow` late (past the client's timeout).
    pub fn fail_at_rate(&self, rate: f64) {
        self.state.lock().unwrap().fault_rate = rate;
    }

    /// Faults answered so far, by kind (`429`, `500`, `503`, `slow`).
    pub fn faults_answered(&self) -> BTreeMap<&'static str, usize> {
        self.state.lock().unwrap().faults_answered.clone()
    }

    /// Makes every database this double creates (deletes) a namespace of `sqld`, created
    /// (deleted) through its admin API before the answer.
    pub fn serve_databases(&self, sqld: &crate::sqld::Sqld) {
        self.state.lock().unwrap().sqld_admin = Some(sqld.admin_addr());
    }

    /// The databases that exist, by name.
    pub fn databases(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .databases
            .keys()
            .cloned()
            .collect()
    }

    /// Queues faults for the next answers.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    /// `METHOD path` of every request received.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Answers that did not match the OpenAPI document.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// The token generation of a database (bumped by rotate).
    pub fn token_generation(&self, database: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .tokens
            .get(database)
            .copied()
            .unwrap_or(0)
    }
}

/// How late a slow answer of [`TursoDouble::fail_at_rate`] comes: past a client timeout of
/// 1 s (what the chaos suite configures).
pub const SLOW: Duration = Duration::from_millis(1500);

/// One request to the sqld admin API at `addr`: `true` when it answered 2xx.
fn sqld_admin(addr: &str, method: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let body = if method == "POST" { "{}" } else { "" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .is_some_and(|status| status.starts_with('2'))
}

struct Responder {
    state: Arc<Mutex<State>>,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.state.lock().unwrap();
        let method = request.method.as_str().to_ascii_lowercase();
        let path = request.url.path().to_owned();
        state.requests.push(format!("{} {path}", request.method));
        let authorized = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {API_TOKEN}"));
        if !authorized {
            return ResponseTemplate::new(401).set_body_json(json!({"error": "unauthorized"}));
        }
        let mut delay = None;
        let mut fault = state.faults.pop_front();
        if fault.is_none() && state.fault_rate > 0.0 && rand::random::<f64>() < state.fault_rate {
            fault = Some(match rand::random_range(0..4) {
                0 => Fault::RateLimited {
                    retry_after_secs: 1,
                },
                1 => Fault::Status(500),
                2 => Fault::Status(503),
                _ => Fault::Slow(SLOW),
            });
        }
        let kind = match &fault {
            Some(Fault::RateLimited { .. }) => Some("429"),
            Some(Fault::Status(500)) => Some("500"),
            Some(Fault::Status(_)) => Some("503"),
            Some(Fault::Slow(_)) => Some("slow"),
            None => None,
        };
        if let Some(kind) = kind {
            *state.faults_answered.entry(kind).or_default() += 1;
        }
        match fault {
            Some(Fault::RateLimited { retry_after_secs }) => {
                return ResponseTemplate::new(429)
                    .insert_header("Retry-After", retry_after_secs.to_string().as_str())
                    .set_body_json(json!({"error": "rate limited"}));
            }
            Some(Fault::Status(code)) => {
                return ResponseTemplate::new(code)
                    .set_body_json(json!({"error": "internal error"}));
            }
            Some(Fault::Slow(d)) => delay = Some(d),
            None => {}
        }
        let (template, status, body) = route(&mut state, &method, &path, request);
        if let Some(schema) = response_schema(&template, &method, status) {
            match jsonschema::draft202012::new(&schema) {
                Ok(validator) => {
                    for error in validator.iter_errors(&body) {
                        state.violations.push(format!(
                            "{method} {template} {status}: {error} at {}",
                            error.instance_path()
                        ));
                    }
                }
                Err(e) => state.violations.push(format!(
                    "{method} {template} {status}: schema does not compile: {e}"
                )),
            }
        } else if status != 200 || body != Value::Null {
            state
                .violations
                .push(format!("{method} {template} {status}: not documented"));
        }
        let mut answer = ResponseTemplate::new(status);
        if body != Value::Null {
            answer = answer.set_body_json(body);
        }
        match delay {
            Some(d) => answer.set_delay(d),
            None => answer,
        }
    }
}

fn not_found(name: &str) -> Value {
    json!({"error": format!("could not find database with name {name}: record not found")})
}

/// The behaviour of each documented endpoint: (OpenAPI path template, status, body).
fn route(state: &mut State, method: &str, path: &str, request: &Request) -> (String, u16, Value) {
    let base = format!("/v1/organizations/{ORG}/databases");
    let templ = "/v1/organizations/{organizationSlug}/databases";
    let query: BTreeMap<String, String> = request
        .url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let rest = path.strip_prefix(&base).unwrap_or("<unknown>");
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let database = |state: &State, name: &str| {
        state.databases.get(name).map(|(group, id)| {
            json!({"Name": name, "DbId": id, "Hostname": format!("{name}-{ORG}.turso.io"), "group": group,
                   "primaryRegion": "aws-eu-west-1", "regions": ["aws-eu-west-1"], "block_reads": false, "block_writes": false,
                   "delete_protection": false})
        })
    };
    match (method, parts.as_slice()) {
        ("post", []) => {
            let body: Value = request.body_json().unwrap_or(Value::Null);
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            let group = body["group"].as_str().unwrap_or_default().to_owned();
            if !state.groups.contains(&group) {
                return (templ.into(), 400, json!({"error": "group not found"}));
            }
            if state.databases.contains_key(&name) {
                return (
                    templ.into(),
                    409,
                    json!({"error": format!("database with name {name} already exists")}),
                );
            }
            if let Some(admin) = &state.sqld_admin
                && !sqld_admin(admin, "POST", &format!("/v1/namespaces/{name}/create"))
            {
                return (
                    templ.into(),
                    500,
                    json!({"error": "the database server failed"}),
                );
            }
            state.next_id += 1;
            let id = format!("0eb771dd-6906-11ee-8553-{:012x}", state.next_id);
            state.databases.insert(name.clone(), (group, id.clone()));
            (
                templ.into(),
                200,
                json!({"database": {"DbId": id, "Hostname": format!("{name}-{ORG}.turso.io"), "Name": name}}),
            )
        }
        ("get", []) => {
            let group = query.get("group");
            let list: Vec<Value> = state
                .databases
                .iter()
                .filter(|(_, (g, _))| group.is_none_or(|want| want == g))
                .filter_map(|(name, _)| database(state, name))
                .collect();
            (templ.into(), 200, json!({"databases": list}))
        }
        ("get", [name]) => {
            let t = format!("{templ}/{{databaseName}}");
            match database(state, name) {
                Some(db) => (t, 200, json!({"database": db})),
                None => (t, 404, not_found(name)),
            }
        }
        ("delete", [name]) => {
            let t = format!("{templ}/{{databaseName}}");
            match state.databases.remove(*name) {
                Some(_) => {
                    if let Some(admin) = &state.sqld_admin {
                        sqld_admin(admin, "DELETE", &format!("/v1/namespaces/{name}"));
                    }
                    (t, 200, json!({"database": name}))
                }
                None => (t, 404, not_found(name)),
            }
        }
        ("post", [name, "auth", "tokens"]) => {
            let t = format!("{templ}/{{databaseName}}/auth/tokens");
            if !state.databases.contains_key(*name) {
                return (t, 404, not_found(name));
            }
            let expiration = query
                .get("expiration")
                .cloned()
                .unwrap_or_else(|| "never".into());
            let valid = expiration == "never"
                || expiration
                    .trim_end_matches(['m', 'h', 'd', 'w', 's'])
                    .parse::<u64>()
                    .is_ok();
            if !valid {
                return (t, 400, json!({"error": "Invalid expiration format"}));
            }
            let scope = query
                .get("authorization")
                .cloned()
                .unwrap_or_else(|| "full-access".into());
            let generation = state.tokens.get(*name).copied().unwrap_or(0);
            (
                t,
                200,
                json!({"jwt": format!("jwt.{name}.{scope}.{generation}.{expiration}")}),
            )
        }
        ("post", [name, "auth", "rotate"]) => {
            let t = format!("{templ}/{{databaseName}}/auth/rotate");
            if !state.databases.contains_key(*name) {
                return (t, 404, not_found(name));
            }
            *state.tokens.entry((*name).to_owned()).or_default() += 1;
            (t, 200, Value::Null)
        }
        ("get", [name, "usage"]) => {
            let t = format!("{templ}/{{databaseName}}/usage");
            match state.databases.get(*name) {
                Some((_, id)) => {
                    let usage = json!({"rows_read": 10, "rows_written": 4, "storage_bytes": 8192, "bytes_synced": 0});
                    (
                        t,
                        200,
                        json!({"database": {"uuid": id, "instances": [{"uuid": id, "usage": usage}], "total": usage}}),
                    )
                }
                None => (t, 404, not_found(name)),
            }
        }
        _ => (
            path.to_owned(),
            404,
            json!({"error": "no such endpoint in the double"}),
        ),
    }
}
