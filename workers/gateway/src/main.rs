//! The gateway binary: [`fleet_gateway::main`] (configuration, telemetry, NATS, the tenant
//! router, the data API, probes and metrics, graceful shutdown).

fn main() -> std::process::ExitCode {
    fleet_gateway::main()
}
