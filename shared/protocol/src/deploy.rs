//! Part C: deploy bundles, diffs, migration plans, validation results and deploy status
//! (upstream `system/deploy-bundle.zod.ts`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::object::ObjectDefinition;
use crate::time::Timestamp;
use crate::validate::{Checks, Spec, parse_value};
use crate::wire::{default_true, present};

/// Deployment lifecycle status of one tenant's deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Bundle validation in progress.
    Validating,
    /// Comparing desired and current schema.
    Diffing,
    /// Executing DDL.
    Migrating,
    /// Writing the metadata registry.
    Registering,
    /// Deployed and live.
    Ready,
    /// Failed at some stage.
    Failed,
    /// Rolling back to the previous schema.
    RollingBack,
}

impl Spec for DeployStatus {
    const SPEC_NAME: &'static str = "DeployStatusEnum";
}

/// Kind of entity a schema change touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    /// An object (table).
    Object,
    /// A field (column).
    Field,
    /// An index.
    Index,
    /// A view.
    View,
    /// A flow.
    Flow,
    /// A permission.
    Permission,
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    /// The entity is new.
    Added,
    /// The entity changed.
    Modified,
    /// The entity is gone.
    Removed,
}

/// One entity's change between current and desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaChange {
    /// Entity type.
    pub entity_type: EntityType,
    /// Entity name.
    #[schemars(length(min = 1))]
    pub entity_name: String,
    /// Parent entity (the object of a field change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_entity: Option<String>,
    /// Change type.
    pub change_type: ChangeType,
    /// Previous value (modified/removed).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub old_value: Option<Value>,
    /// New value (added/modified).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub new_value: Option<Value>,
}

impl Spec for SchemaChange {
    const SPEC_NAME: &'static str = "SchemaChange";
}

/// Counts of a diff's changes by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiffSummary {
    /// Number of added entities.
    #[serde(default)]
    pub added: u64,
    /// Number of modified entities.
    #[serde(default)]
    pub modified: u64,
    /// Number of removed entities.
    #[serde(default)]
    pub removed: u64,
}

/// What changed between current and desired state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployDiff {
    /// Every change.
    #[serde(default)]
    pub changes: Vec<SchemaChange>,
    /// Counts by change type.
    pub summary: DiffSummary,
    /// Whether any change is breaking (drops data or narrows a type).
    #[serde(default)]
    pub has_breaking_changes: bool,
}

impl DeployDiff {
    /// A diff over `changes` with its summary computed from them.
    pub fn new(changes: Vec<SchemaChange>, has_breaking_changes: bool) -> Self {
        let mut summary = DiffSummary::default();
        for change in &changes {
            match change.change_type {
                ChangeType::Added => summary.added += 1,
                ChangeType::Modified => summary.modified += 1,
                ChangeType::Removed => summary.removed += 1,
            }
        }
        Self {
            changes,
            summary,
            has_breaking_changes,
        }
    }
}

impl Spec for DeployDiff {
    const SPEC_NAME: &'static str = "DeployDiff";
}

/// One DDL statement of a migration plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatement {
    /// The SQL to execute.
    #[schemars(length(min = 1))]
    pub sql: String,
    /// Whether the statement can be reversed.
    #[serde(default = "default_true")]
    pub reversible: bool,
    /// SQL that reverses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_sql: Option<String>,
    /// Execution order (lower first).
    pub order: u64,
}

impl Spec for MigrationStatement {
    const SPEC_NAME: &'static str = "MigrationStatement";
}

/// An ordered list of DDL statements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPlan {
    /// The statements, in execution order.
    #[serde(default)]
    pub statements: Vec<MigrationStatement>,
    /// SQL dialect of the statements (any non-empty string upstream; `sqlite` here).
    #[schemars(length(min = 1))]
    pub dialect: String,
    /// Whether the whole plan can be rolled back.
    #[serde(default = "default_true")]
    pub reversible: bool,
    /// Estimated execution time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_duration_ms: Option<u64>,
}

impl Spec for MigrationPlan {
    const SPEC_NAME: &'static str = "MigrationPlan";
}

/// Severity of a validation issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IssueSeverity {
    /// Makes the document invalid.
    Error,
    /// Worth attention; the document stays valid.
    Warning,
    /// A note only: counted neither as an error nor as a warning.
    Info,
}

