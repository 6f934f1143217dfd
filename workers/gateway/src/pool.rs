//! Idle connections to active tenants' databases, kept for the next request of the same tenant:
//! opening a libSQL connection reads the database's schema again, which costs more than a
//! request's own statements. At most [`IDLE_PER_TENANT`] idle connections per tenant, for at
//! most `capacity` tenants (least recently used first out); a tenant's are dropped the moment
//! its record changes (a suspension, a token rotation) or its database refuses a token.
//!
//! Requests use no explicit transaction, so a connection goes back as it came: in autocommit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_protocol::TenantId;
use libsql::Connection;
use moka::sync::Cache;

/// Idle connections kept per tenant.
pub const IDLE_PER_TENANT: usize = 8;

type Idle = Arc<Mutex<Vec<Connection>>>;

/// The idle connections, by tenant.
#[derive(Debug, Clone)]
pub struct Pool {
    idle: Cache<TenantId, Idle>,
}

impl Pool {
    /// A pool for at most `capacity` tenants, each idle for at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            idle: Cache::builder()
                .max_capacity(capacity.max(1))
                .time_to_idle(ttl)
                .build(),
        }
    }

    /// An idle connection of `tenant`, if one is kept.
    pub fn take(&self, tenant: &TenantId) -> Option<Pooled> {
        let home = self.idle.get(tenant)?;
        let conn = home.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        Some(Pooled {
            conn: Some(conn),
            home: Some(home),
        })
    }

    /// `conn`, a new connection of `tenant`, to be kept when its request is done.
    pub fn adopt(&self, tenant: &TenantId, conn: Connection) -> Pooled {
        let home = self
            .idle
            .get_with(tenant.clone(), || Arc::new(Mutex::new(Vec::new())));
        Pooled {
            conn: Some(conn),
            home: Some(home),
        }
    }

    /// Drops the tenant's idle connections (those in use are not returned).
    pub fn forget(&self, tenant: &TenantId) {
        if let Some(home) = self.idle.remove(tenant) {
            home.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// A connection in use; back to its tenant's idle list when dropped (unless detached or its
/// tenant was forgotten meanwhile).
#[derive(Debug)]
pub struct Pooled {
    conn: Option<Connection>,
    home: Option<Idle>,
}

impl Pooled {
    /// A connection used once and closed (a suspended tenant's read-only one).
    pub fn detached(conn: Connection) -> Self {
        Self {
            conn: Some(conn),
            home: None,
        }
    }
}

impl std::ops::Deref for Pooled {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("a connection until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        // Forgotten meanwhile: its list is no longer the pool's (only this guard holds it).
        if Arc::strong_count(&home) == 1 {
            return;
        }
        let mut idle = home.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_PER_TENANT {
            idle.push(conn);
        }
    }
}
