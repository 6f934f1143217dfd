//! The reliability suite (`just chaos`): the real worker binaries against a real nats-server
//! under the faults production brings — worker crashes, a broker crash, competing replicas,
//! Turso API faults, hostile input, storage faults — with the fleet's invariants checked
//! afterwards from its databases, KV and streams ([`invariants`]).
//!
//! - [`harness`]: a fleet whose replicas can be killed and restarted, and a retrying client.
//! - [`workload`]: what every scenario asks of the fleet, and the waits for it.
//! - [`hostile`]: generated bad messages for every subject.
//! - [`scenarios`]: each fault, its recovery, its checks.
//!
//! Sizes come from [`Scale`]: `just chaos` runs [`Scale::full`] (or `--scale N`); `just test`
//! runs [`Scale::reduced`] through `tests/reduced.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod harness;
pub mod hostile;
pub mod invariants;
pub mod scenarios;
pub mod workload;

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Tenants registered per scenario.
    pub tenants: usize,
    /// Bad messages sent in the hostile-input scenario.
    pub bad_messages: usize,
    /// How often a worker is SIGKILLed in the worker-crash scenario.
    pub kill_every: Duration,
}

impl Scale {
    /// The full run: 1 000 tenants, 3 000 bad messages.
    pub fn full() -> Self {
        Self::tenants(1000)
    }

    /// What `just test` runs: 24 tenants, 200 bad messages, a SIGKILL every 150 ms (the
    /// workload is short).
    pub fn reduced() -> Self {
        Self {
            bad_messages: 200,
            kill_every: Duration::from_millis(150),
            ..Self::tenants(24)
        }
    }

    /// `n` tenants, three bad messages per tenant.
    pub fn tenants(n: usize) -> Self {
        Self {
            tenants: n.max(4),
            bad_messages: 3 * n.max(4),
            kill_every: Duration::from_millis(400),
        }
    }
}

/// One scenario's outcome.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// Its name.
    pub name: &'static str,
    /// Every invariant's verdict (empty when the scenario could not finish).
    pub checks: Vec<invariants::Check>,
    /// How long it took.
    pub elapsed: Duration,
    /// What the fault did (kills, restarts, messages sent, replays).
    pub notes: Vec<String>,
    /// Why it could not finish (a stuck workload, a missing binary, a skipped scenario).
    pub error: Option<String>,
}

impl ScenarioReport {
    /// Whether every invariant holds.
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// Whether it was not run at all (its error starts with `not run`).
    pub fn skipped(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(|e| e.starts_with("not run"))
    }
}

/// The table: scenario × invariant, then time and notes; then every failure in full.
pub fn render(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    out.push_str("| scenario |");
    for name in invariants::NAMES {
        out.push_str(&format!(" {name} |"));
    }
    out.push_str(" time | what happened |\n|---|");
    for _ in invariants::NAMES {
        out.push_str("---|");
    }
    out.push_str("---|---|\n");
    for report in reports {
        out.push_str(&format!("| {} |", report.name));
        for name in invariants::NAMES {
            let cell = match report.checks.iter().find(|c| c.name == name) {
                Some(c) if c.ok => format!("ok ({})", c.count),
                Some(_) => "**FAIL**".to_owned(),
                None if report.skipped() => "–".to_owned(),
                None => "**not reached**".to_owned(),
            };
            out.push_str(&format!(" {cell} |"));
        }
        let mut what = report.notes.join("; ");
        if let Some(error) = &report.error {
            if !what.is_empty() {
                what.push_str("; ");
            }
            what.push_str(error);
        }
        out.push_str(&format!(
            " {:.0} s | {} |\n",
            report.elapsed.as_secs_f64(),
            what.replace('|', "/")
        ));
    }
    for report in reports {
        for check in report.checks.iter().filter(|c| !c.ok) {
            out.push_str(&format!("\n{} — {} failed:\n", report.name, check.name));
            for line in check.detail.iter().take(40) {
                out.push_str(&format!("  {line}\n"));
            }
            if check.detail.len() > 40 {
                out.push_str(&format!("  … {} more\n", check.detail.len() - 40));
            }
        }
    }
    out
}

/// The repository root (examples, config).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `names` one after the other at `scale` with the binaries in `bins`.
pub async fn run(names: &[&'static str], scale: &Scale, bins: &Path) -> Vec<ScenarioReport> {
    let root = repository_root();
    let mut reports = Vec::new();
    for name in names {
        eprintln!("chaos: {name} ({} tenants)…", scale.tenants);
        let report = scenarios::run(name, scale, bins, &root).await;
        eprintln!(
            "chaos: {name} {} in {:.0} s",
            if report.passed() {
                "passed"
            } else if report.skipped() {
                "skipped"
            } else {
                "FAILED"
            },
            report.elapsed.as_secs_f64()
        );
        reports.push(report);
    }
    reports
}
