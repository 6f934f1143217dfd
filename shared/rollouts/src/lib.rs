//! Deployments' data: the deployment record (KV `fleet_deployments`), the per-tenant entries
//! beside it (KV `fleet_deploy_results`), and the pure rollout machine over both — waves, the
//! failure ratio that halts a rollout, resume and cancel, rollbacks. No I/O: the deployer
//! carries the decisions out, `fleetctl` reads the records; neither depends on the other.
//!
//! ## Flat cost per tenant
//!
//! A deployment's record is the same size for 10 tenants and for 100 000: it holds the wave
//! ends (cumulative counts), sums of results ([`Tally`]) and a watermark, never a list of
//! tenants. What grows with the fleet lives under keys of its own in `fleet_deploy_results`:
//!
//! - `<deployment>.targets.<attempt>.<chunk>` — the targets in rollout order, [`TARGET_CHUNK`]
//!   per key, written once before the record exists (the record names the attempt whose
//!   chunks are complete, see [`Deployment::targets_attempt`]);
//! - `<deployment>.t.<tenant>` — a tenant's [`ResultEntry`]: its outcome (created once: the
//!   first result stands) or a retry marker written by a resume over a failed outcome;
//! - `<deployment>.r.<tenant>` — a tenant's rollback outcome.
//!
//! A result is counted by [`fold`]: the record keeps `folded`, the stream sequence of the last
//! entry it has summed, and a fold adds the entries after it in stream order and moves the
//! watermark in the same compare-and-set — so every entry is counted exactly once whichever
//! worker folds it, and a crash between writing a result and folding it is repaired by the
//! next fold. Each fold reads only the entries written since the last one: the work per tenant
//! does not depend on how many tenants the deployment has.

#![deny(missing_docs)]

use fleet_protocol::{DeployStatus, DeploymentId, TenantId, Timestamp};
use fleet_state::{Decision, ProgressEvent, Versioned};
use serde::{Deserialize, Serialize};

/// Targets per `<deployment>.targets.<attempt>.<chunk>` key: at most ~64 KiB of tenant ids
/// per value, well under the server's 1 MiB payload limit.
pub const TARGET_CHUNK: usize = 1000;

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    /// Waves are running.
    Running,
    /// Every targeted tenant is ready.
    Completed,
    /// Finished with failures (under the ratio).
    CompletedWithFailures,
    /// Stopped: the failure ratio passed its limit (resumable).
    Halted,
    /// Stopped by an operator (resumable).
    Cancelled,
    /// Refused before any tenant was touched (invalid bundle, no targets).
    Rejected,
    /// Being undone on the tenants it migrated.
    RollingBack,
    /// Undone on every tenant it migrated (see the rollback tally for any that could not be).
    RolledBack,
}

/// One tenant's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantOutcome {
    /// `ready` or `failed` (upstream DeployStatus).
    pub status: DeployStatus,
    /// Whether it was already at the bundle's version (nothing done).
    #[serde(default)]
    pub skipped: bool,
    /// DDL statements executed (or planned, in a dry run).
    #[serde(default)]
    pub statements: u64,
    /// Changes by kind: added, modified, removed.
    #[serde(default)]
    pub changes: [u64; 3],
    /// Whether the plan had breaking changes.
    #[serde(default)]
    pub breaking: bool,
    /// Error of a failed tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Duration in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Dry runs only: the migration the tenant would run (upstream `MigrationPlan`), so a
    /// caller planning one tenant (`fleet-client`'s `plan_deployment`) gets it back. Stored under
    /// the tenant's own key: its size is the plan's, whatever the fleet's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<fleet_protocol::MigrationPlan>,
    /// App dry runs only: the compatibility check's answer (upstream `AppCompatibilityCheck`),
    /// with every issue when the app is incompatible with the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<fleet_protocol::AppCompatibilityCheck>,
}

/// A tenant's entry under `<deployment>.t.<tenant>` or `<deployment>.r.<tenant>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "entry")]
pub enum ResultEntry {
    /// The tenant's outcome in wave `wave` (0-based).
    Outcome {
        /// The wave the tenant belongs to.
        wave: u32,
        /// What happened.
        outcome: TenantOutcome,
    },
    /// A resume retries this tenant: the failed outcome at stream sequence `replaces` no
    /// longer counts.
    Retry {
        /// The stream sequence (KV revision) of the failed outcome this marker replaced.
        replaces: u64,
    },
}

/// Which entry a key of `fleet_deploy_results` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKey {
    /// `<deployment>.t.<tenant>`: a deploy result.
    Deploy(TenantId),
    /// `<deployment>.r.<tenant>`: a rollback result.
    Rollback(TenantId),
    /// `<deployment>.targets.…`: part of the target list (not a result).
    Targets,
}

impl EntryKey {
    /// The key of this entry of deployment `id`.
    pub fn key(&self, id: &DeploymentId) -> String {
        match self {
            Self::Deploy(t) => format!("{id}.t.{t}"),
            Self::Rollback(t) => format!("{id}.r.{t}"),
            Self::Targets => format!("{id}.targets"),
        }
    }

    /// Parses a key of deployment `id` (`None` for another deployment's or an unknown key).
    pub fn parse(id: &DeploymentId, key: &str) -> Option<Self> {
        let rest = key.strip_prefix(id.as_str())?.strip_prefix('.')?;
        if let Some(t) = rest.strip_prefix("t.") {
            return TenantId::parse(t).ok().map(Self::Deploy);
        }
        if let Some(t) = rest.strip_prefix("r.") {
            return TenantId::parse(t).ok().map(Self::Rollback);
        }
        rest.starts_with("targets.").then_some(Self::Targets)
    }
}

