//! An app in a tenant: its install record (KV `fleet_installs`, key `<tenant>.<app>`, history on
//! `progress.app.<tenant>.<app>`) and the pure transitions between its states (DESIGN §5):
//!
//! ```text
//!            install                 done
//!   (none) ───────────► installing ─────────► active ◄──┐
//!                          │  ▲                 │ │      │ done / refused (still the old
//!                   failed │  │ install again   │ │      │ version, with the error)
//!                          ▼  │                 │ └──────┴── upgrade: installing (upgrade)
//!                        failed ◄───────────────┘ uninstall: uninstalling ──done──► (removed)
//! ```
//!
//! `disabled` is an app an operator turned off (kept installed, not upgraded). A command for a
//! state it does not fit is refused ([`TransitionError`]); one that repeats the current
//! transition (a redelivery, a crashed worker) continues it.

use fleet_protocol::{AppCompatibilityCheck, AppInstallResult, Timestamp};
use fleet_state::{Decision, ProgressEvent};
use serde::{Deserialize, Serialize};

/// Where an app is in a tenant (DESIGN §5's install states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallStatus {
    /// An install or upgrade is under way.
    Installing,
    /// Installed and in use.
    Active,
    /// Installed, turned off by an operator.
    Disabled,
    /// An uninstall is under way.
    Uninstalling,
    /// The install failed; nothing of it is in the tenant's database.
    Failed,
}

/// What is being done to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `app.install_requested`.
    Install,
    /// `app.upgrade_requested`.
    Upgrade,
    /// `app.uninstall_requested`.
    Uninstall,
}

/// An app's record in one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallRecord {
    /// The tenant.
    pub tenant_id: String,
    /// The app.
    pub app_id: String,
    /// Where it is.
    pub status: InstallStatus,
    /// The last operation asked for.
    pub operation: Operation,
    /// The version the operation is for.
    pub version: String,
    /// The version in the tenant's database (`None`: not installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_version: Option<String>,
    /// The app's objects, as installed.
    #[serde(default)]
    pub objects: Vec<String>,
    /// Why the last operation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The compatibility check that refused the last operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<AppCompatibilityCheck>,
    /// The last install or upgrade's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<AppInstallResult>,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

impl InstallRecord {
    /// The KV key of `app` in `tenant`.
    pub fn key(tenant: &str, app: &str) -> String {
        format!("{tenant}.{app}")
    }
}

/// A command that does not fit the app's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// Upgrade or uninstall of an app the tenant does not have.
    #[error("{app} is not installed in {tenant}")]
    NotInstalled {
        /// The tenant.
        tenant: String,
        /// The app.
        app: String,
    },
    /// Install of an app that is installed at another version.
    #[error("{app} {installed} is installed in {tenant}: upgrade it instead")]
    OtherVersion {
        /// The tenant.
        tenant: String,
        /// The app.
        app: String,
        /// The installed version.
        installed: String,
    },
    /// Another operation is under way.
    #[error("{app} in {tenant} is busy: {operation:?} of {version} is under way")]
    Busy {
        /// The tenant.
        tenant: String,
        /// The app.
        app: String,
        /// What is under way.
        operation: Operation,
        /// Its version.
        version: String,
    },
    /// A disabled app is neither upgraded nor installed over.
    #[error("{app} is disabled in {tenant}")]
    Disabled {
        /// The tenant.
        tenant: String,
        /// The app.
        app: String,
    },
}

