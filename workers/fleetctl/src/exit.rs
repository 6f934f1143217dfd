//! Exit codes, and the errors behind them, in one place.
//!
//! - `0`: the command did what it was asked.
//! - `1` ([`FAILED`]): the operation failed — the fleet refused or failed the work, something
//!   named does not exist, a plan would lose data, NATS does not answer. The reason is printed,
//!   with what to do next where there is something to do.
//! - `2` ([`INPUT`]): a usage or input error — an argument, a file or a document the operator
//!   gave is wrong (clap's own usage errors exit 2 too). Fix the command and run it again.
//!
//! `fleetctl validate` is the one command whose result is a verdict on its input: an invalid
//! document exits 1 there (like a linter's findings), an unreadable file or one that is not JSON
//! exits 2.

use std::process::ExitCode;

/// Exit code of a failed operation.
pub const FAILED: u8 = 1;
/// Exit code of a usage or input error.
pub const INPUT: u8 = 2;

/// The exit code of a failed operation (after its reason was printed).
pub fn failed() -> ExitCode {
    ExitCode::from(FAILED)
}

/// The exit code of a usage or input error (after the problem was printed).
pub fn input() -> ExitCode {
    ExitCode::from(INPUT)
}

/// What to do when no NATS server answers.
const START_THE_FLEET: &str =
    "start the local fleet with `just up`, or point FLEET_NATS__URL at yours";

/// An error in what the operator gave (arguments, files, documents): exit [`INPUT`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// An [`InputError`] from a message.
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new(crate::exit::InputError(format!($($arg)*)))
    };
}
pub(crate) use usage;

/// Marks any error as an input error (keeping its causes in the message).
pub fn input_error(error: impl Into<anyhow::Error>) -> anyhow::Error {
    let error = error.into();
    anyhow::Error::new(InputError(format!("{error:#}")))
}

/// The exit code and the message for an error that ended a command: input errors (ours, bad
/// identifiers, unreadable or non-JSON files, an invalid configuration) exit 2; everything else
/// exits 1, an unreachable NATS server with how to start one.
pub fn classify(error: &anyhow::Error) -> (u8, String) {
    let message = format!("{error:#}");
    for cause in error.chain() {
        match cause.downcast_ref::<fleet_runtime::RuntimeError>() {
            Some(fleet_runtime::RuntimeError::Connect { url, .. }) if refused(&message) => {
                return (FAILED, format!("NATS at {url} {REFUSED} ({message})"));
            }
            Some(fleet_runtime::RuntimeError::Connect { url, .. }) => {
                return (
                    FAILED,
                    format!("no NATS server answers at {url} — {START_THE_FLEET} ({message})"),
                );
            }
            // A file [nats.auth] or [nats.tls] names: the configuration's to fix.
            Some(fleet_runtime::RuntimeError::NatsFile { .. }) => return (INPUT, message),
            _ => {}
        }
        if let Some(client) = cause.downcast_ref::<fleet_client::ClientError>() {
            return match client {
                fleet_client::ClientError::Invalid { .. } => (INPUT, message),
                fleet_client::ClientError::Unreachable(_) if refused(&message) => {
                    (FAILED, format!("{message} — NATS {REFUSED}"))
                }
                fleet_client::ClientError::Unreachable(_) => {
                    (FAILED, format!("{message} — {START_THE_FLEET}"))
                }
                _ => (FAILED, message),
            };
        }
        if let Some(fleet_protocol::contracts::ContractError::Invalid(_)) =
            cause.downcast_ref::<fleet_protocol::contracts::ContractError>()
        {
            return (INPUT, message);
        }
        if cause.is::<InputError>()
            || cause.is::<fleet_protocol::InvalidIdentifier>()
            || cause.is::<fleet_config::ConfigError>()
            || cause.is::<serde_json::Error>()
            || cause.is::<std::io::Error>()
        {
            return (INPUT, message);
        }
    }
    (FAILED, message)
}

/// What a server that answered but would not take the connection needs.
const REFUSED: &str = "refused the connection: check [nats.auth] and [nats.tls] (FLEET_NATS__AUTH__PASSWORD, the CA and client certificate files) against the server's authorization and tls settings";

/// Whether a connection failure is the server (or its TLS) refusing us, not its absence:
/// authentication, authorization or a TLS handshake that failed.
fn refused(message: &str) -> bool {
    let message = message.to_lowercase();
    [
        "authorization",
        "authentication",
        "tls",
        "certificate",
        "handshake",
    ]
    .iter()
    .any(|what| message.contains(what))
}
