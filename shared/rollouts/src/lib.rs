//! Deployments' data: the deployment record (KV `fleet_deployments`) and its pure state
//! machine — waves, per-tenant results, the failure ratio that halts a rollout, resume and
//! cancel, rollbacks. No I/O: the deployer carries the decisions out, `fleetctl` reads the
//! records; neither depends on the other.

#![deny(missing_docs)]

use std::collections::BTreeMap;

use fleet_protocol::{DeployStatus, DeploymentId, TenantId, Timestamp};
use fleet_state::{Decision, ProgressEvent, Versioned};
use serde::{Deserialize, Serialize};

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
    /// Undone on every tenant it migrated (see `rollbacks` for any that could not be).
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
    /// Duration.
    #[serde(default)]
    pub duration_ms: u64,
}

/// A deployment (the `fleet_deployments` KV value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// Id.
    pub id: DeploymentId,
    /// Bundle version.
    pub version: String,
    /// Bundle checksum (verified or computed).
    pub checksum: String,
    /// Status.
    pub status: RolloutStatus,
    /// Plan only.
    pub dry_run: bool,
    /// Allow destructive changes.
    pub allow_destructive: bool,
    /// Halt above this failure share.
    pub max_failure_ratio: f64,
    /// Tenants per wave, in order.
    pub waves: Vec<Vec<TenantId>>,
    /// The wave running now.
    pub current_wave: usize,
    /// Results by tenant.
    pub results: BTreeMap<TenantId, TenantOutcome>,
    /// Rollback results by tenant (only during and after a rollback).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollbacks: BTreeMap<TenantId, TenantOutcome>,
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
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
        /// Deployment.
        id: String,
        /// Its status.
        status: RolloutStatus,
        /// What was attempted.
        event: &'static str,
    },
}