fn event(record: &InstallRecord, step: &str, error: Option<String>) -> ProgressEvent {
    ProgressEvent {
        kind: "app".into(),
        id: InstallRecord::key(&record.tenant_id, &record.app_id),
        step: step.into(),
        status: serde_json::to_value(record.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        duration_ms: record.result.as_ref().and_then(|r| r.duration_ms),
        error,
        at: record.updated_at.clone(),
        revision: 0,
    }
}

fn write(next: InstallRecord, step: &str) -> Decision<InstallRecord> {
    let error = next.error.clone();
    Decision::Write {
        event: event(&next, step, error),
        next,
    }
}

/// Starts `operation` for `version` of `app` in `tenant` (or continues it when it is the one
/// under way).
pub fn begin(
    current: Option<&InstallRecord>,
    tenant: &str,
    app: &str,
    operation: Operation,
    version: &str,
    at: &Timestamp,
) -> Result<Decision<InstallRecord>, TransitionError> {
    use InstallStatus as S;
    let not_installed = || TransitionError::NotInstalled {
        tenant: tenant.into(),
        app: app.into(),
    };
    let started = |base: Option<&InstallRecord>, status: InstallStatus| {
        let mut next = base.cloned().unwrap_or(InstallRecord {
            tenant_id: tenant.into(),
            app_id: app.into(),
            status,
            operation,
            version: version.into(),
            installed_version: None,
            objects: Vec::new(),
            error: None,
            check: None,
            result: None,
            updated_at: at.clone(),
        });
        next.status = status;
        next.operation = operation;
        next.version = version.into();
        next.error = None;
        next.check = None;
        next.updated_at = at.clone();
        write(
            next,
            match operation {
                Operation::Install => "install",
                Operation::Upgrade => "upgrade",
                Operation::Uninstall => "uninstall",
            },
        )
    };
    let Some(cur) = current else {
        return match operation {
            Operation::Install => Ok(started(None, S::Installing)),
            _ => Err(not_installed()),
        };
    };
    let same = cur.operation == operation && cur.version == version;
    match (cur.status, operation) {
        // A redelivery, or a worker that died midway: carry on.
        (S::Installing, Operation::Install | Operation::Upgrade) if same => Ok(Decision::Unchanged),
        (S::Uninstalling, Operation::Uninstall) => Ok(Decision::Unchanged),
        (S::Installing | S::Uninstalling, _) => Err(TransitionError::Busy {
            tenant: tenant.into(),
            app: app.into(),
            operation: cur.operation,
            version: cur.version.clone(),
        }),
        (S::Disabled, Operation::Install | Operation::Upgrade) => Err(TransitionError::Disabled {
            tenant: tenant.into(),
            app: app.into(),
        }),
        // Installing again what is installed: run again (a no-op install; seeds insert nothing twice).
        (S::Active, Operation::Install) if cur.installed_version.as_deref() == Some(version) => {
            Ok(started(Some(cur), S::Installing))
        }
        (S::Active, Operation::Install) => Err(TransitionError::OtherVersion {
            tenant: tenant.into(),
            app: app.into(),
            installed: cur.installed_version.clone().unwrap_or_default(),
        }),
        (S::Failed, Operation::Install) => Ok(started(Some(cur), S::Installing)),
        (S::Failed, Operation::Upgrade) if cur.installed_version.is_none() => Err(not_installed()),
        (S::Active | S::Failed, Operation::Upgrade) => Ok(started(Some(cur), S::Installing)),
        (S::Failed, Operation::Uninstall) if cur.installed_version.is_none() => {
            Ok(started(Some(cur), S::Uninstalling))
        }
        (S::Active | S::Disabled | S::Failed, Operation::Uninstall) => {
            Ok(started(Some(cur), S::Uninstalling))
        }
    }
}

/// The install or upgrade under way succeeded.
pub fn installed(
    current: Option<&InstallRecord>,
    result: &AppInstallResult,
    objects: Vec<String>,
    at: &Timestamp,
) -> Decision<InstallRecord> {
    let Some(cur) = current.filter(|c| c.status == InstallStatus::Installing) else {
        return Decision::Unchanged;
    };
    let mut next = cur.clone();
    next.status = InstallStatus::Active;
    next.installed_version = Some(cur.version.clone());
    next.objects = objects;
    next.result = Some(result.clone());
    next.error = None;
    next.updated_at = at.clone();
    write(next, "active")
}

/// The operation under way failed (`check`: the compatibility check that refused it). A failed
/// install leaves the app `failed`; a failed upgrade or uninstall leaves it `active` at the
/// version it had, with the error.
pub fn failed(
    current: Option<&InstallRecord>,
    error: &str,
    check: Option<AppCompatibilityCheck>,
    at: &Timestamp,
) -> Decision<InstallRecord> {
    let Some(cur) = current.filter(|c| {
        matches!(
            c.status,
            InstallStatus::Installing | InstallStatus::Uninstalling
        )
    }) else {
        return Decision::Unchanged;
    };
    let mut next = cur.clone();
    next.status = match cur.installed_version {
        Some(_) => InstallStatus::Active,
        None => InstallStatus::Failed,
    };
    next.error = Some(error.to_owned());
    next.check = check;
    next.updated_at = at.clone();
    write(next, "failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Timestamp {
        Timestamp::now()
    }

    fn next(d: Decision<InstallRecord>) -> InstallRecord {
        match d {
            Decision::Write { next, .. } => next,
            Decision::Unchanged => panic!("unchanged"),
        }
    }

    fn result() -> AppInstallResult {
        AppInstallResult {
            success: true,
            app_id: "contacts".into(),
            version: "1.0.0".into(),
            installed_objects: vec!["contact".into()],
            created_tables: vec!["contacts_contact".into()],
            seeded_records: 2,
            duration_ms: Some(3),
            error: None,
        }
    }

    #[test]
    fn install_then_upgrade_then_uninstall() {
        let installing =
            next(begin(None, "t", "contacts", Operation::Install, "1.0.0", &at()).unwrap());
        assert_eq!(installing.status, InstallStatus::Installing);
        // A redelivery carries on.
        assert_eq!(
            begin(
                Some(&installing),
                "t",
                "contacts",
                Operation::Install,
                "1.0.0",
                &at()
            )
            .unwrap(),
            Decision::Unchanged
        );
        let active = next(installed(
            Some(&installing),
            &result(),
            vec!["contact".into()],
            &at(),
        ));
        assert_eq!(
            (active.status, active.installed_version.as_deref()),
            (InstallStatus::Active, Some("1.0.0"))
        );
        assert!(matches!(
            begin(
                Some(&active),
                "t",
                "contacts",
                Operation::Install,
                "2.0.0",
                &at()
            ),
            Err(TransitionError::OtherVersion { .. })
        ));
        let upgrading = next(
            begin(
                Some(&active),
                "t",
                "contacts",
                Operation::Upgrade,
                "2.0.0",
                &at(),
            )
            .unwrap(),
        );
        // A refused upgrade keeps the old version active, with the error.
        let refused = next(failed(Some(&upgrading), "destructive", None, &at()));
        assert_eq!(
            (refused.status, refused.installed_version.as_deref()),
            (InstallStatus::Active, Some("1.0.0"))
        );
        let uninstalling = next(
            begin(
                Some(&refused),
                "t",
                "contacts",
                Operation::Uninstall,
                "1.0.0",
                &at(),
            )
            .unwrap(),
        );
        assert_eq!(uninstalling.status, InstallStatus::Uninstalling);
        assert!(matches!(
            begin(
                Some(&uninstalling),
                "t",
                "contacts",
                Operation::Upgrade,
                "2.0.0",
                &at()
            ),
            Err(TransitionError::Busy { .. })
        ));
    }

    #[test]
    fn a_failed_install_is_failed_and_can_be_retried_but_not_upgraded() {
        let installing =
            next(begin(None, "t", "helpdesk", Operation::Install, "1.0.0", &at()).unwrap());
        let failed = next(failed(Some(&installing), "dependency missing", None, &at()));
        assert_eq!(failed.status, InstallStatus::Failed);
        assert!(matches!(
            begin(
                Some(&failed),
                "t",
                "helpdesk",
                Operation::Upgrade,
                "1.1.0",
                &at()
            ),
            Err(TransitionError::NotInstalled { .. })
        ));
        assert_eq!(
            next(
                begin(
                    Some(&failed),
                    "t",
                    "helpdesk",
                    Operation::Install,
                    "1.0.0",
                    &at()
                )
                .unwrap()
            )
            .status,
            InstallStatus::Installing
        );
        assert!(matches!(
            begin(None, "t", "helpdesk", Operation::Uninstall, "1.0.0", &at()),
            Err(TransitionError::NotInstalled { .. })
        ));
    }
}
