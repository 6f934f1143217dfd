//! The embedded default: one libSQL file per tenant under the data dir.
//!
//! `<data_dir>/<database>.db` is the database (WAL mode; connections use `synchronous=FULL`, so a
//! committed transaction survives power loss, and a busy timeout, so writers queue instead of
//! failing). `<database>.meta.json` records its tenant, group, id and issued tokens (hashes
//! only); it is created with `create_new`, which makes two concurrent creates of one database
//! end with one record, and rewritten atomically (temp file + rename) under a process lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use fleet_protocol::turso::{TursoDatabaseInfo, TursoTokenScope};
use fleet_protocol::{DatabaseName, TenantId};
use libsql::OpenFlags;
use secrecy::SecretString;
use tokio::sync::Mutex;

use crate::backend::{IssuedToken, TenantDatabase, TenantDatabases, TenantDbError, TenantDbResult};
use crate::embedded::DatabaseRecord;

/// Group name the local backend reports.
pub const LOCAL_GROUP: &str = "local";

/// One libSQL file per tenant.
#[derive(Debug)]
pub struct LocalBackend {
    data_dir: PathBuf,
    prefix: String,
    records: Mutex<()>,
}

impl LocalBackend {
    /// A backend storing databases under `data_dir`, naming them `{prefix}{tenant}`.
    pub fn new(data_dir: impl Into<PathBuf>, prefix: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            prefix: prefix.into(),
            records: Mutex::new(()),
        }
    }

    /// The folder holding the databases.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn db_path(&self, database: &DatabaseName) -> PathBuf {
        self.data_dir.join(format!("{database}.db"))
    }

    fn record_path(&self, database: &DatabaseName) -> PathBuf {
        self.data_dir.join(format!("{database}.meta.json"))
    }

    async fn read_record(&self, database: &DatabaseName) -> TenantDbResult<Option<DatabaseRecord>> {
        match tokio::fs::read(self.record_path(database)).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| TenantDbError::Io {
                    what: format!("reading the record of {database}"),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TenantDbError::io(format!(
                "reading the record of {database}"
            ))(e)),
        }
    }

    async fn write_record(
        &self,
        database: &DatabaseName,
        record: &DatabaseRecord,
    ) -> TenantDbResult<()> {
        let path = self.record_path(database);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
        tokio::fs::write(&tmp, bytes)
            .await
            .map_err(TenantDbError::io(format!("writing {}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(TenantDbError::io(format!("replacing {}", path.display())))
    }

    async fn update_record<T>(
        &self,
        database: &DatabaseName,
        change: impl FnOnce(&mut DatabaseRecord) -> T,
    ) -> TenantDbResult<T> {
        let _guard = self.records.lock().await;
        let mut record = self
            .read_record(database)
            .await?
            .ok_or_else(|| TenantDbError::NotFound(database.to_string()))?;
        let out = change(&mut record);
        self.write_record(database, &record).await?;
        Ok(out)
    }

    fn info(&self, database: &DatabaseName, record: &DatabaseRecord) -> TursoDatabaseInfo {
        record.info(
            database,
            self.db_path(database).display().to_string(),
            "libsql-local",
        )
    }
}

#[async_trait]
impl TenantDatabases for LocalBackend {
    fn database_name(&self, tenant: &TenantId) -> DatabaseName {
        DatabaseName::for_tenant(&self.prefix, tenant)
            .expect("a tenant id with a valid prefix is a valid database name")
    }

    fn connection_url(&self, database: &DatabaseName) -> String {
        format!("file:{}", self.db_path(database).display())
    }

    async fn create_database(
        &self,
        tenant: &TenantId,
        group: Option<&str>,
    ) -> TenantDbResult<TursoDatabaseInfo> {
        let group = group.unwrap_or(LOCAL_GROUP);
        let database = self.database_name(tenant);
        tokio::fs::create_dir_all(&self.data_dir)
            .await
            .map_err(TenantDbError::io(format!(
                "creating {}",
                self.data_dir.display()
            )))?;
        let record = DatabaseRecord::new(tenant, group);
        let path = self.record_path(&database);
        let bytes = serde_json::to_vec_pretty(&record).expect("a record serializes");
        let created = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await;
        let record = match created {
            Ok(file) => {
                use tokio::io::AsyncWriteExt;
                let mut file = file;
                file.write_all(&bytes)
                    .await
                    .map_err(TenantDbError::io(format!("writing {}", path.display())))?;
                file.sync_all()
                    .await
                    .map_err(TenantDbError::io(format!("syncing {}", path.display())))?;
                record
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Another create won (or an earlier attempt crashed after this point): reuse it
                // when it is this tenant's. A reader may race the writer's first bytes: retry.
                let mut existing = None;
                for _ in 0..50 {
                    if let Ok(Some(record)) = self.read_record(&database).await {
                        existing = Some(record);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let existing = existing.ok_or_else(|| {
                    TenantDbError::Unavailable(format!("record of {database} unreadable"))
                })?;
                existing.check_owner(&database, tenant, group)?;
                existing
            }
            Err(e) => return Err(TenantDbError::io(format!("creating {}", path.display()))(e)),
        };
        // Creating the file and switching it to WAL is idempotent: safe to repeat after a crash.
        let db = libsql::Builder::new_local(self.db_path(&database))
            .build()
            .await
            .map_err(TenantDbError::db(format!("creating {database}")))?;
        let conn = db
            .connect()
            .map_err(TenantDbError::db(format!("creating {database}")))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(TenantDbError::db("busy_timeout"))?;
        let mut rows = conn
            .query("PRAGMA journal_mode = WAL", ())
            .await
            .map_err(TenantDbError::db("enabling WAL"))?;
        while rows
            .next()
            .await
            .map_err(TenantDbError::db("enabling WAL"))?
            .is_some()
        {}
        Ok(self.info(&database, &record))
    }

    async fn get_database(
        &self,
        database: &DatabaseName,
    ) -> TenantDbResult<Option<TursoDatabaseInfo>> {
        Ok(self
            .read_record(database)
            .await?
            .map(|r| self.info(database, &r)))
    }

    async fn list_databases(&self, group: Option<&str>) -> TenantDbResult<Vec<TursoDatabaseInfo>> {
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.data_dir).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(TenantDbError::io(format!(
                    "listing {}",
                    self.data_dir.display()
                ))(e));
            }
        };
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(TenantDbError::io("listing databases"))?
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file
                .strip_suffix(".meta.json")
                .and_then(|n| DatabaseName::parse(n).ok())
            else {
                continue;
            };
            if let Some(record) = self.read_record(&name).await?
                && group.is_none_or(|g| g == record.group)
            {
                out.push(self.info(&name, &record));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_database(&self, database: &DatabaseName) -> TenantDbResult<bool> {
        let _guard = self.records.lock().await;
        let existed =
            self.read_record(database).await?.is_some() || self.db_path(database).exists();
        let db = self.db_path(database);
        let files = [
            db.clone(),
            PathBuf::from(format!("{}-wal", db.display())),
            PathBuf::from(format!("{}-shm", db.display())),
            self.record_path(database),
        ];
        for file in files {
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(TenantDbError::io(format!("deleting {}", file.display()))(e)),
            }
        }
        Ok(existed)
    }

    async fn issue_token(
        &self,
        database: &DatabaseName,
        scope: TursoTokenScope,
        expires_in: Option<Duration>,
    ) -> TenantDbResult<IssuedToken> {
        self.update_record(database, |record| record.issue(scope, expires_in))
            .await
    }

    async fn rotate_tokens(&self, database: &DatabaseName) -> TenantDbResult<()> {
        self.update_record(database, |record| record.tokens.clear())
            .await
    }

    async fn storage_bytes(&self, database: &DatabaseName) -> TenantDbResult<u64> {
        if self.read_record(database).await?.is_none() {
            return Err(TenantDbError::NotFound(database.to_string()));
        }
        let db = self.db_path(database);
        let mut total = 0;
        for file in [db.clone(), PathBuf::from(format!("{}-wal", db.display()))] {
            if let Ok(meta) = tokio::fs::metadata(&file).await {
                total += meta.len();
            }
        }
        Ok(total)
    }

    async fn open(
        &self,
        database: &DatabaseName,
        token: &SecretString,
    ) -> TenantDbResult<TenantDatabase> {
        let record = self
            .read_record(database)
            .await?
            .ok_or_else(|| TenantDbError::NotFound(database.to_string()))?;
        let scope = record.authorize(database, token)?;
        let read_only = scope == TursoTokenScope::ReadOnly;
        let mut builder = libsql::Builder::new_local(self.db_path(database));
        if read_only {
            builder = builder.flags(OpenFlags::SQLITE_OPEN_READ_ONLY);
        } else {
            builder = builder.flags(OpenFlags::SQLITE_OPEN_READ_WRITE);
        }
        let db = builder
            .build()
            .await
            .map_err(TenantDbError::db(format!("opening {database}")))?;
        Ok(TenantDatabase::new(
            record.tenant,
            database.clone(),
            db,
            read_only,
            true,
        ))
    }
}