/// The key of chunk `chunk` of attempt `attempt`'s target list of deployment `id`.
pub fn targets_key(id: &DeploymentId, attempt: &str, chunk: usize) -> String {
    format!("{id}.targets.{attempt}.{chunk}")
}

/// One entry read back from `fleet_deploy_results`, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Its stream sequence (the KV revision).
    pub sequence: u64,
    /// Its key.
    pub key: EntryKey,
    /// Its value.
    pub entry: ResultEntry,
}

/// Sums of tenant outcomes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    /// Tenants ready (migrated, planned in a dry run, or skipped).
    pub ready: u64,
    /// Tenants failed (their failed outcome still counts: not retried by a resume).
    pub failed: u64,
    /// Ready tenants that were already at the bundle's version.
    pub skipped: u64,
    /// Ready tenants whose plan had statements (changed, or would change in a dry run).
    pub changed: u64,
    /// Ready tenants whose plan had breaking changes.
    pub breaking: u64,
    /// DDL statements executed (or planned), summed.
    pub statements: u64,
    /// Changes by kind (added, modified, removed), summed.
    pub changes: [u64; 3],
}

impl Tally {
    fn add(&mut self, outcome: &TenantOutcome) {
        match outcome.status {
            DeployStatus::Failed => self.failed += 1,
            _ => {
                self.ready += 1;
                self.skipped += u64::from(outcome.skipped);
                self.changed += u64::from(!outcome.skipped && outcome.statements > 0);
                self.breaking += u64::from(outcome.breaking);
                self.statements += outcome.statements;
                for (sum, n) in self.changes.iter_mut().zip(outcome.changes) {
                    *sum += n;
                }
            }
        }
    }

    /// Tenants with a result that counts (ready or failed).
    pub fn recorded(&self) -> u64 {
        self.ready + self.failed
    }

    /// Ready tenants that were not skipped: the ones a rollback undoes.
    pub fn migrated(&self) -> u64 {
        self.ready - self.skipped
    }
}

/// A deployment (the `fleet_deployments` KV value): the same size whatever the fleet's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The deployment's id: its key in `fleet_deployments` and the prefix of its keys in
    /// `fleet_deploy_results`.
    pub id: DeploymentId,
    /// Bundle version.
    pub version: String,
    /// Bundle checksum (verified or computed).
    pub checksum: String,
    /// Where the rollout stands (running, finished, halted, rolling back, …).
    pub status: RolloutStatus,
    /// Plan only.
    pub dry_run: bool,
    /// Allow destructive changes.
    pub allow_destructive: bool,
    /// Halt above this failure share.
    pub max_failure_ratio: f64,
    /// Cumulative number of targets at the end of each wave (the last is the number of
    /// targets): wave `k` is targets `wave_ends[k-1]..wave_ends[k]` in rollout order. (A
    /// record of an earlier release, which listed its tenants, reads with none: it can be
    /// inspected, not resumed.)
    #[serde(default)]
    pub wave_ends: Vec<u64>,
    /// The attempt whose `<id>.targets.<attempt>.<chunk>` keys hold the target list.
    #[serde(default)]
    pub targets_attempt: String,
    /// The wave running now (0-based).
    pub current_wave: usize,
    /// Sums of the deploy results folded so far.
    #[serde(default)]
    pub tally: Tally,
    /// Sums of the rollback results folded so far (only during and after a rollback).
    #[serde(default)]
    pub rollback_tally: Tally,
    /// Tenants a rollback undoes (fixed when it starts: the migrated count then).
    #[serde(default)]
    pub rollback_targets: u64,
    /// Stream sequence of the last `fleet_deploy_results` entry summed into the tallies.
    #[serde(default)]
    pub folded: u64,
    /// Whether what the current status calls for was published (a wave's jobs, a rollback's
    /// jobs, the end-of-deployment hook): false after every transition that calls for
    /// something, true once a worker published it — a crash in between is repaired by any
    /// later delivery that sees it false.
    #[serde(default)]
    pub announced: bool,
    /// Why it stopped, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was requested.
    pub requested_at: Timestamp,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// How many times it was resumed: part of its jobs' message ids, so the jobs a resume
    /// publishes again are not dropped as duplicates of the first ones.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumes: u32,
    /// Stream sequence (in `FLEET_DEPLOY_COMMANDS`) of the last operator command
    /// (`deploy.control.<id>`) carried out, 0 before any. Commands take effect in stream order:
    /// one at or below it in the same stream ([`Deployment::control_stream`]) is stale —
    /// carried out already, or superseded by a later one that was carried out first (a cancel
    /// is taken from the stream ahead of the wave's queued jobs; see the deployer) — and
    /// changes nothing.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub control_sequence: u64,
    /// When the stream `control_sequence` counts in was created (`None`: the command came from
    /// a stream before the one that was read). A stream created again (a migration, a restore
    /// from a backup) has another creation time, and its commands are placed by when they were
    /// published instead ([`Deployment::control_published`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_stream: Option<Timestamp>,
    /// When the last command carried out was stored in its stream: a command of another
    /// stream published no later than it is stale (a restored backup's commands keep the time
    /// they were first stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_published: Option<Timestamp>,
    /// An app rollout: the app it installs or upgrades on each tenant (`None`: a bundle
    /// deployment). Its package is kept beside the record, as a bundle is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// Where an operator command (`deploy.control.<id>`) is in `FLEET_DEPLOY_COMMANDS`: what
