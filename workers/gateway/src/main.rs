//! The gateway binary: [`fleet_gateway::main`] (configuration, telemetry, NATS, the tenant
//! router, the data API, probes and metrics, graceful shutdown).

/// The process's allocator, for Rust and for the C code alike ([`fleet_allocator`]);
/// [`fleet_allocator::init`] sets the process up for it first thing.
#[global_allocator]
static ALLOCATOR: fleet_allocator::Allocator = fleet_allocator::Allocator;

fn main() -> std::process::ExitCode {
    fleet_allocator::init();
    fleet_gateway::main()
}
