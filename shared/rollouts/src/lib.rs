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

fn event(d: &Deployment, step: &str, error: Option<String>) -> ProgressEvent {
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
        at: Timestamp::now(),
        revision: 0,
    }
}

fn write(next: Deployment, step: &str, error: Option<String>) -> Decision<Deployment> {
    let event = event(&next, step, error);
    Decision::Write { next, event }
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
) -> Result<Decision<Deployment>, RolloutError> {
    match current {
        Some(_) => Ok(Decision::Unchanged),
        None => Ok(Decision::Write {
            event: event(deployment, "requested", None),
            next: deployment.clone(),
        }),
    }
}

/// Records one tenant's outcome, then moves the rollout on when its wave is done.
pub fn record(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    tenant: &TenantId,
    outcome: &TenantOutcome,
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
            next.finished_at = Some(Timestamp::now());
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
    Ok(write(next, &step, outcome.error.clone()))
}

/// Stops a running deployment (tenants not started stay untouched).
pub fn cancel(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    match d.status {
        RolloutStatus::Cancelled => Ok(Decision::Unchanged),
        RolloutStatus::Running | RolloutStatus::Halted => {
            let mut next = d.clone();
            next.status = RolloutStatus::Cancelled;
            next.reason = Some("cancelled by an operator".to_owned());
            next.finished_at = Some(Timestamp::now());
            Ok(write(next, "cancel", None))
        }
        status => Err(RolloutError::Illegal {
            id: id.to_string(),
            status,
            event: "cancel",
        }),
    }
}

/// Restarts a halted or cancelled deployment: failed tenants of the current wave are retried.
pub fn resume(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
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
            Ok(write(next, "resume", None))
        }
        status => Err(RolloutError::Illegal {
            id: id.to_string(),
            status,
            event: "resume",
        }),
    }
}

/// Starts undoing a finished deployment.
pub fn start_rollback(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
) -> Result<Decision<Deployment>, RolloutError> {
    let d = existing(current, id)?;
    match d.status {
        RolloutStatus::RollingBack | RolloutStatus::RolledBack => Ok(Decision::Unchanged),
        RolloutStatus::Running | RolloutStatus::Rejected => Err(RolloutError::Illegal {
            id: id.to_string(),
            status: d.status,
            event: "roll back",
        }),
        _ => {
            let mut next = d.clone();
            next.status = if next.migrated().is_empty() {
                RolloutStatus::RolledBack
            } else {
                RolloutStatus::RollingBack
            };
            next.rollbacks.clear();
            next.finished_at = None;
            Ok(write(next, "rollback", None))
        }
    }
}

/// Records one tenant's rollback; the last one ends the rollback.
pub fn record_rollback(
    current: Option<&Versioned<Deployment>>,
    id: &DeploymentId,
    tenant: &TenantId,
    outcome: &TenantOutcome,
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
        next.finished_at = Some(Timestamp::now());
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
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(waves: Vec<Vec<&str>>, ratio: f64) -> Versioned<Deployment> {
        Versioned {
            state: Deployment {
                id: DeploymentId::parse("d1").unwrap(),
                version: "1".into(),
                checksum: "x".into(),
                status: RolloutStatus::Running,
                dry_run: false,
                allow_destructive: false,
                max_failure_ratio: ratio,
                waves: waves
                    .into_iter()
                    .map(|w| w.into_iter().map(|t| TenantId::parse(t).unwrap()).collect())
                    .collect(),
                current_wave: 0,
                results: BTreeMap::new(),
                rollbacks: BTreeMap::new(),
                reason: None,
                requested_at: Timestamp::now(),
                finished_at: None,
                resumes: 0,
            },
            revision: 1,
        }
    }

    fn outcome(ok: bool) -> TenantOutcome {
        TenantOutcome {
            status: if ok {
                DeployStatus::Ready
            } else {
                DeployStatus::Failed
            },
            skipped: false,
            statements: 1,
            changes: [1, 0, 0],
            breaking: false,
            error: (!ok).then(|| "boom".into()),
            duration_ms: 1,
        }
    }

    fn apply(v: &mut Versioned<Deployment>, d: Decision<Deployment>) {
        if let Decision::Write { next, .. } = d {
            v.state = next;
            v.revision += 1;
        }
    }

    #[test]
    fn waves_advance_only_when_complete_and_finish() {
        let mut d = deployment(vec![vec!["a"], vec!["b", "c"]], 0.5);
        let id = d.state.id.clone();
        let decision = record(
            Some(&d),
            &id,
            &TenantId::parse("a").unwrap(),
            &outcome(true),
        )
        .unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.current_wave, 1);
        let decision = record(
            Some(&d),
            &id,
            &TenantId::parse("b").unwrap(),
            &outcome(true),
        )
        .unwrap();
        apply(&mut d, decision);
        assert_eq!(
            (d.state.current_wave, d.state.status),
            (1, RolloutStatus::Running)
        );
        assert_eq!(
            record(
                Some(&d),
                &id,
                &TenantId::parse("b").unwrap(),
                &outcome(false)
            )
            .unwrap(),
            Decision::Unchanged,
            "first result wins"
        );
        let decision = record(
            Some(&d),
            &id,
            &TenantId::parse("c").unwrap(),
            &outcome(true),
        )
        .unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Completed);
    }

    #[test]
    fn too_many_failures_halt_and_resume_retries_them() {
        let mut d = deployment(vec![vec!["a", "b"], vec!["c"]], 0.4);
        let id = d.state.id.clone();
        let decision = record(
            Some(&d),
            &id,
            &TenantId::parse("a").unwrap(),
            &outcome(false),
        )
        .unwrap();
        apply(&mut d, decision);
        let decision = record(
            Some(&d),
            &id,
            &TenantId::parse("b").unwrap(),
            &outcome(true),
        )
        .unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Halted);
        assert!(d.state.reason.as_deref().unwrap().contains("failure ratio"));
        let decision = resume(Some(&d), &id).unwrap();
        apply(&mut d, decision);
        assert_eq!(
            (d.state.status, d.state.results.len()),
            (RolloutStatus::Running, 1)
        );
        assert_eq!(d.state.next(), Next::Wait, "a is pending again");
        assert_eq!(d.state.resumes, 1, "its jobs get fresh message ids");
        assert_eq!(
            resume(Some(&d), &id).unwrap(),
            Decision::Unchanged,
            "resuming a running rollout changes nothing"
        );
        let decision = cancel(Some(&d), &id).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.status, RolloutStatus::Cancelled);
        assert_eq!(cancel(Some(&d), &id).unwrap(), Decision::Unchanged);
        let decision = resume(Some(&d), &id).unwrap();
        apply(&mut d, decision);
        assert_eq!(d.state.resumes, 2);
    }
}
