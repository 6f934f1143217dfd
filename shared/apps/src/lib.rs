//! Marketplace apps in tenant databases (upstream `IAppLifecycleService`, part E):
//!
//! - [`package`]: an app package read from one JSON file or a directory;
//! - [`machine`]: the install record in the `fleet_installs` KV bucket and its pure state
//!   machine (`installing → active`, `disabled`, `uninstalling`, `failed`);
//! - [`tenant`]: the compatibility check, install, upgrade and uninstall inside one tenant's
//!   database — the schema engine's plan for the app as owner, its seed data and its
//!   registration in one transaction.
//!
//! Ownership is the schema engine's rule ([`fleet_schema::registry`]): every object an app brings
//! is registered with the app as its owner (`source` `app:<name>`), so a platform deploy never
//! touches it and an install never touches the platform's or another app's objects.

#![deny(missing_docs)]

pub mod machine;
pub mod package;
pub mod tenant;

pub use machine::{InstallRecord, InstallStatus, Operation};
pub use tenant::{AppError, InstallOptions, Installed};

/// The ObjectStack kernel version the fleet implements (`@objectstack/spec`): an app's
/// `minKernelVersion` is compared with it.
pub const KERNEL_VERSION: &str = "4.0.1";