/// One validation problem, with the path where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployValidationIssue {
    /// How serious it is: an `error` makes the document invalid.
    pub severity: IssueSeverity,
    /// Dotted path, e.g. `objects.project_task.fields.name`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// Machine-readable code (upstream's Zod codes, or a fleet rule's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl fmt::Display for DeployValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        Ok(())
    }
}

impl Spec for DeployValidationIssue {
    const SPEC_NAME: &'static str = "DeployValidationIssue";
}

/// The result of validating a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployValidationResult {
    /// Whether there were no errors.
    pub valid: bool,
    /// Every issue.
    #[serde(default)]
    pub issues: Vec<DeployValidationIssue>,
    /// Number of errors.
    #[serde(default)]
    pub error_count: u64,
    /// Number of warnings.
    #[serde(default)]
    pub warning_count: u64,
}

impl DeployValidationResult {
    /// A result over `issues`, counts and validity computed from them.
    pub fn from_issues(issues: Vec<DeployValidationIssue>) -> Self {
        let count = |s| issues.iter().filter(|i| i.severity == s).count() as u64;
        let error_count = count(IssueSeverity::Error);
        let warning_count = count(IssueSeverity::Warning);
        Self {
            valid: error_count == 0,
            issues,
            error_count,
            warning_count,
        }
    }
}

impl Spec for DeployValidationResult {
    const SPEC_NAME: &'static str = "DeployValidationResult";
}

/// Metadata about a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployManifest {
    /// Deployment version.
    #[schemars(length(min = 1))]
    pub version: String,
    /// SHA-256 of the bundle contents (see [`DeployBundle::contents_checksum`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Object names included.
    #[serde(default)]
    pub objects: Vec<String>,
    /// View names included.
    #[serde(default)]
    pub views: Vec<String>,
    /// Flow names included.
    #[serde(default)]
    pub flows: Vec<String>,
    /// Permission names included.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Bundle creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

impl Spec for DeployManifest {
    const SPEC_NAME: &'static str = "DeployManifest";
}

/// A JSON object as carried in a bundle (views, flows, permissions, seed records).
pub type Record = Map<String, Value>;

/// Everything a deployment carries: the primary input of the deploy pipeline.
///
/// Upstream types `objects` as free-form records; the fleet additionally validates each one as an
/// ObjectStack [`ObjectDefinition`] (paths `objects.<name>.…`) and checks that references between
/// objects resolve, because that is what the deploy pipeline's `validateBundle` promises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployBundle {
    /// The manifest.
    pub manifest: DeployManifest,
    /// Object definitions.
    #[serde(default)]
    pub objects: Vec<Record>,
    /// View definitions.
    #[serde(default)]
    pub views: Vec<Record>,
    /// Flow definitions.
    #[serde(default)]
    pub flows: Vec<Record>,
    /// Permission definitions.
    #[serde(default)]
    pub permissions: Vec<Record>,
    /// Seed data records to insert after migration.
    #[serde(default)]
    pub seed_data: Vec<Record>,
}

impl DeployBundle {
    /// The object definitions, typed. Fails with every issue (paths under `objects.`).
    pub fn object_definitions(&self) -> Result<Vec<ObjectDefinition>, crate::validate::Rejected> {
        let mut checks = Checks::default();
        let objects = typed_objects(&self.objects, &mut checks);
        let issues = checks.into_issues();
        if issues.iter().any(|i| i.severity == IssueSeverity::Error) {
            Err(crate::validate::Rejected {
                type_name: "DeployBundle",
                issues,
            })
        } else {
            Ok(objects)
        }
    }

    /// SHA-256 (hex) of the canonical JSON of everything but the manifest: the value
    /// `manifest.checksum` must have when present.
    pub fn contents_checksum(&self) -> String {
        let contents = serde_json::json!({
            "objects": self.objects,
            "views": self.views,
            "flows": self.flows,
            "permissions": self.permissions,
            "seedData": self.seed_data,
        });
        let mut hasher = Sha256::new();
        write_canonical(&contents, &mut hasher);
        hex::encode(hasher.finalize())
    }
}