/// orders commands and makes an earlier one stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMark {
    /// The message's stream sequence.
    pub sequence: u64,
    /// When the stream was created (its `created`, from the server's stream info, read after
    /// the message).
    pub stream: Timestamp,
    /// When the message was stored in the stream (kept by a backup's restore).
    pub published: Timestamp,
}

impl CommandMark {
    /// Whether the message belongs to the stream whose creation time was read: one stored
    /// before that stream was created came from an earlier stream (deleted and created again,
    /// or restored from a backup), where its sequence means nothing.
    fn in_stream(&self) -> bool {
        self.published >= self.stream
    }
}

/// A command the deployment already satisfies: nothing changes but, for a command with a place
/// in the stream, the record of that place (so no command sent before it takes effect after it).
fn satisfied(
    d: &Deployment,
    mark: Option<&CommandMark>,
    step: &str,
    now: &Timestamp,
) -> Decision<Deployment> {
    match mark {
        Some(_) => write(marked(d.clone(), mark), step, None, now),
        None => Decision::Unchanged,
    }
}

/// `next` with `mark` recorded as the last command carried out.
fn marked(mut next: Deployment, mark: Option<&CommandMark>) -> Deployment {
    if let Some(mark) = mark {
        next.control_sequence = mark.sequence;
        next.control_stream = mark.in_stream().then(|| mark.stream.clone());
        next.control_published = Some(mark.published.clone());
    }
    next
}

/// Why a deployment transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// No such deployment.
    #[error("unknown deployment {0}")]
    Unknown(String),
    /// Not allowed now.
    #[error("deployment {id} is {status:?}: cannot {event}")]
    Illegal {
        /// The deployment's id.
        id: String,
        /// Its status.
        status: RolloutStatus,
        /// What was attempted.
        event: &'static str,
    },
}

/// What happens after the results folded so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The wave is still running.
    Wait,
    /// Start wave `n`.
    StartWave(usize),
    /// The deployment ended (completed, completed with failures, halted).
    Finished(RolloutStatus),
}

/// What a deployment's current state calls for, as published by one worker: marking it
/// announced is only right while the deployment is still in that state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    status: RolloutStatus,
    wave: usize,
    resumes: u32,
}

impl TenantOutcome {
    /// A tenant migrated with `statements` statements.
    pub fn ready(statements: u64) -> Self {
        TenantOutcome {
            status: DeployStatus::Ready,
            skipped: false,
            statements,
            changes: [0; 3],
            breaking: false,
            error: None,
            duration_ms: 0,
            plan: None,
            check: None,
        }
    }

    /// A tenant that could not be deployed, and why.
    pub fn failed(error: String) -> Self {
        TenantOutcome {
            status: DeployStatus::Failed,
            error: Some(error),
            ..Self::ready(0)
        }
    }
}

impl Deployment {
    /// A record of deployment `id` with nothing in it yet (no targets, no results), requested
    /// at `requested_at`: the base a request or a rejection fills in.
    pub fn new(id: DeploymentId, status: RolloutStatus, requested_at: Timestamp) -> Self {
        Deployment {
            id,
            version: String::new(),
            checksum: String::new(),
            status,
            dry_run: false,
            allow_destructive: false,
            max_failure_ratio: 0.0,
            wave_ends: Vec::new(),
            targets_attempt: String::new(),
            current_wave: 0,
            tally: Tally::default(),
            rollback_tally: Tally::default(),
            rollback_targets: 0,
            folded: 0,
            announced: false,
            reason: None,
            requested_at,
            finished_at: None,
            resumes: 0,
            control_sequence: 0,
            control_stream: None,
            control_published: None,
            app: None,
        }
    }

    /// Whether the operator command `mark` (`None`: where it is in the stream is unknown,
    /// never stale) was carried out or superseded already (see
    /// [`Deployment::control_sequence`]). A message of the stream as it is now is placed by
    /// sequence, and only against a command carried out from that same stream: one of a
    /// stream created since has nothing before it. A message stored before the stream was
    /// created (a restored backup's) is placed by when it was published, against the last
    /// command carried out — the one comparison of times, made only where sequences cannot be.
    pub fn stale_control(&self, mark: Option<&CommandMark>) -> bool {
        mark.is_some_and(|m| {
            if m.in_stream() {
                self.control_stream.as_ref() == Some(&m.stream)
                    && m.sequence <= self.control_sequence
            } else {
                self.control_published
                    .as_ref()
                    .is_some_and(|last| m.published <= *last)
            }
        })
    }

    /// How many tenants it targets.
    pub fn targets(&self) -> u64 {
        self.wave_ends.last().copied().unwrap_or(0)
    }

    /// Targets (ordinals in rollout order) of wave `wave`: `start..end`.
    pub fn wave_range(&self, wave: usize) -> std::ops::Range<u64> {
        let start = match wave {
            0 => 0,
            n => self.wave_ends.get(n - 1).copied().unwrap_or(0),
        };
        start..self.wave_ends.get(wave).copied().unwrap_or(start)
    }

    /// Counts of tenant results: (ready, failed, pending).
    pub fn counts(&self) -> (u64, u64, u64) {
        let (ready, failed) = (self.tally.ready, self.tally.failed);
        (ready, failed, self.targets().saturating_sub(ready + failed))
    }

    /// What the current state calls for (see [`announced`]).
    pub fn announcement(&self) -> Announcement {
        Announcement {
            status: self.status,
            wave: self.current_wave,
            resumes: self.resumes,
        }
    }

