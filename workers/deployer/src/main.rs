//! The deployer binary: the [`fleet_deployer::Deployer`] handler on the one worker entry point
//! (configuration, telemetry, NATS, probes, graceful shutdown).

fn main() -> std::process::ExitCode {
    fleet_runtime::worker::main::<fleet_deployer::Deployer>()
}
