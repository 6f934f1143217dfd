//! `fleetctl`, the operator's CLI. Thin: parse the command line, run the command, turn its
//! outcome into an exit code ([`exit`]: 0 ok, 1 the operation failed, 2 usage or input error).

use std::process::ExitCode;

/// `println!` for a CLI: a closed pipe (`fleetctl … | head`) ends the process quietly instead of
/// panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

use clap::Parser;

/// A value's name on the wire (its serde form, e.g. `rolling_back` for an enum variant); empty
/// when it does not serialize to a string.
pub(crate) fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

mod app_cmd;
mod cli;
mod db_cmd;
mod deploy_cmd;
mod dlq_cmd;
mod exit;
mod hooks_cmd;
mod quota_cmd;
mod read;
mod schema_cmd;
mod secrets_cmd;
mod status_cmd;
mod streams_cmd;
mod tenant_cmd;
mod validate_cmd;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(code) => code,
        // A closed pipe (`fleetctl schema list | head`) is not a failure.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let (code, message) = exit::classify(&err);
            eprintln!("fleetctl: {message}");
            ExitCode::from(code)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
