//! Validation that reports every problem at once, each with a path and a code.
//!
//! A document goes through three stages, and each stage reports all it finds:
//!
//! 1. **Shape**: the JSON is checked against the *input* JSON Schema of the target type, which
//!    is generated from the Rust type itself ([`input_schema`]), so the types and the checks can
//!    never drift apart. Every violation becomes a [`DeployValidationIssue`] whose `path` is the
//!    dotted location (`objects.project_task.fields.name`: array elements that carry a `name` are
//!    addressed by it, others by index) and whose `code` is the one upstream's runtime (Zod)
//!    would use (`invalid_type`, `invalid_value`, `invalid_format`, `too_small`, `too_big`).
//! 2. **Decode**: only a document without shape errors is deserialized; upstream defaults are
//!    filled in by serde and unknown keys are dropped, as upstream does. Each unknown key is
//!    reported as a `warning` (`unrecognized_keys`) so a mis-cased `auth_token` does not vanish
//!    silently; warnings never make a document invalid.
//! 3. **Semantics**: [`Spec::check`] runs the rules a JSON Schema cannot express (references
//!    between objects, unique names, fleet rules), again collecting every issue.
//!
//! The same schema generation serves `fleetctl schema export` ([`export_schema`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::deploy::{DeployValidationIssue, DeployValidationResult, IssueSeverity};

/// Code of the issue raised when a tenant id breaks the fleet's (stricter than upstream) rule.
pub const FLEET_TENANT_ID_CODE: &str = "invalid_tenant_id";

/// Codes of the fleet's own rules, which go beyond upstream's: a document upstream accepts may
/// still get these (and only these) errors.
pub const FLEET_RULE_CODES: &[&str] = &[
    FLEET_TENANT_ID_CODE,
    "missing_reference",
    "unknown_reference",
    "duplicate_name",
    "name_mismatch",
    "unknown_field",
    "reserved_name",
    "empty_index",
    "invalid_target",
    "checksum_mismatch",
    crate::tenant::TOO_LONG_CODE,
];

/// A list of validation issues.
pub type DeployValidationIssueList = Vec<DeployValidationIssue>;

/// Largest integer upstream accepts (`Number.MAX_SAFE_INTEGER`).
pub const MAX_SAFE_INTEGER: i64 = 9_007_199_254_740_991;

/// A protocol type with an upstream schema of the same name.
pub trait Spec: Serialize + DeserializeOwned + JsonSchema + 'static {
    /// The upstream schema name (`DeployBundle`, `Tenant`, …).
    const SPEC_NAME: &'static str;

    /// Rules beyond the JSON shape; push every problem into `checks`.
    fn check(&self, checks: &mut Checks) {
        let _ = checks;
    }

    /// Rules over the raw document that must run even when its shape is wrong (so that nested
    /// documents, like a bundle's objects, are reported together with top-level problems).
    fn check_input(input: &Value, checks: &mut Checks) {
        let _ = (input, checks);
    }
}

/// A successfully validated value and the warnings found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T> {
    /// The decoded value, upstream defaults applied.
    pub value: T,
    /// Warnings (unknown keys and the like); never errors.
    pub warnings: Vec<DeployValidationIssue>,
}

/// A document that failed validation, with every issue found (errors and warnings).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{type_name} is invalid: {}", summarize(.issues))]
pub struct Rejected {
    /// The upstream schema name the document was validated against.
    pub type_name: &'static str,
    /// Every issue, in document order for shape issues, then semantic ones.
    pub issues: Vec<DeployValidationIssue>,
}

impl Rejected {
    /// The issues as an upstream `DeployValidationResult`.
    pub fn to_result(&self) -> DeployValidationResult {
        DeployValidationResult::from_issues(self.issues.clone())
    }

    /// Only the error issues.
    pub fn errors(&self) -> impl Iterator<Item = &DeployValidationIssue> {
        self.issues
            .iter()
            .filter(|i| i.severity == IssueSeverity::Error)
    }
}