    /// What follows the results folded so far.
    pub fn next(&self) -> Next {
        let wave_end = self.wave_ends.get(self.current_wave).copied().unwrap_or(0);
        if self.status != RolloutStatus::Running || self.tally.recorded() < wave_end {
            return Next::Wait;
        }
        let (ready, failed) = (self.tally.ready, self.tally.failed);
        let finished = ready + failed;
        if failed > 0 && (failed as f64 / finished.max(1) as f64) > self.max_failure_ratio {
            return Next::Finished(RolloutStatus::Halted);
        }
        if self.current_wave + 1 < self.wave_ends.len() {
            Next::StartWave(self.current_wave + 1)
        } else if failed == 0 {
            Next::Finished(RolloutStatus::Completed)
        } else {
            Next::Finished(RolloutStatus::CompletedWithFailures)
        }
    }
}

fn event(d: &Deployment, step: &str, error: Option<String>, now: &Timestamp) -> ProgressEvent {
    ProgressEvent {
        kind: "deploy".to_owned(),
        id: d.id.to_string(),
        step: step.to_owned(),
        status: serde_json::to_value(d.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        duration_ms: None,
        error,
        at: now.clone(),
        revision: 0,
    }
}

fn write(
    next: Deployment,
    step: &str,
    error: Option<String>,
    now: &Timestamp,
) -> Decision<Deployment> {
    let event = event(&next, step, error, now);
    Decision::Write { next, event }
}

fn illegal(id: &DeploymentId, status: RolloutStatus, event: &'static str) -> RolloutError {
    RolloutError::Illegal {
        id: id.to_string(),
        status,
        event,
    }
}

fn existing<'a>(
    current: Option<&'a Versioned<Deployment>>,
    id: &DeploymentId,
) -> Result<&'a Deployment, RolloutError> {
    current
        .map(|v| &v.state)
        .ok_or_else(|| RolloutError::Unknown(id.to_string()))
}

/// Creates the deployment (a repeated request with the same id changes nothing).
pub fn start(
    current: Option<&Versioned<Deployment>>,
    deployment: &Deployment,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    match current {
        Some(_) => Ok(Decision::Unchanged),
        None => Ok(write(deployment.clone(), "requested", None, now)),
    }
}

/// Moves the rollout on from what its tallies say: the next wave, the end of the deployment
/// (completed, with failures, halted) or of its rollback — each marked unannounced.
fn advance(next: &mut Deployment, now: &Timestamp) {
    match next.status {
        RolloutStatus::Running => match next.next() {
            Next::StartWave(wave) => {
                next.current_wave = wave;
                next.announced = false;
            }
            Next::Finished(status) => {
                next.status = status;
                next.finished_at = Some(now.clone());
                next.announced = false;
                if status == RolloutStatus::Halted {
                    next.reason = Some(format!(
                        "halted after wave {}: {} failed tenant(s) exceed the failure ratio {}",
                        next.current_wave + 1,
                        next.tally.failed,
                        next.max_failure_ratio
                    ));
                }
            }
            Next::Wait => {}
        },
        RolloutStatus::RollingBack if next.rollback_tally.recorded() >= next.rollback_targets => {
            next.status = RolloutStatus::RolledBack;
            next.finished_at = Some(now.clone());
            next.announced = false;
            if next.rollback_tally.failed > 0 {
                next.reason = Some(format!(
                    "{} tenant(s) could not be rolled back",
                    next.rollback_tally.failed
                ));
            }
        }
        _ => {}
    }
}

/// Sums the entries written after the deployment's watermark into its tallies and moves the
/// watermark to `through` (the last stream sequence read; `entries` are those read, in stream
/// order), then moves the rollout on: the next wave, the end of the deployment (completed,
/// with failures, halted) or of its rollback.
pub fn fold(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    entries: &[Written],
    through: u64,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    if through <= d.folded {
        return Ok(Decision::Unchanged);
    }
    let mut next = d.clone();
    // Failed outcomes summed in this fold: a retry marker replacing one of them un-counts it.
    let mut failed_here = Vec::new();
    let mut summed = 0usize;
    for written in entries.iter().filter(|w| w.sequence > d.folded) {
        match (&written.key, &written.entry) {
            (EntryKey::Deploy(_), ResultEntry::Outcome { outcome, .. }) => {
                if outcome.status == DeployStatus::Failed {
                    failed_here.push(written.sequence);
                }
                next.tally.add(outcome);
                summed += 1;
            }
            (EntryKey::Deploy(_), ResultEntry::Retry { replaces }) => {
                if *replaces <= d.folded || failed_here.contains(replaces) {
                    next.tally.failed = next.tally.failed.saturating_sub(1);
                }
                summed += 1;
            }
            (EntryKey::Rollback(_), ResultEntry::Outcome { outcome, .. }) => {
                next.rollback_tally.add(outcome);
                summed += 1;
            }
            _ => {}
        }
    }
    next.folded = through;
    advance(&mut next, now);
    Ok(write(next, &format!("{summed} result(s)"), None, now))
}

/// Marks what `announcement` called for as published — unless the deployment has moved on
/// since (a new wave, a resume, the end), which calls for something else.
pub fn announced(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    announcement: Announcement,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    if d.announced || d.announcement() != announcement {
        return Ok(Decision::Unchanged);
    }
    let mut next = d.clone();
    next.announced = true;
    Ok(write(next, "announced", None, now))
}

