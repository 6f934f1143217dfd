//! Conformance of `fleet-protocol` with the real `@objectstack/spec@4.0.1` (fetched by `just
//! spec-fixtures` into `target/`; `FLEET_SPEC_DIR` points elsewhere).
//!
//! Two oracles, each for what it describes:
//! - upstream's JSON Schemas describe *parsed output* (defaults present, no unknown keys): every
//!   document we normalize must validate against the schema file of the same name;
//! - upstream's runtime (the Zod schemas in `dist/`, run by node) decides which *inputs* are
//!   valid and what they parse to: for every document of the corpus and every mutation generated
//!   from it, it must accept exactly what we accept, and produce the same normalized document.
//!   The fleet may be stricter only through its own rules, whose issue codes are listed in
//!   `FLEET_RULE_CODES`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fleet_protocol::registry::{SPECS, SpecEntry, find};
use fleet_protocol::validate::FLEET_RULE_CODES;
use fleet_protocol::{DeployValidationIssue, IssueSeverity, Rejected};
use serde_json::{Value, json};

fn spec_dir() -> PathBuf {
    let dir = std::env::var_os("FLEET_SPEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/spec-fixtures/spec-4.0.1/package")
        });
    assert!(
        dir.join("json-schema").is_dir() && dir.join("dist").is_dir(),
        "upstream spec fixtures missing at {}: run `just spec-fixtures`",
        dir.display()
    );
    dir
}

fn corpus() -> BTreeMap<String, Vec<Value>> {
    let text = include_str!("fixtures/corpus.json");
    serde_json::from_str(text).expect("corpus.json is JSON")
}

