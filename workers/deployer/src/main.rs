//! The deployer binary: the [`fleet_deployer::Deployer`] handler on the one worker entry point
//! (configuration, telemetry, NATS, probes, graceful shutdown).

/// The process's allocator, for Rust and for the C code alike ([`fleet_allocator`]);
/// [`fleet_allocator::init`] sets the process up for it first thing.
#[global_allocator]
static ALLOCATOR: fleet_allocator::Allocator = fleet_allocator::Allocator;

fn main() -> std::process::ExitCode {
    fleet_allocator::init();
    fleet_runtime::worker::main::<fleet_deployer::Deployer>()
}
