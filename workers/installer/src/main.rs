//! The installer binary: the [`fleet_installer::Installer`] handler on the one worker entry
//! point (configuration, telemetry, NATS, probes, graceful shutdown).

fn main() -> std::process::ExitCode {
    fleet_runtime::worker::main::<fleet_installer::Installer>()
}
