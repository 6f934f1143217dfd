//! The tenant control plane's data, shared by the workers and `fleetctl`: the tenant record kept
//! in the `fleet_tenants` KV bucket and its pure state machine ([`machine`]). No messaging: the
//! KV store and the router's directory over it are in `fleet-control`.

#![deny(missing_docs)]

pub mod audit;
pub mod machine;
pub mod quota;

pub use machine::{TenantRecord, TransitionError, status_name};