/// Validates each raw object record as an [`ObjectDefinition`], reporting issues under
/// `objects.<name>` (or the index when the name is unusable); returns the ones that are valid.
pub(crate) fn typed_objects(records: &[Record], checks: &mut Checks) -> Vec<ObjectDefinition> {
    let mut typed = Vec::new();
    checks.at("objects", |checks| {
        for (index, raw) in records.iter().enumerate() {
            let label = raw
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty() && !n.contains('.'))
                .map_or_else(|| index.to_string(), str::to_owned);
            // Upstream's DeployBundleSchema takes objects as free-form records: one without
            // `fields` is accepted there, and here it is an object with only the system columns.
            let mut record = raw.clone();
            record
                .entry("fields")
                .or_insert_with(|| Value::Object(Default::default()));
            match parse_value::<ObjectDefinition>(&Value::Object(record)) {
                Ok(checked) => {
                    for issue in checked.warnings {
                        checks.at(&label, |c| c.push_nested(issue));
                    }
                    typed.push(checked.value);
                }
                Err(rejected) => {
                    for issue in rejected.issues {
                        checks.at(&label, |c| c.push_nested(issue));
                    }
                }
            }
        }
    });
    typed
}

/// Canonical JSON: object keys sorted, no whitespace — independent of key order in the file.
fn write_canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            hasher.update(b"{");
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                hasher.update(Value::from(key.as_str()).to_string().as_bytes());
                hasher.update(b":");
                write_canonical(&map[key], hasher);
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                write_canonical(item, hasher);
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

impl Spec for DeployBundle {
    const SPEC_NAME: &'static str = "DeployBundle";

    fn check_input(input: &Value, checks: &mut Checks) {
        let Some(Value::Array(raw_objects)) = input.get("objects") else {
            return;
        };
        let records: Vec<Record> = raw_objects
            .iter()
            .filter_map(|o| o.as_object().cloned())
            .collect();
        typed_objects(&records, checks);
        let names = records.iter().filter_map(|o| o.get("name")?.as_str());
        let mut known = std::collections::HashSet::new();
        for name in names {
            if !known.insert(name) {
                checks.at_path(&["objects", name], |c| {
                    c.error("duplicate_name", "two objects have this name")
                });
            }
        }
        for object in &records {
            let Some(object_name) = object.get("name").and_then(Value::as_str) else {
                continue;
            };
            let fields = object
                .get("fields")
                .and_then(Value::as_object)
                .into_iter()
                .flatten();
            for (key, field) in fields {
                let is_reference = matches!(
                    field.get("type").and_then(Value::as_str),
                    Some("lookup" | "master_detail" | "tree")
                );
                let Some(target) = field.get("reference").and_then(Value::as_str) else {
                    continue;
                };
                if is_reference && !known.contains(target) {
                    checks.at_path(&["objects", object_name, "fields", key, "reference"], |c| {
                        c.error(
                            "unknown_reference",
                            format!("references object {target:?}, which is not in the bundle"),
                        )
                    });
                }
            }
        }
        let listed = input
            .pointer("/manifest/objects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for listed in listed.filter_map(Value::as_str) {
            if !known.contains(listed) {
                checks.at("manifest", |c| {
                    c.at("objects", |c| {
                        c.warning(
                            "manifest_mismatch",
                            format!("manifest lists {listed:?}, which the bundle does not define"),
                        )
                    })
                });
            }
        }
    }
}

/// Which tenants a deployment targets: exactly one of a list, every active tenant, every
/// active tenant on a plan, or (app rollouts) every active tenant that has an app installed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployTarget {
    /// These tenants.
    #[serde(default)]
    pub tenants: Vec<crate::ids::TenantId>,
    /// Every active tenant (instead of a list).
    #[serde(default)]
    pub all: bool,
    /// Every active tenant on this plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::tenant::TenantPlan>,
    /// Every active tenant that has this app installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_app: Option<String>,
}

impl DeployTarget {
    /// Pushes an issue unless exactly one selector is given.
    pub fn check(&self, checks: &mut Checks) {
        let given = usize::from(!self.tenants.is_empty())
            + usize::from(self.all)
            + usize::from(self.plan.is_some())
            + usize::from(self.has_app.is_some());
        if given != 1 {
            checks.at("target", |c| {
                c.error(
                    "invalid_target",
                    "name exactly one of: tenants, all, plan, hasApp",
                )
            });
        }
    }
}