fn summarize(issues: &[DeployValidationIssue]) -> String {
    issues
        .iter()
        .filter(|i| i.severity == IssueSeverity::Error)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects semantic issues while walking a value; keeps the current path.
#[derive(Debug, Default)]
pub struct Checks {
    path: Vec<String>,
    issues: Vec<DeployValidationIssue>,
}

impl Checks {
    /// Runs `f` with `segment` appended to the current path.
    pub fn at<R>(&mut self, segment: impl fmt::Display, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push(segment.to_string());
        let result = f(self);
        self.path.pop();
        result
    }

    /// Runs `f` with several segments appended to the current path.
    pub fn at_path<R>(&mut self, segments: &[&str], f: impl FnOnce(&mut Self) -> R) -> R {
        let depth = self.path.len();
        self.path.extend(segments.iter().map(|s| (*s).to_owned()));
        let result = f(self);
        self.path.truncate(depth);
        result
    }

    /// Records an error at the current path.
    pub fn error(&mut self, code: &str, message: impl Into<String>) {
        self.push(IssueSeverity::Error, code, message.into());
    }

    /// Records a warning at the current path.
    pub fn warning(&mut self, code: &str, message: impl Into<String>) {
        self.push(IssueSeverity::Warning, code, message.into());
    }

    fn push(&mut self, severity: IssueSeverity, code: &str, message: String) {
        self.issues.push(DeployValidationIssue {
            severity,
            path: self.path.join("."),
            message,
            code: Some(code.to_owned()),
        });
    }

    /// Records an issue found by a nested validation, prefixing the current path to its own.
    pub fn push_nested(&mut self, mut issue: DeployValidationIssue) {
        let prefix = self.path.join(".");
        if !prefix.is_empty() {
            issue.path = if issue.path.is_empty() {
                prefix
            } else {
                format!("{prefix}.{}", issue.path)
            };
        }
        self.issues.push(issue);
    }

    /// Every issue recorded so far.
    pub fn into_issues(self) -> Vec<DeployValidationIssue> {
        self.issues
    }
}

/// Validates `input` as a `T`: every shape, decode and semantic problem at once.
pub fn parse_value<T: Spec>(input: &Value) -> Result<Checked<T>, Rejected> {
    let mut issues = shape_issues::<T>(input);
    let mut raw_checks = Checks::default();
    T::check_input(input, &mut raw_checks);
    issues.extend(raw_checks.into_issues());
    let reject = |issues| Rejected {
        type_name: T::SPEC_NAME,
        issues,
    };
    if has_errors(&issues) {
        return Err(reject(issues));
    }
    let normalized = normalize_integers(input.clone());
    let value: T = match serde_path_to_error::deserialize(normalized) {
        Ok(value) => value,
        Err(err) => {
            issues.push(DeployValidationIssue {
                severity: IssueSeverity::Error,
                path: dotted_path(
                    input,
                    err.path().iter().map(|segment| match segment {
                        serde_path_to_error::Segment::Seq { index } => index.to_string(),
                        serde_path_to_error::Segment::Map { key } => key.clone(),
                        serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                        serde_path_to_error::Segment::Unknown => "?".to_owned(),
                    }),
                ),
                message: err.inner().to_string(),
                code: Some("invalid_value".to_owned()),
            });
            return Err(reject(issues));
        }
    };
    let mut checks = Checks::default();
    value.check(&mut checks);
    issues.extend(checks.into_issues());
    if has_errors(&issues) {
        Err(reject(issues))
    } else {
        Ok(Checked {
            value,
            warnings: issues,
        })
    }
}

/// Validates JSON text as a `T`; text that is not JSON is one `invalid_json` issue at the root.
pub fn parse_str<T: Spec>(text: &str) -> Result<Checked<T>, Rejected> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => parse_value::<T>(&value),
        Err(err) => Err(Rejected {
            type_name: T::SPEC_NAME,
            issues: vec![DeployValidationIssue {
                severity: IssueSeverity::Error,
                path: String::new(),
                message: format!("not JSON: {err}"),
                code: Some("invalid_json".to_owned()),
            }],
        }),
    }
}

/// Validates a value already in memory (e.g. built by code) the same way a document would be.
pub fn check_value<T: Spec>(value: &T) -> Result<Vec<DeployValidationIssue>, Rejected> {
    let json = serde_json::to_value(value).map_err(|err| Rejected {
        type_name: T::SPEC_NAME,
        issues: vec![DeployValidationIssue {
            severity: IssueSeverity::Error,
            path: String::new(),
            message: format!("cannot serialize: {err}"),
            code: Some("custom".to_owned()),
        }],
    })?;
    parse_value::<T>(&json).map(|checked| checked.warnings)
}

fn has_errors(issues: &[DeployValidationIssue]) -> bool {
    issues.iter().any(|i| i.severity == IssueSeverity::Error)
}

/// The JSON Schema a `T` document must satisfy, as exported by `fleetctl schema export`:
/// draft 2020-12, optional properties never nullable (upstream rejects `null`), a description on
/// every property, integers bounded to JavaScript's safe range.
pub fn export_schema<T: JsonSchema>() -> Value {
    let settings = SchemaSettings::draft2020_12();
    let mut schema = settings
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    rewrite_schema(&mut schema, false);
    schema
}

/// The schema used for validation: [`export_schema`] plus `additionalProperties: false` on
/// every object with declared properties, so unknown keys surface (as warnings).
pub fn input_schema<T: JsonSchema>() -> Value {
    let mut schema = export_schema::<T>();
    rewrite_schema(&mut schema, true);
    schema
}