/// Stops a running deployment (tenants not started stay untouched). `mark` is where the command
/// is in the stream (`None` when it has no place there, as for a check before sending it): a
/// stale one changes nothing, and one that finds the deployment cancelled already is still
/// recorded, so no command sent before it takes effect after it.
pub fn cancel(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    mark: Option<&CommandMark>,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    if d.stale_control(mark) {
        return Ok(Decision::Unchanged);
    }
    match d.status {
        RolloutStatus::Cancelled => Ok(satisfied(d, mark, "cancel (cancelled already)", now)),
        RolloutStatus::Running | RolloutStatus::Halted => {
            let mut next = marked(d.clone(), mark);
            next.status = RolloutStatus::Cancelled;
            next.reason = Some("cancelled by an operator".to_owned());
            next.finished_at = Some(now.clone());
            next.announced = false;
            Ok(write(next, "cancel", None, now))
        }
        status => Err(illegal(id, status, "cancel")),
    }
}

/// Restarts a halted or cancelled deployment. Its failed tenants are retried: the deployer
/// writes a [`ResultEntry::Retry`] over each failed outcome first and folds them (they no
/// longer count), then publishes their jobs again with fresh message ids. A wave that is
/// complete moves on at once (to the next wave, or the end). `mark` as for [`cancel`].
pub fn resume(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    mark: Option<&CommandMark>,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    if d.stale_control(mark) {
        return Ok(Decision::Unchanged);
    }
    match d.status {
        RolloutStatus::Running => Ok(satisfied(d, mark, "resume (running already)", now)),
        RolloutStatus::Halted | RolloutStatus::Cancelled => {
            let mut next = marked(d.clone(), mark);
            next.status = RolloutStatus::Running;
            next.reason = None;
            next.finished_at = None;
            next.resumes += 1;
            next.announced = false;
            // A wave whose every tenant has a result (the cancel came after its last job) moves
            // on now: no result is coming that would move it.
            advance(&mut next, now);
            Ok(write(next, "resume", None, now))
        }
        status => Err(illegal(id, status, "resume")),
    }
}