/// How a deployment rolls out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutOptions {
    /// Cumulative wave sizes: a count (`1`) or a share of the targets (`10%`); the last wave
    /// always takes the rest. Default: one canary tenant, then 10 %, then everyone.
    #[serde(default = "default_waves")]
    pub waves: Vec<String>,
    /// Share of failed tenants (0–1) above which the deployment halts after a wave.
    #[serde(default = "default_failure_ratio")]
    #[schemars(range(min = 0, max = 1))]
    pub max_failure_ratio: f64,
    /// Accept changes that lose data.
    #[serde(default)]
    pub allow_destructive: bool,
    /// Plan every tenant without changing anything.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_waves() -> Vec<String> {
    vec!["1".into(), "10%".into(), "100%".into()]
}

fn default_failure_ratio() -> f64 {
    0.2
}

impl Default for RolloutOptions {
    fn default() -> Self {
        Self {
            waves: default_waves(),
            max_failure_ratio: default_failure_ratio(),
            allow_destructive: false,
            dry_run: false,
        }
    }
}

/// A rollout wave that is neither a count (`10`) nor a percentage (`10%`) of 0 to 100.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("wave {wave:?} is {why}")]
pub struct InvalidWave {
    /// The wave as written.
    pub wave: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl RolloutOptions {
    /// The cumulative number of tenants done after each wave, for `total` targets (the last
    /// wave always reaches `total`; empty waves are dropped).
    pub fn wave_ends(&self, total: usize) -> Result<Vec<usize>, InvalidWave> {
        let mut ends = Vec::new();
        for wave in &self.waves {
            let end = match wave.strip_suffix('%') {
                Some(share) => {
                    let share: f64 = share.trim().parse().map_err(|_| InvalidWave {
                        wave: wave.clone(),
                        why: "not a percentage",
                    })?;
                    if !(0.0..=100.0).contains(&share) {
                        return Err(InvalidWave {
                            wave: wave.clone(),
                            why: "not between 0% and 100%",
                        });
                    }
                    (total as f64 * share / 100.0).ceil() as usize
                }
                None => wave.trim().parse::<usize>().map_err(|_| InvalidWave {
                    wave: wave.clone(),
                    why: "neither a count nor a percentage",
                })?,
            };
            ends.push(end.min(total));
        }
        ends.push(total);
        let mut out: Vec<usize> = Vec::new();
        for end in ends {
            if end > *out.last().unwrap_or(&0) {
                out.push(end);
            }
        }
        Ok(out)
    }
}

/// `deploy.requested`: a bundle, the tenants it targets, and how to roll it out (a fleet type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployRequest {
    /// The deployment's id (its `Nats-Msg-Id` too).
    pub deployment_id: crate::ids::DeploymentId,
    /// What to deploy.
    pub bundle: DeployBundle,
    /// The tenants: a list, all, or a plan (exactly one).
    #[serde(default)]
    pub target: DeployTarget,
    /// Waves, the failure ratio that halts, dry run, `allowDestructive`.
    #[serde(default)]
    pub rollout: RolloutOptions,
}

impl Spec for DeployRequest {
    const SPEC_NAME: &'static str = "DeployRequest";

    fn check_input(input: &Value, checks: &mut Checks) {
        if let Some(bundle) = input.get("bundle") {
            let mut nested = Checks::default();
            DeployBundle::check_input(bundle, &mut nested);
            for issue in nested.into_issues() {
                checks.at("bundle", |c| c.push_nested(issue));
            }
        }
    }

    fn check(&self, checks: &mut Checks) {
        self.target.check(checks);
        if let Err(why) = self.rollout.wave_ends(100) {
            checks.at_path(&["rollout", "waves"], |c| {
                c.error("invalid_value", why.to_string())
            });
        }
        if let Some(checksum) = &self.bundle.manifest.checksum {
            let actual = self.bundle.contents_checksum();
            if !checksum.eq_ignore_ascii_case(&actual) {
                checks.at_path(&["bundle", "manifest", "checksum"], |c| {
                    c.error(
                        "checksum_mismatch",
                        format!("is {checksum}, the contents hash to {actual}"),
                    )
                });
            }
        }
    }
}

