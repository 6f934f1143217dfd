//! fleet-tenantdb against real libSQL files, in-memory databases and a local HTTP double of the
//! Turso Platform API.

mod backends;
mod crash_consistency;
mod router;
mod secrets_at_rest;
mod turso_api;