fn rewrite_schema(node: &mut Value, close_objects: bool) {
    match node {
        Value::Object(map) => {
            for child in map.values_mut() {
                rewrite_schema(child, close_objects);
            }
            if close_objects {
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".to_owned(), Value::Bool(false));
                }
            } else {
                strip_null(map);
                consts_to_enum(map);
                bound_integers(map);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rewrite_schema(item, close_objects)),
        _ => {}
    }
}

/// Upstream never accepts `null` for an optional property: undo schemars' `Option` nullability.
fn strip_null(map: &mut Map<String, Value>) {
    let is_null_schema = |v: &Value| {
        v.get("type") == Some(&Value::from("null")) && v.as_object().is_some_and(|o| o.len() == 1)
    };
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let single = types.remove(0);
            map.insert("type".to_owned(), single);
        }
    }
    if let Some(Value::Array(options)) = map.get_mut("enum") {
        options.retain(|v| !v.is_null());
    }
    for keyword in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = map.get_mut(keyword) {
            let before = options.len();
            options.retain(|v| !is_null_schema(v) && v.get("const") != Some(&Value::Null));
            if options.len() == 1
                && before > 1
                && let Some(Value::Object(single)) = options.pop()
            {
                map.remove(keyword);
                for (k, v) in single {
                    map.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// `oneOf: [{const: a, description}, …]` (schemars' shape for documented enums) → `enum: [a, …]`,
/// which reads better in errors and in exported schemas.
fn consts_to_enum(map: &mut Map<String, Value>) {
    let Some(Value::Array(options)) = map.get("oneOf") else {
        return;
    };
    let consts: Option<Vec<Value>> = options
        .iter()
        .map(|o| {
            let obj = o.as_object()?;
            let only_const = obj
                .keys()
                .all(|k| matches!(k.as_str(), "const" | "description" | "type"));
            only_const.then(|| obj.get("const").cloned()).flatten()
        })
        .collect();
    if let Some(consts) = consts {
        map.remove("oneOf");
        map.insert("type".to_owned(), Value::from("string"));
        map.insert("enum".to_owned(), Value::Array(consts));
    }
}

fn bound_integers(map: &mut Map<String, Value>) {
    if map.get("type") != Some(&Value::from("integer")) {
        return;
    }
    map.remove("format");
    map.entry("maximum")
        .or_insert(Value::from(MAX_SAFE_INTEGER));
    map.entry("minimum")
        .or_insert(Value::from(-MAX_SAFE_INTEGER));
}

/// `1.0` is an integer to upstream (a JavaScript number); make it one for serde too.
fn normalize_integers(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64 {
                Value::from(f as i64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_integers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize_integers(v)))
                .collect(),
        ),
        other => other,
    }
}

type SharedValidator = Arc<jsonschema::Validator>;

static VALIDATORS: LazyLock<RwLock<HashMap<&'static str, SharedValidator>>> =
    LazyLock::new(Default::default);

fn validator_for<T: Spec>() -> SharedValidator {
    if let Some(v) = VALIDATORS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(T::SPEC_NAME)
    {
        return v.clone();
    }
    let schema = input_schema::<T>();
    let validator =
        Arc::new(jsonschema::draft202012::new(&schema).unwrap_or_else(|err| {
            panic!("generated schema for {} must compile: {err}", T::SPEC_NAME)
        }));
    VALIDATORS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(T::SPEC_NAME)
        .or_insert(validator)
        .clone()
}

fn shape_issues<T: Spec>(input: &Value) -> Vec<DeployValidationIssue> {
    use jsonschema::error::ValidationErrorKind as Kind;

    let validator = validator_for::<T>();
    let mut issues = Vec::new();
    for err in validator.iter_errors(input) {
        let pointer: Vec<String> = pointer_segments(err.instance_path().as_str());
        let at = |extra: Option<&str>| {
            dotted_path(
                input,
                pointer.iter().cloned().chain(extra.map(str::to_owned)),
            )
        };
        let received = describe(err.instance());
        let (severity, path, code, message) = match err.kind() {
            Kind::AdditionalProperties { unexpected } => {
                for key in unexpected {
                    issues.push(DeployValidationIssue {
                        severity: IssueSeverity::Warning,
                        path: at(Some(key)),
                        message: format!(
                            "unknown key {key:?} is ignored (not part of {})",
                            T::SPEC_NAME
                        ),
                        code: Some("unrecognized_keys".to_owned()),
                    });
                }
                continue;
            }
            Kind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                (
                    IssueSeverity::Error,
                    at(Some(name)),
                    "invalid_type",
                    "required, but missing".to_owned(),
                )
            }
            Kind::Type { kind } => (
                IssueSeverity::Error,
                at(None),
                "invalid_type",
                format!("expected {}, received {received}", type_kind(kind)),
            ),
            Kind::Enum { options } => (
                IssueSeverity::Error,
                at(None),
                "invalid_value",
                format!("expected one of {}, received {received}", list(options)),
            ),
            Kind::Constant { expected_value } => (
                IssueSeverity::Error,
                at(None),
                "invalid_value",
                format!("expected {expected_value}, received {received}"),
            ),
            Kind::Pattern { pattern } if pattern == crate::ids::TENANT_ID_PATTERN => (
                IssueSeverity::Error,
                at(None),
                FLEET_TENANT_ID_CODE,
                format!(
                    "{received} is not a fleet tenant id (1-48 lowercase letters, digits or inner dashes)"
                ),
            ),
            Kind::Pattern { pattern } => (
                IssueSeverity::Error,
                at(None),
                "invalid_format",
                format!("{received} does not match {pattern}"),
            ),
            Kind::MinLength { limit } => (
                IssueSeverity::Error,
                at(None),
                "too_small",
                format!("expected at least {limit} character(s), received {received}"),
            ),
            Kind::MaxLength { limit } => (
                IssueSeverity::Error,
                at(None),
                "too_big",
                format!("expected at most {limit} character(s), received {received}"),
            ),
            Kind::Minimum { limit } => (
                IssueSeverity::Error,
                at(None),
                "too_small",
                format!("expected >= {limit}, received {received}"),
            ),
            Kind::ExclusiveMinimum { limit } => (
                IssueSeverity::Error,
                at(None),
                "too_small",
                format!("expected > {limit}, received {received}"),
            ),
            Kind::Maximum { limit } => (
                IssueSeverity::Error,
                at(None),
                "too_big",
                format!("expected <= {limit}, received {received}"),
            ),
            Kind::ExclusiveMaximum { limit } => (
                IssueSeverity::Error,
                at(None),
                "too_big",
                format!("expected < {limit}, received {received}"),
            ),
            Kind::MinItems { limit } => (
                IssueSeverity::Error,
                at(None),
                "too_small",
                format!("expected at least {limit} item(s)"),
            ),
            Kind::MaxItems { limit } => (
                IssueSeverity::Error,
                at(None),
                "too_big",
                format!("expected at most {limit} item(s)"),
            ),
            Kind::PropertyNames { error } => {
                let key = error.instance().as_str().unwrap_or_default().to_owned();
                (
                    IssueSeverity::Error,
                    at(Some(&key)),
                    "invalid_key",
                    format!("invalid key {key:?}: {}", error.masked()),
                )
            }
            _ => (
                IssueSeverity::Error,
                at(None),
                "invalid_value",
                err.masked().to_string(),
            ),
        };
        issues.push(DeployValidationIssue {
            severity,
            path,
            message,
            code: Some(code.to_owned()),
        });
    }
    issues
}