/// `deploy.app_requested`: an app installed or upgraded on many tenants with the deployer's
/// rollout — waves, the failure-ratio halt, dry run, resume (a fleet type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRolloutRequest {
    /// The rollout's id (its `Nats-Msg-Id` too; `fleetctl deploy status <id>` shows it).
    pub deployment_id: crate::ids::DeploymentId,
    /// What to do with which app.
    pub app: AppRollout,
    /// The tenants: a list, all, a plan, or every tenant with the app (exactly one).
    #[serde(default)]
    pub target: DeployTarget,
    /// Waves, the failure ratio that halts, dry run, `allowDestructive` (upgrades).
    #[serde(default)]
    pub rollout: RolloutOptions,
}

/// The app part of an [`AppRolloutRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRollout {
    /// Install or upgrade.
    pub operation: AppOperation,
    /// The app.
    pub package: crate::app::AppPackage,
    /// Do not insert the app's seed data.
    #[serde(default)]
    pub skip_seed_data: bool,
}

/// What an app rollout does on each tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppOperation {
    /// `app.install_requested` on each tenant.
    Install,
    /// `app.upgrade_requested` on each tenant.
    Upgrade,
}

impl Spec for AppRolloutRequest {
    const SPEC_NAME: &'static str = "AppRolloutRequest";

    fn check_input(input: &Value, checks: &mut Checks) {
        if let Some(package) = input.pointer("/app/package") {
            checks.at_path(&["app", "package"], |c| {
                crate::app::AppPackage::check_input(package, c)
            });
        }
    }

    fn check(&self, checks: &mut Checks) {
        self.target.check(checks);
        if let Err(why) = self.rollout.wave_ends(100) {
            checks.at_path(&["rollout", "waves"], |c| {
                c.error("invalid_value", why.to_string())
            });
        }
    }
}

/// Most tenants one [`TenantDeployJob`] carries.
pub const MAX_JOB_TENANTS: usize = 256;

/// `deploy.tenant.<deploymentId>`, command version 2 (`Fleet-Command-Version: 2`): a batch of
/// tenants' parts of a deployment, worked through one after another by the deployer that
/// receives it (a fleet type). One message, fetch and acknowledgement for the batch instead of
/// one per tenant; each tenant's result is still its own entry, so a redelivered batch redoes
/// only the tenants without one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantDeployJob {
    /// The deployment.
    pub deployment_id: crate::ids::DeploymentId,
    /// The tenants, in rollout order (1 to [`MAX_JOB_TENANTS`], no repeats).
    pub tenant_ids: Vec<crate::ids::TenantId>,
    /// The wave (0-based).
    pub wave: u32,
    /// Undo the deployment on these tenants instead (their stored rollback plans).
    #[serde(default)]
    pub rollback: bool,
}

impl TenantDeployJob {
    /// The command version of this shape on `deploy.tenant.<deploymentId>`.
    pub const VERSION: u32 = 2;
}

/// `deploy.tenant.<deploymentId>`, command version 1 (no version header): one tenant's part of
/// a deployment, as releases before batched jobs publish it. Read as a batch of one, so jobs in
/// the stream across an upgrade are carried out; published for one-tenant jobs
/// (`deployer.job_tenants = 1`, and the jobs a dead-lettered batch is split into), which every
/// release reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantDeployJobV1 {
    /// The deployment.
    pub deployment_id: crate::ids::DeploymentId,
    /// The tenant.
    pub tenant_id: crate::ids::TenantId,
    /// The wave (0-based).
    pub wave: u32,
    /// Undo the deployment on this tenant instead (its stored rollback plan).
    #[serde(default)]
    pub rollback: bool,
}

impl From<TenantDeployJobV1> for TenantDeployJob {
    fn from(job: TenantDeployJobV1) -> Self {
        Self {
            deployment_id: job.deployment_id,
            tenant_ids: vec![job.tenant_id],
            wave: job.wave,
            rollback: job.rollback,
        }
    }
}

impl Spec for TenantDeployJobV1 {
    const SPEC_NAME: &'static str = "TenantDeployJobV1";
}

/// `deploy.rollback`: undo a finished deployment on every tenant it migrated (a fleet type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployRollbackRequest {
    /// The deployment to undo.
    pub deployment_id: crate::ids::DeploymentId,
}

impl Spec for DeployRollbackRequest {
    const SPEC_NAME: &'static str = "DeployRollbackRequest";
}

