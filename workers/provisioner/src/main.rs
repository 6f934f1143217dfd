//! The provisioner binary: the [`fleet_provisioner::Provisioner`] handler on the one worker
//! entry point (configuration, telemetry, NATS, probes, graceful shutdown).

fn main() -> std::process::ExitCode {
    fleet_runtime::worker::main::<fleet_provisioner::Provisioner>()
}