/// What happens after a tenant result is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The wave is still running.
    Wait,
    /// Start wave `n`.
    StartWave(usize),
    /// The deployment ended (completed, completed with failures, halted).
    Finished(RolloutStatus),
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
    /// The tenants a rollback undoes: those this deployment migrated.
    pub fn migrated(&self) -> Vec<TenantId> {
        if self.dry_run {
            return Vec::new();
        }
        self.results
            .iter()
            .filter(|(_, r)| r.status == DeployStatus::Ready && !r.skipped)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Counts of tenant results: (ready, failed, pending).
    pub fn counts(&self) -> (usize, usize, usize) {
        let ready = self
            .results
            .values()
            .filter(|r| r.status == DeployStatus::Ready)
            .count();
        let failed = self
            .results
            .values()
            .filter(|r| r.status == DeployStatus::Failed)
            .count();
        let total: usize = self.waves.iter().map(Vec::len).sum();
        (ready, failed, total - ready - failed)
    }

    fn wave_done(&self, wave: usize) -> bool {
        self.waves
            .get(wave)
            .is_some_and(|tenants| tenants.iter().all(|t| self.results.contains_key(t)))
    }

    /// What follows the results recorded so far.
    pub fn next(&self) -> Next {
        if self.status != RolloutStatus::Running || !self.wave_done(self.current_wave) {
            return Next::Wait;
        }
        let (ready, failed, _) = self.counts();
        let finished = ready + failed;
        if failed > 0 && (failed as f64 / finished.max(1) as f64) > self.max_failure_ratio {
            return Next::Finished(RolloutStatus::Halted);
        }
        if self.current_wave + 1 < self.waves.len() {
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

/// Records one tenant's outcome, then moves the rollout on when its wave is done.
pub fn record(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    tenant: &TenantId,
    outcome: &TenantOutcome,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    if d.results.contains_key(tenant) {
        return Ok(Decision::Unchanged);
    }
    let mut next = d.clone();
    next.results.insert(tenant.clone(), outcome.clone());
    let step = format!(
        "tenant {tenant}: {}",
        serde_json::to_value(outcome.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    match next.next() {
        Next::StartWave(wave) => next.current_wave = wave,
        Next::Finished(status) => {
            next.status = status;
            next.finished_at = Some(now.clone());
            if status == RolloutStatus::Halted {
                let (_, failed, _) = next.counts();
                next.reason = Some(format!(
                    "halted after wave {}: {failed} failed tenant(s) exceed the failure ratio {}",
                    next.current_wave + 1,
                    next.max_failure_ratio
                ));
            }
        }
        Next::Wait => {}
    }
    Ok(write(next, &step, outcome.error.clone(), now))
}

/// Stops a running deployment (tenants not started stay untouched).
pub fn cancel(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    match d.status {
        RolloutStatus::Cancelled => Ok(Decision::Unchanged),
        RolloutStatus::Running | RolloutStatus::Halted => {
            let mut next = d.clone();
            next.status = RolloutStatus::Cancelled;
            next.reason = Some("cancelled by an operator".to_owned());
            next.finished_at = Some(now.clone());
            Ok(write(next, "cancel", None, now))
        }
        status => Err(illegal(id, status, "cancel")),
    }
}

/// Restarts a halted or cancelled deployment: failed tenants of the current wave are retried.
pub fn resume(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    match d.status {
        RolloutStatus::Running => Ok(Decision::Unchanged),
        RolloutStatus::Halted | RolloutStatus::Cancelled => {
            let mut next = d.clone();
            next.status = RolloutStatus::Running;
            next.reason = None;
            next.finished_at = None;
            next.results.retain(|_, r| r.status != DeployStatus::Failed);
            next.resumes += 1;
            Ok(write(next, "resume", None, now))
        }
        status => Err(illegal(id, status, "resume")),
    }
}

/// Starts undoing a finished deployment.
pub fn start_rollback(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    match d.status {
        RolloutStatus::RollingBack | RolloutStatus::RolledBack => Ok(Decision::Unchanged),
        RolloutStatus::Running | RolloutStatus::Rejected => Err(illegal(id, d.status, "roll back")),
        _ => {
            let mut next = d.clone();
            next.status = if next.migrated().is_empty() {
                RolloutStatus::RolledBack
            } else {
                RolloutStatus::RollingBack
            };
            next.rollbacks.clear();
            next.finished_at = None;
            Ok(write(next, "rollback", None, now))
        }
    }
}

/// Records one tenant's rollback; the last one ends the rollback.
pub fn record_rollback(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    tenant: &TenantId,
    outcome: &TenantOutcome,
    now: &Timestamp,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    if d.status != RolloutStatus::RollingBack || d.rollbacks.contains_key(tenant) {
        return Ok(Decision::Unchanged);
    }
    let mut next = d.clone();
    next.rollbacks.insert(tenant.clone(), outcome.clone());
    if next
        .migrated()
        .iter()
        .all(|t| next.rollbacks.contains_key(t))
    {
        next.status = RolloutStatus::RolledBack;
        next.finished_at = Some(now.clone());
        let failed = next
            .rollbacks
            .values()
            .filter(|r| r.status == DeployStatus::Failed)
            .count();
        if failed > 0 {
            next.reason = Some(format!("{failed} tenant(s) could not be rolled back"));
        }
    }
    Ok(write(
        next,
        &format!("rollback {tenant}"),
        outcome.error.clone(),
        now,
    ))
}

#[cfg(test)]
mod tests {
    //! Every rollout transition, legal and illegal, at pinned times.

    use super::*;

    /// `t(0)` is 2026-01-01T00:00:00Z; `t(n)` is `n` seconds later.
    fn t(seconds: i64) -> Timestamp {
        let epoch = Timestamp::parse("2026-01-01T00:00:00Z").unwrap().instant();
        Timestamp::from(epoch + chrono::Duration::seconds(seconds))
    }

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn deployment(waves: Vec<Vec<&str>>, ratio: f64) -> Deployment {
        Deployment {
            id: DeploymentId::parse("d1").unwrap(),
            version: "1".into(),
            checksum: "x".into(),
            status: RolloutStatus::Running,
            dry_run: false,
            allow_destructive: false,
            max_failure_ratio: ratio,
            waves: waves
                .into_iter()
                .map(|w| w.into_iter().map(tenant).collect())
                .collect(),
            current_wave: 0,
            results: BTreeMap::new(),
            rollbacks: BTreeMap::new(),
            reason: None,
            requested_at: t(0),
            finished_at: None,
            resumes: 0,
        }
    }

    /// A started deployment (revision 1).
    fn started(waves: Vec<Vec<&str>>, ratio: f64) -> Versioned<Deployment> {
        let mut v = None;
        apply_to(
            &mut v,
            start(None, &deployment(waves, ratio), &t(0)).unwrap(),
        );
        v.unwrap()
    }

    fn outcome(ok: bool) -> TenantOutcome {
        if ok {
            TenantOutcome::ready(1)
        } else {
            TenantOutcome::failed("boom".into())
        }
    }

    fn apply_to(v: &mut Option<Versioned<Deployment>>, d: Decision<Deployment>) {
        if let Decision::Write { next, .. } = d {
            let revision = v.as_ref().map_or(1, |c| c.revision + 1);
            *v = Some(Versioned {
                state: next,
                revision,
            });
        }
    }

    fn apply(v: &mut Versioned<Deployment>, d: Decision<Deployment>) {
        if let Decision::Write { next, .. } = d {
            v.state = next;
            v.revision += 1;
        }
    }

    fn id() -> DeploymentId {
        DeploymentId::parse("d1").unwrap()
    }

    fn illegal<T: std::fmt::Debug>(result: Result<T, RolloutError>) -> bool {
        matches!(result, Err(RolloutError::Illegal { .. }))
    }

    #[test]
    fn start_writes_once() {
        let d = started(vec![vec!["a"]], 0.5);
        assert_eq!(d.state.status, RolloutStatus::Running);
        assert_eq!(
            start(Some(&d), &deployment(vec![vec!["b"]], 0.5), &t(1)).unwrap(),
            Decision::Unchanged,
            "a repeated request with the same id changes nothing"
        );
    }

    #[test]
    fn waves_advance_only_when_complete_and_finish() {
        let mut d = started(vec![vec!["a"], vec!["b", "c"]], 0.5);
        let decision = record(Some(&d), &id(), &tenant("a"), &outcome(true), &t(1)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.current_wave, 1);
        let decision = record(Some(&d), &id(), &tenant("b"), &outcome(true), &t(2)).unwrap();
        apply(&mut d, decision);
        assert_eq!(
            (d.state.current_wave, d.state.status),
            (1, RolloutStatus::Running)
        );
        assert_eq!(
            record(Some(&d), &id(), &tenant("b"), &outcome(false), &t(3)).unwrap(),
            Decision::Unchanged,
            "a tenant's first result stands"
        );
        let last = record(Some(&d), &id(), &tenant("c"), &outcome(true), &t(4)).unwrap();
        match &last {
            Decision::Write { event, .. } => assert_eq!(event.at, t(4)),
            Decision::Unchanged => panic!("recorded"),
        }
        let decision = last;
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Completed);
        assert_eq!(d.state.finished_at, Some(t(4)));
        assert_eq!(
            record(None, &id(), &tenant("a"), &outcome(true), &t(5)),
            Err(RolloutError::Unknown("d1".into()))
        );
    }

    #[test]
    fn failures_under_the_ratio_complete_with_failures() {
        let mut d = started(vec![vec!["a", "b", "c", "d"]], 0.5);
        for (name, ok) in [("a", true), ("b", false), ("c", true), ("d", true)] {
            let decision = record(Some(&d), &id(), &tenant(name), &outcome(ok), &t(1)).unwrap();
            apply(&mut d, decision);
        }
        assert_eq!(d.state.status, RolloutStatus::CompletedWithFailures);
    }

    #[test]
    fn too_many_failures_halt_and_resume_retries_them() {
        let mut d = started(vec![vec!["a", "b"], vec!["c"]], 0.4);
        let decision = record(Some(&d), &id(), &tenant("a"), &outcome(false), &t(1)).unwrap();
        apply(&mut d, decision);
        let decision = record(Some(&d), &id(), &tenant("b"), &outcome(true), &t(2)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Halted);
        assert!(d.state.reason.as_deref().unwrap().contains("failure ratio"));
        assert_eq!(d.state.finished_at, Some(t(2)));
        let decision = resume(Some(&d), &id(), &t(3)).unwrap();
        apply(&mut d, decision);
        assert_eq!(
            (d.state.status, d.state.results.len()),
            (RolloutStatus::Running, 1)
        );
        assert_eq!(d.state.next(), Next::Wait, "a is pending again");
        assert_eq!(d.state.resumes, 1, "its jobs get fresh message ids");
        assert_eq!(d.state.finished_at, None);
        assert_eq!(
            resume(Some(&d), &id(), &t(4)).unwrap(),
            Decision::Unchanged,
            "resuming a running rollout changes nothing"
        );
        let decision = cancel(Some(&d), &id(), &t(5)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Cancelled);
        assert_eq!(d.state.finished_at, Some(t(5)));
        assert_eq!(cancel(Some(&d), &id(), &t(6)).unwrap(), Decision::Unchanged);
        let decision = resume(Some(&d), &id(), &t(7)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.resumes, 2);
    }

    #[test]
    fn finished_deployments_cannot_be_cancelled_or_resumed() {
        let mut d = started(vec![vec!["a"]], 0.5);
        let decision = record(Some(&d), &id(), &tenant("a"), &outcome(true), &t(1)).unwrap();
        apply(&mut d, decision);
        assert!(illegal(cancel(Some(&d), &id(), &t(2))));
        assert!(illegal(resume(Some(&d), &id(), &t(2))));
        assert_eq!(
            cancel(None, &id(), &t(2)),
            Err(RolloutError::Unknown("d1".into()))
        );
    }

    #[test]
    fn a_rollback_undoes_every_migrated_tenant_and_reports_failures() {
        let mut d = started(vec![vec!["a", "b", "c"]], 1.0);
        assert!(
            illegal(start_rollback(Some(&d), &id(), &t(1))),
            "not while running"
        );
        for (name, ok) in [("a", true), ("b", true), ("c", false)] {
            let decision = record(Some(&d), &id(), &tenant(name), &outcome(ok), &t(1)).unwrap();
            apply(&mut d, decision);
        }
        assert_eq!(d.state.status, RolloutStatus::CompletedWithFailures);
        assert_eq!(
            record_rollback(Some(&d), &id(), &tenant("a"), &outcome(true), &t(2)).unwrap(),
            Decision::Unchanged,
            "no rollback result outside a rollback"
        );
        let decision = start_rollback(Some(&d), &id(), &t(2)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::RollingBack);
        assert_eq!(d.state.migrated(), vec![tenant("a"), tenant("b")]);
        assert_eq!(
            start_rollback(Some(&d), &id(), &t(3)).unwrap(),
            Decision::Unchanged
        );
        let decision =
            record_rollback(Some(&d), &id(), &tenant("a"), &outcome(true), &t(3)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::RollingBack);
        let decision =
            record_rollback(Some(&d), &id(), &tenant("b"), &outcome(false), &t(4)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::RolledBack);
        assert_eq!(d.state.finished_at, Some(t(4)));
        assert_eq!(
            d.state.reason.as_deref(),
            Some("1 tenant(s) could not be rolled back")
        );
    }

    #[test]
    fn a_rollback_with_nothing_migrated_is_done_at_once_and_rejected_ones_are_refused() {
        let mut d = started(vec![vec!["a"]], 0.0);
        let decision = record(Some(&d), &id(), &tenant("a"), &outcome(false), &t(1)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Halted);
        let decision = start_rollback(Some(&d), &id(), &t(2)).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::RolledBack);
        let mut rejected = deployment(vec![], 0.5);
        rejected.status = RolloutStatus::Rejected;
        let mut v = None;
        apply_to(&mut v, start(None, &rejected, &t(0)).unwrap());
        assert!(illegal(start_rollback(v.as_ref(), &id(), &t(1))));
    }
}
