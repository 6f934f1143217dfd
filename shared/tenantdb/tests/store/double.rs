//! A local HTTP double of the Turso Platform API (test support, never shipped), built from the
//! API's OpenAPI document (`tests/fixtures/turso-openapi.json`): the database and token endpoints
//! the fleet uses, with their documented request and response shapes, and switchable faults
//! (429 with Retry-After, 500/503, slow answers past the client's timeout). Every answer it gives
//! is checked against the document's response schema for that path, method and status; a
//! mismatch is recorded and fails the test that caused it.

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
    RateLimited { retry_after_secs: u64 },
    /// A 5xx status.
    Status(u16),
    /// Answer correctly, but only after this delay.
    Slow(Duration),
}

#[derive(Debug, Default)]
struct State {
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

pub const ORG: &str = "acme-org";
pub const API_TOKEN: &str = "platform-api-token-double";

fn openapi() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/turso-openapi.json");
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
        match state.faults.pop_front() {
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
                Some(_) => (t, 200, json!({"database": name})),
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