fn type_kind(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => t.to_string(),
        jsonschema::error::TypeKind::Multiple(set) => set
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

fn list(options: &Value) -> String {
    const SHOWN: usize = 8;
    match options {
        Value::Array(items) if items.len() > SHOWN + 2 => format!(
            "the {} allowed values ({}, …)",
            items.len(),
            items
                .iter()
                .take(SHOWN)
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Array(items) => items
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn describe(value: &Value) -> String {
    let text = match value {
        Value::Null => return "null".to_owned(),
        Value::Object(_) => return "an object".to_owned(),
        Value::Array(_) => return "an array".to_owned(),
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Turns raw segments into the dotted path upstream uses, naming array elements by their
/// `name` when they have one (`objects.account` rather than `objects.0`).
fn dotted_path(root: &Value, segments: impl IntoIterator<Item = String>) -> String {
    let mut node = Some(root);
    let mut parts = Vec::new();
    for segment in segments {
        let next = match node {
            Some(Value::Array(items)) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            Some(Value::Object(map)) => map.get(&segment),
            _ => None,
        };
        let named = match (node, next) {
            (Some(Value::Array(_)), Some(element)) => element
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty() && !n.contains('.'))
                .map(str::to_owned),
            _ => None,
        };
        parts.push(named.unwrap_or(segment));
        node = next;
    }
    parts.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_name_array_elements_by_their_name() {
        let doc = json!({"objects": [{"name": "project_task", "fields": {"title": {}}}, {"x": 1}]});
        let segs = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            dotted_path(&doc, segs(&["objects", "0", "fields", "title"])),
            "objects.project_task.fields.title"
        );
        assert_eq!(
            dotted_path(&doc, segs(&["objects", "1", "x"])),
            "objects.1.x"
        );
        assert_eq!(
            dotted_path(&doc, segs(&["missing", "deeper"])),
            "missing.deeper"
        );
    }

    #[test]
    fn integral_floats_become_integers() {
        assert_eq!(
            normalize_integers(json!({"a": [1.0, 1.5]})),
            json!({"a": [1, 1.5]})
        );
    }
}
