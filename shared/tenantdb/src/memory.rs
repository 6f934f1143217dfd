//! In-memory tenant databases for tests and experiments: each database is a shared-cache
//! in-memory libSQL database that lives until it is deleted (or the backend is dropped).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use fleet_protocol::turso::{TursoDatabaseInfo, TursoTokenScope};
use fleet_protocol::{DatabaseName, TenantId};
use libsql::Connection;
use rand::RngCore;
use secrecy::SecretString;
use tokio::sync::Mutex;

use crate::backend::{IssuedToken, TenantDatabase, TenantDatabases, TenantDbError, TenantDbResult};
use crate::embedded::DatabaseRecord;

/// Group name the memory backend reports.
pub const MEMORY_GROUP: &str = "memory";

struct Entry {
    record: DatabaseRecord,
    uri: String,
    /// Keeps the shared in-memory database alive while no one else has it open.
    _keeper: Connection,
}

/// In-memory databases.
pub struct MemoryBackend {
    instance: String,
    prefix: String,
    databases: Mutex<BTreeMap<DatabaseName, Entry>>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new("")
    }
}

impl MemoryBackend {
    /// An empty backend naming databases `{prefix}{tenant}`.
    pub fn new(prefix: impl Into<String>) -> Self {
        let mut id = [0u8; 8];
        rand::rng().fill_bytes(&mut id);
        Self {
            instance: hex::encode(id),
            prefix: prefix.into(),
            databases: Mutex::new(BTreeMap::new()),
        }
    }

    fn info(&self, database: &DatabaseName, record: &DatabaseRecord) -> TursoDatabaseInfo {
        record.info(database, format!("memory/{database}"), "libsql-memory")
    }
}

#[async_trait]
impl TenantDatabases for MemoryBackend {
    fn database_name(&self, tenant: &TenantId) -> DatabaseName {
        DatabaseName::for_tenant(&self.prefix, tenant)
            .expect("a tenant id with a valid prefix is a valid database name")
    }

    fn connection_url(&self, database: &DatabaseName) -> String {
        format!("memory:{database}")
    }

    async fn create_database(
        &self,
        tenant: &TenantId,
        group: Option<&str>,
    ) -> TenantDbResult<TursoDatabaseInfo> {
        let group = group.unwrap_or(MEMORY_GROUP);
        let database = self.database_name(tenant);
        let mut databases = self.databases.lock().await;
        if let Some(entry) = databases.get(&database) {
            entry.record.check_owner(&database, tenant, group)?;
            return Ok(self.info(&database, &entry.record));
        }
        let uri = format!(
            "file:fleet-{}-{database}?mode=memory&cache=shared",
            self.instance
        );
        let db = libsql::Builder::new_local(&uri)
            .build()
            .await
            .map_err(TenantDbError::db(format!("creating {database}")))?;
        let keeper = db
            .connect()
            .map_err(TenantDbError::db(format!("creating {database}")))?;
        let record = DatabaseRecord::new(tenant, group);
        let info = self.info(&database, &record);
        databases.insert(
            database,
            Entry {
                record,
                uri,
                _keeper: keeper,
            },
        );
        Ok(info)
    }

    async fn get_database(
        &self,
        database: &DatabaseName,
    ) -> TenantDbResult<Option<TursoDatabaseInfo>> {
        Ok(self
            .databases
            .lock()
            .await
            .get(database)
            .map(|e| self.info(database, &e.record)))
    }

    async fn list_databases(&self, group: Option<&str>) -> TenantDbResult<Vec<TursoDatabaseInfo>> {
        let databases = self.databases.lock().await;
        Ok(databases
            .iter()
            .filter(|(_, e)| group.is_none_or(|g| g == e.record.group))
            .map(|(name, e)| self.info(name, &e.record))
            .collect())
    }

    async fn delete_database(&self, database: &DatabaseName) -> TenantDbResult<bool> {
        Ok(self.databases.lock().await.remove(database).is_some())
    }

    async fn issue_token(
        &self,
        database: &DatabaseName,
        scope: TursoTokenScope,
        expires_in: Option<Duration>,
    ) -> TenantDbResult<IssuedToken> {
        let mut databases = self.databases.lock().await;
        let entry = databases
            .get_mut(database)
            .ok_or_else(|| TenantDbError::NotFound(database.to_string()))?;
        Ok(entry.record.issue(scope, expires_in))
    }

    async fn rotate_tokens(&self, database: &DatabaseName) -> TenantDbResult<()> {
        let mut databases = self.databases.lock().await;
        let entry = databases
            .get_mut(database)
            .ok_or_else(|| TenantDbError::NotFound(database.to_string()))?;
        entry.record.tokens.clear();
        Ok(())
    }

    async fn storage_bytes(&self, database: &DatabaseName) -> TenantDbResult<u64> {
        let databases = self.databases.lock().await;
        let entry = databases
            .get(database)
            .ok_or_else(|| TenantDbError::NotFound(database.to_string()))?;
        let mut rows = entry
            ._keeper
            .query(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                (),
            )
            .await
            .map_err(TenantDbError::db("measuring storage"))?;
        let row = rows
            .next()
            .await
            .map_err(TenantDbError::db("measuring storage"))?;
        Ok(row.and_then(|r| r.get::<i64>(0).ok()).unwrap_or(0).max(0) as u64)
    }

    async fn open(
        &self,
        database: &DatabaseName,
        token: &SecretString,
    ) -> TenantDbResult<TenantDatabase> {
        let databases = self.databases.lock().await;
        let entry = databases
            .get(database)
            .ok_or_else(|| TenantDbError::NotFound(database.to_string()))?;
        let scope = entry.record.authorize(database, token)?;
        let db = libsql::Builder::new_local(&entry.uri)
            .build()
            .await
            .map_err(TenantDbError::db(format!("opening {database}")))?;
        Ok(TenantDatabase::new(
            entry.record.tenant.clone(),
            database.clone(),
            db,
            scope == TursoTokenScope::ReadOnly,
            true,
        ))
    }
}
