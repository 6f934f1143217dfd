//! The gateway binary: [`fleet_gateway::main`] (configuration, telemetry, NATS, the tenant
//! router, the data API, probes and metrics, graceful shutdown).

/// The process's allocator, for Rust and for the C code alike ([`fleet_runtime::allocator`]).
#[global_allocator]
static ALLOCATOR: fleet_runtime::allocator::Allocator = fleet_runtime::allocator::Allocator;

fn main() -> std::process::ExitCode {
    fleet_gateway::main()
}
