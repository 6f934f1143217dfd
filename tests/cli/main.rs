//! End-to-end tests of the `fleetctl` binary: exit codes, output, files written.

mod config;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// The real `fleetctl` binary (built by `cargo test --workspace`, as `just test` runs it), run
/// from the workspace root with the shipped config.
pub fn fleetctl() -> Command {
    let mut cmd = Command::cargo_bin("fleetctl").expect("fleetctl is built");
    cmd.current_dir(workspace_root())
        .env_remove("FLEET_ENV")
        .env_remove("FLEET_CONFIG_DIR");
    cmd
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