/// Starts undoing a finished deployment on the tenants it migrated.
pub fn start_rollback(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    match d.status {
        RolloutStatus::RollingBack | RolloutStatus::RolledBack => Ok(Decision::Unchanged),
        RolloutStatus::Running | RolloutStatus::Rejected => Err(illegal(id, d.status, "roll back")),
        // A dry run changed nothing: "rolled back" would claim it had.
        _ if d.dry_run => Err(illegal(
            id,
            d.status,
            "roll back a dry run (it changed nothing)",
        )),
        _ => {
            let mut next = d.clone();
            next.rollback_targets = d.tally.migrated();
            next.rollback_tally = Tally::default();
            next.reason = None;
            next.announced = false;
            if next.rollback_targets == 0 {
                next.status = RolloutStatus::RolledBack;
                next.finished_at = Some(now.clone());
            } else {
                next.status = RolloutStatus::RollingBack;
                next.finished_at = None;
            }
            Ok(write(next, "rollback", None, now))
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every rollout transition, legal and illegal, at pinned times; results arrive as the
    //! entries a fold reads back, with stream sequences.

    use super::*;

    /// `t(0)` is 2026-01-01T00:00:00Z; `t(n)` is `n` seconds later.
    fn t(seconds: i64) -> Timestamp {
        let epoch = Timestamp::parse("2026-01-01T00:00:00Z").unwrap().instant();
        Timestamp::from(epoch + chrono::Duration::seconds(seconds))
    }

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    /// Command `sequence` of the command stream created at `t(stream)`, stored at `t(published)`.
    fn mark(sequence: u64, stream: i64, published: i64) -> CommandMark {
        CommandMark {
            sequence,
            stream: t(stream),
            published: t(published),
        }
    }

    fn id() -> DeploymentId {
        DeploymentId::parse("d1").unwrap()
    }

    fn deployment(wave_ends: Vec<u64>, ratio: f64) -> Deployment {
        Deployment {
            version: "1".into(),
            checksum: "x".into(),
            max_failure_ratio: ratio,
            wave_ends,
            targets_attempt: "a1".into(),
            ..Deployment::new(id(), RolloutStatus::Running, t(0))
        }
    }

    fn started(wave_ends: Vec<u64>, ratio: f64) -> Versioned<Deployment> {
        match start(None, &deployment(wave_ends, ratio), &t(0)).unwrap() {
            Decision::Write { next, .. } => Versioned {
                state: next,
                revision: 1,
            },
            Decision::Unchanged => panic!("written"),
        }
    }

    fn apply(v: &mut Versioned<Deployment>, d: Decision<Deployment>) -> bool {
        match d {
            Decision::Write { next, .. } => {
                v.state = next;
                v.revision += 1;
                true
            }
            Decision::Unchanged => false,
        }
    }

    fn outcome(ok: bool) -> TenantOutcome {
        if ok {
            TenantOutcome::ready(1)
        } else {
            TenantOutcome::failed("boom".into())
        }
    }

    fn result(sequence: u64, name: &str, ok: bool) -> Written {
        Written {
            sequence,
            key: EntryKey::Deploy(tenant(name)),
            entry: ResultEntry::Outcome {
                wave: 0,
                outcome: outcome(ok),
            },
        }
    }

    fn retry(sequence: u64, name: &str, replaces: u64) -> Written {
        Written {
            sequence,
            key: EntryKey::Deploy(tenant(name)),
            entry: ResultEntry::Retry { replaces },
        }
    }

    fn rolled_back(sequence: u64, name: &str, ok: bool) -> Written {
        Written {
            sequence,
            key: EntryKey::Rollback(tenant(name)),
            ..result(sequence, name, ok)
        }
    }

    /// Folds `entries` (through the last one's sequence) at time `at`.
    fn fold_in(d: &mut Versioned<Deployment>, entries: &[Written], at: i64) -> bool {
        let through = entries.last().map_or(0, |w| w.sequence);
        let decision = fold(Some(d), &id(), entries, through, &t(at)).unwrap();
        apply(d, decision)
    }

    fn illegal<T: std::fmt::Debug>(result: Result<T, RolloutError>) -> bool {
        matches!(result, Err(RolloutError::Illegal { .. }))
    }

    #[test]
    fn start_writes_once() {
        let d = started(vec![1], 0.5);
        assert_eq!(d.state.status, RolloutStatus::Running);
        assert_eq!(
            start(Some(&d), &deployment(vec![2], 0.5), &t(1)).unwrap(),
            Decision::Unchanged,
            "a repeated request with the same id changes nothing"
        );
    }

    #[test]
    fn waves_advance_only_when_complete_and_finish() {
        let mut d = started(vec![1, 3], 0.5);
        d.state.announced = true;
        fold_in(&mut d, &[result(5, "a", true)], 1);
        assert_eq!(d.state.current_wave, 1);
        assert!(
            !d.state.announced,
            "the new wave's jobs are to be published"
        );
        assert_eq!(d.state.wave_range(1), 1..3);
        fold_in(&mut d, &[result(6, "b", true)], 2);
        assert_eq!(
            (d.state.current_wave, d.state.status, d.state.counts()),
            (1, RolloutStatus::Running, (2, 0, 1))
        );
        fold_in(&mut d, &[result(9, "c", true)], 4);
        assert_eq!(d.state.status, RolloutStatus::Completed);
        assert_eq!(d.state.finished_at, Some(t(4)));
        assert_eq!(d.state.folded, 9);
        assert_eq!(
            fold(None, &id(), &[], 1, &t(5)),
            Err(RolloutError::Unknown("d1".into()))
        );
    }

    #[test]
    fn every_entry_counts_once_whoever_folds_it() {
        let mut d = started(vec![10], 0.5);
        let entries = [result(3, "a", true), result(4, "b", false)];
        assert!(fold_in(&mut d, &entries, 1));
        assert_eq!(d.state.counts(), (1, 1, 8));
        // A second folder read the same entries: behind the watermark, nothing changes.
        assert!(!fold_in(&mut d, &entries, 2));
        // A folder that read further counts only what is past the watermark.
        assert!(fold_in(
            &mut d,
            &[result(4, "b", false), result(7, "c", true)],
            3
        ));
        assert_eq!(d.state.counts(), (2, 1, 7));
        // Targets chunks and foreign keys are not results.
        let chunk = Written {
            sequence: 8,
            key: EntryKey::Targets,
            entry: ResultEntry::Retry { replaces: 1 },
        };
        assert!(fold_in(&mut d, &[chunk], 4));
        assert_eq!((d.state.counts(), d.state.folded), ((2, 1, 7), 8));
    }

    #[test]
    fn the_record_does_not_grow_with_the_fleet() {
        let size = |n: u64| {
            let mut d = started(vec![n / 10, n], 1.0);
            let entries: Vec<Written> = (0..n)
                .map(|i| result(i + 1, &format!("t{i}"), i % 7 != 0))
                .collect();
            fold_in(&mut d, &entries, 1);
            assert_eq!(d.state.tally.recorded(), n);
            serde_json::to_vec(&d.state).unwrap().len()
        };
        let (small, large) = (size(10), size(100_000));
        assert!(
            large <= small + 64,
            "{small} bytes for 10 tenants, {large} for 100 000: only digits may differ"
        );
    }

    #[test]
    fn failures_under_the_ratio_complete_with_failures() {
        let mut d = started(vec![4], 0.5);
        fold_in(
            &mut d,
            &[
                result(1, "a", true),
                result(2, "b", false),
                result(3, "c", true),
                result(4, "d", true),
            ],
            1,
        );
        assert_eq!(d.state.status, RolloutStatus::CompletedWithFailures);
        assert_eq!(d.state.tally.changed, 3);
    }

    #[test]
    fn too_many_failures_halt_and_resume_retries_them() {
        let mut d = started(vec![2, 3], 0.4);
        fold_in(&mut d, &[result(1, "a", false)], 1);
        fold_in(&mut d, &[result(2, "b", true)], 2);
        assert_eq!(d.state.status, RolloutStatus::Halted);
        assert!(d.state.reason.as_deref().unwrap().contains("failure ratio"));
        assert_eq!(d.state.finished_at, Some(t(2)));
        // The deployer marks a's failed outcome (sequence 1, folded) for retry, then resumes.
        fold_in(&mut d, &[retry(3, "a", 1)], 3);
        assert_eq!(d.state.counts(), (1, 0, 2));
        let decision = resume(Some(&d), &id(), None, &t(3)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Running);
        assert_eq!(d.state.next(), Next::Wait, "a is pending again");
        assert_eq!(d.state.resumes, 1, "its jobs get fresh message ids");
        assert_eq!(d.state.finished_at, None);
        assert!(!d.state.announced);
        assert_eq!(
            resume(Some(&d), &id(), None, &t(4)).unwrap(),
            Decision::Unchanged,
            "resuming a running rollout changes nothing"
        );
        let decision = cancel(Some(&d), &id(), None, &t(5)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Cancelled);
        assert_eq!(d.state.finished_at, Some(t(5)));
        assert_eq!(
            cancel(Some(&d), &id(), None, &t(6)).unwrap(),
            Decision::Unchanged
        );
        let decision = resume(Some(&d), &id(), None, &t(7)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.resumes, 2);
    }

    #[test]
    fn resuming_a_rollout_cancelled_after_its_wave_completed_moves_it_on() {
        let mut d = started(vec![1, 2], 0.5);
        let decision = cancel(Some(&d), &id(), None, &t(1)).unwrap();
        apply(&mut d, decision);
        // The wave's last result arrives after the cancel.
        fold_in(&mut d, &[result(1, "a", true)], 2);
        assert_eq!(d.state.status, RolloutStatus::Cancelled);
        let decision = resume(Some(&d), &id(), None, &t(3)).unwrap();
        apply(&mut d, decision);
        assert_eq!(
            (d.state.status, d.state.current_wave),
            (RolloutStatus::Running, 1)
        );
        assert!(!d.state.announced, "wave 2's jobs are to be published");
        let decision = cancel(Some(&d), &id(), None, &t(4)).unwrap();
        apply(&mut d, decision);
        fold_in(&mut d, &[result(2, "b", true)], 5);
        let decision = resume(Some(&d), &id(), None, &t(6)).unwrap();
        apply(&mut d, decision);
        assert_eq!(
            d.state.status,
            RolloutStatus::Completed,
            "every target has a result: it ends"
        );
    }

    #[test]
    fn a_retry_marker_uncounts_only_a_failure_that_was_counted() {
        let mut d = started(vec![5], 1.0);
        // Failed outcome and its marker in one fold: counted, then un-counted.
        fold_in(&mut d, &[result(1, "a", false), retry(2, "a", 1)], 1);
        assert_eq!(d.state.tally.failed, 0);
        // A failed outcome replaced before any fold read it (history 1 keeps only the
        // marker): never counted, so nothing to un-count.
        fold_in(&mut d, &[retry(4, "b", 3)], 2);
        assert_eq!(d.state.tally.failed, 0);
        // The retried tenant's new outcome counts.
        fold_in(&mut d, &[result(5, "a", true)], 3);
        assert_eq!(d.state.counts(), (1, 0, 4));
    }

    #[test]
    fn announcing_marks_only_the_state_it_was_published_for() {
        let mut d = started(vec![1, 2], 0.5);
        let first = d.state.announcement();
        fold_in(&mut d, &[result(1, "a", true)], 1);
        assert_eq!(
            announced(Some(&d), &id(), first, &t(2)).unwrap(),
            Decision::Unchanged,
            "wave 0's announcement does not cover wave 1"
        );
        let second = d.state.announcement();
        let decision = announced(Some(&d), &id(), second, &t(2)).unwrap();
        apply(&mut d, decision);
        assert!(d.state.announced);
        assert_eq!(
            announced(Some(&d), &id(), second, &t(3)).unwrap(),
            Decision::Unchanged
        );
    }

    #[test]
    fn operator_commands_take_effect_in_stream_order_and_a_stale_one_changes_nothing() {
        let stream = t(-60);
        // Command `n` of the stream created at `stream`, stored at `t(n)`.
        let at = |sequence: u64| Some(mark(sequence, -60, sequence as i64));
        let mut d = started(vec![2], 0.5);
        // The cancel at sequence 9 is carried out ahead of its turn (taken from the stream).
        let decision = cancel(Some(&d), &id(), at(9).as_ref(), &t(20)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Cancelled);
        assert_eq!(
            (
                d.state.control_sequence,
                d.state.control_stream.as_ref(),
                d.state.control_published.as_ref()
            ),
            (9, Some(&stream), Some(&t(9)))
        );
        // Its own delivery later, and a resume sent before it (sequence 7): stale.
        let stale = |d: &Versioned<Deployment>, mark: Option<CommandMark>| {
            (
                cancel(Some(d), &id(), mark.as_ref(), &t(21)).unwrap(),
                resume(Some(d), &id(), mark.as_ref(), &t(21)).unwrap(),
            )
        };
        let unchanged = (Decision::Unchanged, Decision::Unchanged);
        assert_eq!(stale(&d, at(9)), unchanged);
        assert_eq!(stale(&d, at(7)), unchanged);
        // A resume sent after it counts, and records its own place.
        let decision = resume(Some(&d), &id(), at(12).as_ref(), &t(22)).unwrap();
        apply(&mut d, decision);
        assert_eq!(
            (d.state.status, d.state.control_sequence),
            (RolloutStatus::Running, 12)
        );
        // A resume that finds it running changes nothing but is recorded: a cancel sent
        // before it (13), handled after it, is stale instead of stopping the rollout.
        let decision = resume(Some(&d), &id(), at(14).as_ref(), &t(23)).unwrap();
        apply(&mut d, decision);
        assert_eq!(
            (d.state.status, d.state.control_sequence),
            (RolloutStatus::Running, 14)
        );
        assert_eq!(
            cancel(Some(&d), &id(), at(13).as_ref(), &t(24)).unwrap(),
            Decision::Unchanged
        );
        // The stream restored from a backup taken before the resume at 14: its commands keep
        // their sequences and times, the stream gets a new creation time. The replayed
        // commands are stale by time; one sent to it afterwards (sequence 15) counts.
        let restored = t(100);
        let replayed = |sequence: u64| mark(sequence, 100, sequence as i64);
        assert_eq!(stale(&d, Some(replayed(12))), unchanged);
        assert_eq!(stale(&d, Some(replayed(13))), unchanged);
        let after_restore = mark(15, 100, 101);
        let decision = cancel(Some(&d), &id(), Some(&after_restore), &t(102)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Cancelled);
        assert_eq!(d.state.control_stream.as_ref(), Some(&restored));
        // The stream created again, empty, numbers from 1: its commands are not stale.
        let again = mark(1, 200, 201);
        let decision = resume(Some(&d), &id(), Some(&again), &t(202)).unwrap();
        apply(&mut d, decision);
        assert_eq!(
            (d.state.status, d.state.control_sequence),
            (RolloutStatus::Running, 1)
        );
        // A stream created again on a server whose clock is behind (created at t(60), a
        // command stored at t(70), before the last one carried out): still not stale.
        let behind = mark(1, 60, 70);
        assert!(!d.state.stale_control(Some(&behind)));
        // A command read from a stream created after it was stored (deleted and created
        // again between the two reads) is placed by its time, and its sequence is not taken
        // for the new stream's.
        let orphan = mark(5_000, 300, 250);
        let decision = cancel(Some(&d), &id(), Some(&orphan), &t(301)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.control_stream, None);
        let next = mark(1, 300, 302);
        assert!(!d.state.stale_control(Some(&next)));
        // A command with no place in the stream (a check before sending one) is never stale,
        // and records nothing.
        assert_eq!(
            cancel(Some(&d), &id(), None, &t(303)).unwrap(),
            Decision::Unchanged
        );
        assert!(matches!(
            resume(Some(&d), &id(), None, &t(303)).unwrap(),
            Decision::Write { next, .. } if next.control_sequence == 5_000
        ));
        // A record of an earlier release (no `controlSequence`) reads as 0, no stream.
        let mut json = serde_json::to_value(&d.state).unwrap();
        let object = json.as_object_mut().unwrap();
        for field in ["controlSequence", "controlStream", "controlPublished"] {
            object.remove(field);
        }
        let old: Deployment = serde_json::from_value(json).unwrap();
        assert_eq!(
            (old.control_sequence, old.control_stream.as_ref()),
            (0, None)
        );
        assert!(!old.stale_control(at(1).as_ref()));
    }

    #[test]
    fn finished_deployments_cannot_be_cancelled_or_resumed() {
        let mut d = started(vec![1], 0.5);
        fold_in(&mut d, &[result(1, "a", true)], 1);
        assert!(illegal(cancel(Some(&d), &id(), None, &t(2))));
        assert!(illegal(resume(Some(&d), &id(), None, &t(2))));
        assert_eq!(
            cancel(None, &id(), None, &t(2)),
            Err(RolloutError::Unknown("d1".into()))
        );
    }

    #[test]
    fn a_rollback_undoes_every_migrated_tenant_and_reports_failures() {
        let mut d = started(vec![4], 1.0);
        assert!(
            illegal(start_rollback(Some(&d), &id(), &t(1))),
            "not while running"
        );
        let skipped = Written {
            entry: ResultEntry::Outcome {
                wave: 0,
                outcome: TenantOutcome {
                    skipped: true,
                    ..TenantOutcome::ready(0)
                },
            },
            ..result(4, "d", true)
        };
        fold_in(
            &mut d,
            &[
                result(1, "a", true),
                result(2, "b", true),
                result(3, "c", false),
                skipped,
            ],
            1,
        );
        assert_eq!(d.state.status, RolloutStatus::CompletedWithFailures);
        let decision = start_rollback(Some(&d), &id(), &t(2)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::RollingBack);
        assert_eq!(d.state.rollback_targets, 2, "a and b; d was skipped");
        assert_eq!(
            start_rollback(Some(&d), &id(), &t(3)).unwrap(),
            Decision::Unchanged
        );
        fold_in(&mut d, &[rolled_back(5, "a", true)], 3);
        assert_eq!(d.state.status, RolloutStatus::RollingBack);
        fold_in(&mut d, &[rolled_back(6, "b", false)], 4);
        assert_eq!(d.state.status, RolloutStatus::RolledBack);
        assert_eq!(d.state.finished_at, Some(t(4)));
        assert_eq!(
            d.state.reason.as_deref(),
            Some("1 tenant(s) could not be rolled back")
        );
    }

    #[test]
    fn a_dry_run_is_not_rolled_back() {
        let mut d = started(vec![1], 0.0);
        d.state.dry_run = true;
        fold_in(&mut d, &[result(1, "a", true)], 1);
        assert_eq!(d.state.status, RolloutStatus::Completed);
        let refused = start_rollback(Some(&d), &id(), &t(2));
        assert!(
            matches!(refused, Err(RolloutError::Illegal { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn a_rollback_with_nothing_migrated_is_done_at_once_and_rejected_ones_are_refused() {
        let mut d = started(vec![1], 0.0);
        fold_in(&mut d, &[result(1, "a", false)], 1);
        assert_eq!(d.state.status, RolloutStatus::Halted);
        let decision = start_rollback(Some(&d), &id(), &t(2)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::RolledBack);
        let mut rejected = deployment(vec![], 0.5);
        rejected.status = RolloutStatus::Rejected;
        let Decision::Write { next, .. } = start(None, &rejected, &t(0)).unwrap() else {
            panic!("written")
        };
        let v = Versioned {
            state: next,
            revision: 1,
        };
        assert!(illegal(start_rollback(Some(&v), &id(), &t(1))));
    }

    #[test]
    fn keys_name_their_entries() {
        let d = id();
        assert_eq!(EntryKey::Deploy(tenant("acme")).key(&d), "d1.t.acme");
        assert_eq!(
            EntryKey::parse(&d, "d1.r.acme"),
            Some(EntryKey::Rollback(tenant("acme")))
        );
        assert_eq!(
            EntryKey::parse(&d, &targets_key(&d, "a1", 3)),
            Some(EntryKey::Targets)
        );
        assert_eq!(EntryKey::parse(&d, "d10.t.acme"), None);
    }
}