/// Upstream's Zod runtime, asked in one batch.
fn ask_zod(requests: &[(&'static str, &'static str, Value)]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/zod-oracle.cjs");
    let mut child = Command::new("node")
        .arg(script)
        .arg(spec_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (Node.js is a test prerequisite)");
    let mut stdin = child.stdin.take().unwrap();
    let lines: Vec<String> = requests
        .iter()
        .enumerate()
        .map(|(id, (module, export, doc))| {
            json!({"id": id, "module": module, "export": export, "doc": doc}).to_string()
        })
        .collect();
    let writer = std::thread::spawn(move || {
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let answers: Vec<Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    writer.join().unwrap();
    assert!(
        child.wait().unwrap().success(),
        "oracle exited with an error"
    );
    assert_eq!(
        answers.len(),
        requests.len(),
        "oracle answered every request"
    );
    for answer in &answers {
        assert!(answer.get("error").is_none(), "oracle failed: {answer}");
    }
    answers
}

/// Mutations of a valid document: keys removed, values of the wrong type or out of range, unknown
/// keys added, down to `depth` levels.
fn mutations(doc: &Value, depth: usize) -> Vec<Value> {
    const REPLACEMENTS: &[fn() -> Value] = &[
        || Value::Null,
        || json!(12345),
        || json!(1.5),
        || json!(-1),
        || json!(""),
        || json!("Not A Valid-Value"),
        || json!(true),
        || json!([]),
        || json!({}),
        || json!(["x"]),
    ];
    let mut out = Vec::new();
    match doc {
        Value::Object(map) => {
            let mut with_unknown = map.clone();
            with_unknown.insert("zz_unknown_key".into(), json!(1));
            out.push(Value::Object(with_unknown));
            for (key, value) in map {
                let mut removed = map.clone();
                removed.shift_remove(key);
                out.push(Value::Object(removed));
                for replacement in REPLACEMENTS {
                    let mut replaced = map.clone();
                    replaced.insert(key.clone(), replacement());
                    out.push(Value::Object(replaced));
                }
                if depth > 1 {
                    for inner in mutations(value, depth - 1) {
                        let mut nested = map.clone();
                        nested.insert(key.clone(), inner);
                        out.push(Value::Object(nested));
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() && depth > 1 => {
            for inner in mutations(&items[0], depth - 1) {
                let mut changed = items.clone();
                changed[0] = inner;
                out.push(Value::Array(changed));
            }
        }
        Value::String(_) => out.extend([json!("nope"), json!(1), Value::Null, json!("")]),
        _ => {}
    }
    out
}

/// Numbers compare by value (`5` and `5.0` are the same JavaScript number); maps ignore order.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn errors_of(rejected: &Rejected) -> Vec<&DeployValidationIssue> {
    rejected
        .issues
        .iter()
        .filter(|i| i.severity == IssueSeverity::Error)
        .collect()
}

fn only_fleet_rules(rejected: &Rejected) -> bool {
    errors_of(rejected).iter().all(|i| {
        i.code
            .as_deref()
            .is_some_and(|c| FLEET_RULE_CODES.contains(&c))
    })
}

#[test]
fn every_mapped_upstream_schema_exists_and_every_type_has_fixtures() {
    let dir = spec_dir().join("json-schema");
    let corpus = corpus();
    let mut checked = 0;
    for entry in SPECS {
        if let Some(file) = entry.upstream_file {
            assert!(
                dir.join(file).is_file(),
                "{}: upstream file {file} is missing",
                entry.name
            );
            checked += 1;
        }
        if entry.zod_export.is_some() {
            assert!(
                corpus.contains_key(entry.name),
                "{}: no fixture documents in corpus.json",
                entry.name
            );
        }
    }
    println!(
        "conformance: {checked} upstream JSON Schemas mapped, {} types",
        SPECS.len()
    );
}

#[test]
fn our_output_validates_against_upstream_json_schemas() {
    let dir = spec_dir().join("json-schema");
    let mut documents = 0;
    let mut schemas = 0;
    for (name, docs) in corpus() {
        let entry = find(&name).unwrap_or_else(|| panic!("corpus names unknown type {name}"));
        let Some(file) = entry.upstream_file else {
            continue;
        };
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        schemas += 1;
        for doc in docs {
            let normalized = entry
                .validate(&doc)
                .unwrap_or_else(|r| panic!("{name}: corpus document invalid: {r}\n{doc}"));
            let problems: Vec<String> = validator
                .iter_errors(&normalized.json)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(
                problems.is_empty(),
                "{name}: our output fails upstream {file}: {problems:#?}\n{}",
                normalized.json
            );
            documents += 1;
        }
    }
    println!(
        "conformance: {documents} normalized documents valid under {schemas} upstream JSON Schemas"
    );
}

#[derive(Default)]
struct Tally {
    agreed_valid: usize,
    agreed_invalid: usize,
    fleet_stricter: usize,
    disagreements: Vec<String>,
}

#[test]
fn upstream_runtime_and_our_validation_agree_on_every_input() {
    // Every (entry, document) pair: the corpus and its mutations.
    let mut cases: Vec<(&'static SpecEntry, Value)> = Vec::new();
    for (name, docs) in corpus() {
        let entry = find(&name).unwrap();
        if entry.zod_export.is_none() {
            continue;
        }
        for doc in docs {
            for mutated in mutations(&doc, 3) {
                cases.push((entry, mutated));
            }
            cases.push((entry, doc));
        }
    }
    // The oracle's verdict for a bundle also covers its objects, which the fleet validates as
    // ObjectStack objects (upstream's DeployBundleSchema types them as free-form records).
    let object_export = find("Object").unwrap().zod_export.unwrap();
    let mut requests = Vec::new();
    let mut object_requests: Vec<Vec<usize>> = Vec::new();
    for (entry, doc) in &cases {
        let (module, export) = entry.zod_export.unwrap();
        requests.push((module, export, doc.clone()));
        let mut extra = Vec::new();
        if entry.name == "DeployBundle" {
            for object in doc
                .get("objects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // Upstream's bundle takes objects as free-form records; the fleet reads one
                // without `fields` as an object with none (only the system columns).
                let mut object = object.clone();
                if let Some(map) = object.as_object_mut() {
                    map.entry("fields").or_insert_with(|| json!({}));
                }
                extra.push(requests.len());
                requests.push((object_export.0, object_export.1, object));
            }
        }
        object_requests.push(extra);
    }
    let answers = ask_zod(&requests);

    let mut tally = Tally::default();
    let mut request_index = 0;
    for ((entry, doc), extra) in cases.iter().zip(&object_requests) {
        let answer = &answers[request_index];
        request_index += 1 + extra.len();
        let upstream_ok = answer["success"] == json!(true)
            && extra.iter().all(|&i| answers[i]["success"] == json!(true));
        let ours = entry.validate(doc);
        match (upstream_ok, &ours) {
            (true, Ok(normalized)) => {
                if same_json(&normalized.json, &answer["data"]) {
                    tally.agreed_valid += 1;
                } else {
                    tally.disagreements.push(format!(
                        "{}: same verdict, different output\n  input:    {doc}\n  upstream: {}\n  ours:     {}",
                        entry.name, answer["data"], normalized.json
                    ));
                }
            }
            (false, Err(_)) => tally.agreed_invalid += 1,
            (true, Err(rejected)) if only_fleet_rules(rejected) => tally.fleet_stricter += 1,
            (true, Err(rejected)) => tally.disagreements.push(format!(
                "{}: upstream accepts, we reject\n  input: {doc}\n  ours:  {:?}",
                entry.name,
                errors_of(rejected)
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            )),
            (false, Ok(_)) => tally.disagreements.push(format!(
                "{}: upstream rejects, we accept\n  input:    {doc}\n  upstream: {}",
                entry.name, answer["issues"]
            )),
        }
    }
    println!(
        "conformance: {} documents against upstream's runtime — {} valid in both, {} invalid in both, \
         {} rejected only by fleet rules, {} disagreements",
        cases.len(),
        tally.agreed_valid,
        tally.agreed_invalid,
        tally.fleet_stricter,
        tally.disagreements.len()
    );
    assert!(
        tally.disagreements.is_empty(),
        "{} disagreements with upstream; the first ones:\n{}",
        tally.disagreements.len(),
        tally
            .disagreements
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn invalid_documents_report_every_problem_with_zod_codes_and_paths() {
    let entry = find("TenantProvisioningRequest").unwrap();
    let rejected = entry
        .validate(&json!({"plan": "gold", "region": "mars", "adminEmail": "not-an-email", "displayName": 7}))
        .unwrap_err();
    let mut got: Vec<(String, String)> = errors_of(&rejected)
        .iter()
        .map(|i| (i.path.clone(), i.code.clone().unwrap()))
        .collect();
    got.sort();
    let want = [
        ("adminEmail", "invalid_format"),
        ("displayName", "invalid_type"),
        ("orgId", "invalid_type"),
        ("plan", "invalid_value"),
        ("region", "invalid_value"),
    ];
    assert_eq!(got, want.map(|(p, c)| (p.to_owned(), c.to_owned())));
}
