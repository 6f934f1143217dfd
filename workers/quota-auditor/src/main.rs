//! The quota-auditor binary: the [`fleet_quota_auditor::QuotaAuditor`] handler on the one
//! worker entry point (configuration, telemetry, NATS, probes, graceful shutdown).

fn main() -> std::process::ExitCode {
    fleet_runtime::worker::main::<fleet_quota_auditor::QuotaAuditor>()
}