/// What an operator asks of a running or finished deployment (a fleet type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployControlAction {
    /// Continue a halted or cancelled rollout at its current wave.
    Resume,
    /// Stop a rollout after the jobs already running (resumable).
    Cancel,
}

/// `deploy.control.<deploymentId>`: an operator's command for one deployment, carried out by the
/// deployer (the only writer of deployment state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployControl {
    /// The deployment.
    pub deployment_id: crate::ids::DeploymentId,
    /// What to do.
    pub action: DeployControlAction,
}

impl Spec for DeployControl {
    const SPEC_NAME: &'static str = "DeployControl";
}

impl Spec for TenantDeployJob {
    const SPEC_NAME: &'static str = "TenantDeployJob";

    fn check(&self, checks: &mut Checks) {
        if self.tenant_ids.is_empty() || self.tenant_ids.len() > MAX_JOB_TENANTS {
            checks.at_path(&["tenantIds"], |c| {
                c.error(
                    "invalid_value",
                    format!(
                        "{} tenants: a job carries 1 to {MAX_JOB_TENANTS}",
                        self.tenant_ids.len()
                    ),
                )
            });
        }
        let mut seen = std::collections::HashSet::new();
        for (i, tenant) in self.tenant_ids.iter().enumerate() {
            if !seen.insert(tenant) {
                let index = i.to_string();
                checks.at_path(&["tenantIds", index.as_str()], |c| {
                    c.error("duplicate", format!("tenant {tenant} appears twice"))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn waves_are_cumulative_and_the_last_takes_the_rest() {
        let rollout = super::RolloutOptions::default();
        assert_eq!(rollout.wave_ends(300).unwrap(), vec![1, 30, 300]);
        assert_eq!(rollout.wave_ends(5).unwrap(), vec![1, 5]);
        let custom = super::RolloutOptions {
            waves: vec!["50%".into()],
            ..Default::default()
        };
        assert_eq!(custom.wave_ends(10).unwrap(), vec![5, 10]);
        assert!(
            super::RolloutOptions {
                waves: vec!["lots".into()],
                ..Default::default()
            }
            .wave_ends(3)
            .is_err()
        );
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn minimal_bundle_gets_upstream_defaults() {
        let b = parse_value::<DeployBundle>(&json!({"manifest": {"version": "1"}}))
            .unwrap()
            .value;
        let out = serde_json::to_value(&b).unwrap();
        assert_eq!(
            out,
            json!({"manifest": {"version": "1", "objects": [], "views": [], "flows": [], "permissions": []},
                   "objects": [], "views": [], "flows": [], "permissions": [], "seedData": []})
        );
    }

    #[test]
    fn checksum_ignores_key_order_and_the_manifest() {
        let a = parse_value::<DeployBundle>(
            &json!({"manifest": {"version": "1"}, "views": [{"a": 1, "b": 2}]}),
        )
        .unwrap()
        .value;
        let b = parse_value::<DeployBundle>(
            &json!({"manifest": {"version": "2"}, "views": [{"b": 2, "a": 1}]}),
        )
        .unwrap()
        .value;
        assert_eq!(a.contents_checksum(), b.contents_checksum());
        assert_eq!(a.contents_checksum().len(), 64);
    }

    #[test]
    fn three_mistakes_give_three_issues_with_paths() {
        let rejected = parse_value::<DeployBundle>(&json!({
            "manifest": {"version": ""},
            "objects": [{
                "name": "project_task",
                "fields": {"name": {"type": "string"}, "owner": {"type": "lookup", "reference": "user"}}
            }]
        }))
        .unwrap_err();
        let errors: Vec<String> = rejected.errors().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors.iter().any(|e| e.starts_with("manifest.version:")));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("objects.project_task.fields.name.type:"))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("objects.project_task.fields.owner.reference:"))
        );
    }

    #[test]
    fn unknown_keys_are_warnings_not_errors() {
        let checked =
            parse_value::<DeployBundle>(&json!({"manifest": {"version": "1", "auth_token": "x"}}))
                .unwrap();
        assert_eq!(checked.warnings.len(), 1);
        assert_eq!(checked.warnings[0].path, "manifest.auth_token");
        assert_eq!(
            checked.warnings[0].code.as_deref(),
            Some("unrecognized_keys")
        );
    }
}
