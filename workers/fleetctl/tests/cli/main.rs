//! End-to-end tests of the `fleetctl` binary: exit codes, output, files written.

mod app;
mod config;
mod db;
mod deploy;
mod dlq;
mod field_cases;
mod ops;
mod schema;
mod secrets;
mod streams;
mod typescript;
mod validate;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The real `fleetctl` binary (cargo builds it for this integration test), run from the
/// workspace root with the shipped config.
pub fn fleetctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.current_dir(workspace_root())
        .env_remove("FLEET_ENV")
        .env_remove("FLEET_CONFIG_DIR");
    cmd
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
