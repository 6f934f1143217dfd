//! The embedded default: one libSQL file per tenant under the data dir.
//!
//! `<data_dir>/<shard>/<database>.db` is the database (WAL mode; connections use
//! `synchronous=FULL`, so a committed transaction survives power loss, and a busy timeout, so
//! writers queue instead of failing). `<database>.meta.json` beside it records its tenant, group,
//! id and issued tokens (hashes only). `<shard>` is the first byte of the SHA-256 of the
//! database name in hex: 256 folders, so no directory holds every tenant's files (creating and
//! deleting files in one huge directory puts the kernel's directory lock on every tenant's
//! path). Databases created before the layout was sharded (directly under the data dir) are
//! found where they are.
//!
//! ## Crash consistency
//!
//! A changed record is never written in place, so a crash between any two system calls leaves
//! either the old record or the new one:
//! - a new record is created under its own name with `O_CREAT | O_EXCL` (two concurrent creates
//!   of one database end with one record), written and synced. A crash before the sync can
//!   leave it empty or cut short: that is a record that was never written (below);
//! - a changed record goes to `<database>.meta.json.tmp` (any leftover of a crashed writer
//!   removed first), is synced, and replaces the old one with `rename(2)`; then the directory
//!   is synced.
//!
//! What a crash mid-`write` or a power loss could leave of a new record — a zero-length,
//! all-NUL or truncated file — is a record that was never written: reads treat it as absent and
//! a create for the same database reclaims it (the name derives from the tenant id, so it can
//! only be this tenant's).
//!
//! The database file is not made by SQLite's `PRAGMA journal_mode = WAL` on an empty file
//! (which writes the header through a rollback journal: a file created, four syncs, the file
//! removed) but written from the bytes of an empty WAL-mode database that the backend asks
//! SQLite for once, and synced. A file shorter than that image is an interrupted write and is
//! written again.
//! A complete record that does not parse is [`TenantDbError::Corrupt`]: permanent, for an
//! operator. Every step a crash could interrupt is a named [`crashpoint`].
//!
//! Writers of one database's record are serialised by a lock stripe in the process; across
//! processes the provisioner's lease keeps one executor per tenant.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use fleet_protocol::turso::{TursoDatabaseInfo, TursoTokenScope};
use fleet_protocol::{DatabaseName, TenantId};
use libsql::OpenFlags;
use secrecy::SecretString;
use tokio::sync::Mutex;

use crate::backend::{IssuedToken, TenantDatabase, TenantDatabases, TenantDbError, TenantDbResult};
use crate::crashpoint;
use crate::embedded::DatabaseRecord;

/// Group name the local backend reports.
pub const LOCAL_GROUP: &str = "local";

/// Lock stripes for record writers: bounded, whatever the number of tenants.
const STRIPES: usize = 64;

/// One libSQL file per tenant.
pub struct LocalBackend {
    data_dir: PathBuf,
    prefix: String,
    stripes: [Mutex<()>; STRIPES],
    /// An empty WAL-mode database, as SQLite writes it (asked for once).
    empty: tokio::sync::OnceCell<Vec<u8>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("data_dir", &self.data_dir)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// What a record file holds.
enum Stored {
    /// Nothing at that name.
    Absent,
    /// Zero-length or cut short: a write that never finished (treated as absent).
    Torn,
    /// A complete record.
    Record(DatabaseRecord),
}

/// Reads a record file: absent, torn, a record, or [`TenantDbError::Corrupt`].
fn read_stored(path: &Path, database: &DatabaseName) -> TenantDbResult<Stored> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::Absent),
        Err(e) => {
            return Err(TenantDbError::io(format!(
                "reading the record of {database}"
            ))(e));
        }
    };
    // Zero-length, blank, or all NUL bytes (what some file systems leave of a file whose data
    // never reached the disk before power was lost): never written.
    if bytes.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
        return Ok(Stored::Torn);
    }
    match serde_json::from_slice(&bytes) {
        Ok(record) => Ok(Stored::Record(record)),
        Err(e) if e.is_eof() => Ok(Stored::Torn),
        Err(e) => Err(TenantDbError::Corrupt {
            what: format!("the record of {database} ({})", path.display()),
            why: e.to_string(),
        }),
    }
}

/// Writes `record` to `tmp` (removing a leftover first) and syncs it.
fn write_temp(tmp: &Path, record: &DatabaseRecord, operation: &str) -> std::io::Result<()> {
    match std::fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    file.write_all(&bytes)?;
    crashpoint::reached(&format!("{operation}.temp_written"));
    file.sync_all()?;
    crashpoint::reached(&format!("{operation}.temp_synced"));
    Ok(())
}

/// Makes the directory's entries (created, renamed, removed files) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The paths of one database's files.
struct Files {
    dir: PathBuf,
    db: PathBuf,
    record: PathBuf,
    temp: PathBuf,
}

/// The shard folder of `database`: the first byte of the SHA-256 of its name, in hex.
fn shard(database: &DatabaseName) -> String {
    use sha2::Digest;
    format!(
        "{:02x}",
        sha2::Sha256::digest(database.as_str().as_bytes())[0]
    )
}

/// An empty SQLite database in WAL mode, byte for byte what SQLite writes for a new file after
/// `PRAGMA journal_mode = WAL` (the test below compares them): one 4 KiB page holding the
/// 100-byte header — page size 4096, file format versions 2 and 2 (WAL), change counter 1, one
/// page, version-valid-for 1 — and the empty table b-tree leaf of `sqlite_schema`. Built in
/// memory: making it with SQLite takes a temp file, which a worker killed at the wrong moment
/// left behind (the chaos suite's worker-crashes scenario found one in `$TMPDIR`).
pub fn empty_wal_database() -> Vec<u8> {
    const PAGE: usize = 4096;
    let mut page = vec![0u8; PAGE];
    page[..16].copy_from_slice(b"SQLite format 3\0");
    page[16..18].copy_from_slice(&(PAGE as u16).to_be_bytes());
    // File format write and read versions: 2 = WAL.
    page[18] = 2;
    page[19] = 2;
    // Reserved bytes per page 0; payload fractions 64, 32, 32 (fixed by the format).
    page[21] = 64;
    page[22] = 32;
    page[23] = 32;
    // File change counter; size in pages; version-valid-for (= the change counter).
    page[24..28].copy_from_slice(&1u32.to_be_bytes());
    page[28..32].copy_from_slice(&1u32.to_be_bytes());
    page[92..96].copy_from_slice(&1u32.to_be_bytes());
    // SQLITE_VERSION_NUMBER of the writer (informational): the bundled libSQL's SQLite 3.47.0.
    page[96..100].copy_from_slice(&3_047_000u32.to_be_bytes());
    // Page 1's b-tree header: a table leaf (0x0d), no cells, cell content from the page's end.
    page[100] = 0x0d;
    page[105..107].copy_from_slice(&(PAGE as u16).to_be_bytes());
    page
}

/// Runs the backend's file-system work (a few small files, a write synced) on the calling
/// thread, as libSQL runs its own local I/O (statements, commits that wait for `fsync`): the
/// workers run several runtime threads per core for that (`fleet_runtime::worker::main`).
/// Handed to `spawn_blocking`, each call cost two thread hand-offs — five calls per
/// provisioning, ~43 of the provisioner's ~70 futex calls per tenant and ~9 % of its CPU
/// (measured on tmpfs, where the disk does not hide it). Every file operation of the backend
/// goes through here, so that choice is made in one place; the work borrows what it needs.
async fn blocking<T>(work: impl FnOnce() -> TenantDbResult<T>) -> TenantDbResult<T> {
    work()
}

impl LocalBackend {
    /// A backend storing databases under `data_dir`, naming them `{prefix}{tenant}`.
    pub fn new(data_dir: impl Into<PathBuf>, prefix: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            prefix: prefix.into(),
            stripes: std::array::from_fn(|_| Mutex::new(())),
            empty: tokio::sync::OnceCell::new(),
        }
    }

    /// The bytes of an empty database in WAL mode ([`empty_wal_database`]).
    async fn empty_database(&self) -> TenantDbResult<&[u8]> {
        Ok(self
            .empty
            .get_or_init(|| async { empty_wal_database() })
            .await
            .as_slice())
    }

    /// The folder holding the databases.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where `database`'s files are: its shard folder, or the data dir itself for a database
    /// created before the layout was sharded (found with at most two `stat`s, once per
    /// operation).
    fn files(&self, database: &DatabaseName) -> Files {
        let sharded = self.data_dir.join(shard(database));
        let record = format!("{database}.meta.json");
        let dir = if !sharded.join(&record).exists() && self.data_dir.join(&record).exists() {
            self.data_dir.clone()
        } else {
            sharded
        };
        Files {
            db: dir.join(format!("{database}.db")),
            record: dir.join(&record),
            temp: dir.join(format!("{record}.tmp")),
            dir,
        }
    }

    /// The folder holding `database`'s files.
    pub fn database_dir(&self, database: &DatabaseName) -> PathBuf {
        self.files(database).dir
    }

    /// The database file of `database`.
    pub fn database_path(&self, database: &DatabaseName) -> PathBuf {
        self.files(database).db
    }

    /// The record (`.meta.json`) of `database`.
    pub fn record_path(&self, database: &DatabaseName) -> PathBuf {
        self.files(database).record
    }

    /// The lock stripe of `database`'s record.
    fn stripe(&self, database: &DatabaseName) -> &Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        database.as_str().hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % STRIPES]
    }

    /// The record of `database`; a torn one reads as absent.
    async fn read_record(&self, database: &DatabaseName) -> TenantDbResult<Option<DatabaseRecord>> {
        let path = self.record_path(database);
        match blocking(|| read_stored(&path, database)).await? {
            Stored::Record(record) => Ok(Some(record)),
            Stored::Absent => Ok(None),
            Stored::Torn => {
                tracing::warn!(%database, "record is torn (an interrupted write): treated as absent");
                Ok(None)
            }
        }
    }

    /// Changes the record under its lock and replaces it atomically (temp, sync, rename, sync
    /// the directory). `operation` names the crash points (`issue_token.record_replaced`).
    async fn update_record<T>(
        &self,
        database: &DatabaseName,
        operation: &'static str,
        change: impl FnOnce(&mut DatabaseRecord) -> T,
    ) -> TenantDbResult<T> {
        let _guard = self.stripe(database).lock().await;
        let Files {
            record: path,
            temp: tmp,
            dir,
            ..
        } = self.files(database);
        let name = database;
        blocking(move || {
            let Stored::Record(mut record) = read_stored(&path, name)? else {
                return Err(TenantDbError::NotFound(name.to_string()));
            };
            let before = record.clone();
            let out = change(&mut record);
            if record == before {
                // Nothing changed (revoking the tokens of a record that has none): no write, no
                // fsync — the first provisioning of every tenant revokes orphans that are not there.
                return Ok(out);
            }
            let io = |what: &str| TenantDbError::io(format!("{what} the record of {name}"));
            write_temp(&tmp, &record, operation).map_err(io("writing"))?;
            std::fs::rename(&tmp, &path).map_err(io("replacing"))?;
            crashpoint::reached(&format!("{operation}.record_replaced"));
            sync_dir(&dir).map_err(io("syncing the directory of"))?;
            crashpoint::reached(&format!("{operation}.directory_synced"));
            Ok(out)
        })
        .await
    }

    /// Publishes a new record for `tenant` unless one exists; returns the record in place
    /// (ours, an earlier attempt's, or a concurrent create's). A torn record is reclaimed.
    async fn create_record(
        &self,
        database: &DatabaseName,
        tenant: &TenantId,
        group: &str,
    ) -> TenantDbResult<DatabaseRecord> {
        let _guard = self.stripe(database).lock().await;
        let Files {
            record: path,
            temp: tmp,
            dir,
            ..
        } = self.files(database);
        let (name, fresh) = (database, DatabaseRecord::new(tenant, group));
        let data_dir = &self.data_dir;
        blocking(move || {
            let io = |what: String| TenantDbError::io(what);
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
                // The new folder's own entry, made durable once.
                sync_dir(data_dir).map_err(io(format!("syncing {}", data_dir.display())))?;
            }
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match created {
                Ok(mut file) => {
                    let bytes = serde_json::to_vec_pretty(&fresh).expect("a record serializes");
                    let write = |e| io(format!("writing the record of {name}"))(e);
                    file.write_all(&bytes).map_err(write)?;
                    crashpoint::reached("create_database.record_written");
                    file.sync_all().map_err(write)?;
                    crashpoint::reached("create_database.record_synced");
                    Ok(fresh)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match read_stored(&path, name)? {
                        Stored::Record(existing) => Ok(existing),
                        Stored::Absent | Stored::Torn => {
                            tracing::warn!(database = %name, "reclaiming a torn record left by an interrupted create");
                            write_temp(&tmp, &fresh, "create_database")
                                .map_err(io(format!("writing the record of {name}")))?;
                            std::fs::rename(&tmp, &path)
                                .map_err(io(format!("reclaiming the record of {name}")))?;
                            Ok(fresh)
                        }
                    }
                }
                Err(e) => Err(io(format!("creating the record of {name}"))(e)),
            }
        })
        .await
    }

    fn info(&self, database: &DatabaseName, record: &DatabaseRecord) -> TursoDatabaseInfo {
        record.info(
            database,
            self.database_path(database).display().to_string(),
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
        format!("file:{}", self.database_path(database).display())
    }

    async fn create_database(
        &self,
        tenant: &TenantId,
        group: Option<&str>,
    ) -> TenantDbResult<TursoDatabaseInfo> {
        let group = group.unwrap_or(LOCAL_GROUP);
        let database = self.database_name(tenant);
        let record = self.create_record(&database, tenant, group).await?;
        record.check_owner(&database, tenant, group)?;
        // The database file from the empty WAL-mode image, unless a complete one is there
        // (a retry after a crash); synced before the step can be recorded as done.
        let empty = self.empty_database().await?.to_vec();
        let Files { db: path, dir, .. } = self.files(&database);
        let name = &database;
        blocking(move || {
            let io = |what: &str| TenantDbError::io(format!("{what} the database file of {name}"));
            let complete = std::fs::metadata(&path).is_ok_and(|m| m.len() >= empty.len() as u64);
            if !complete {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(io("creating"))?;
                file.write_all(&empty).map_err(io("writing"))?;
                crashpoint::reached("create_database.database_written");
                file.sync_all().map_err(io("syncing"))?;
            }
            crashpoint::reached("create_database.database_created");
            // One directory sync makes both new names (record, database) durable before the
            // step is recorded as done.
            sync_dir(&dir).map_err(TenantDbError::io(format!("syncing {}", dir.display())))
        })
        .await?;
        crashpoint::reached("create_database.directory_synced");
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
        // Records in the shard folders, and any created before the layout was sharded.
        let root = &self.data_dir;
        let names = blocking(move || {
            let mut names = Vec::new();
            let mut folders = vec![root.clone()];
            let entries = match std::fs::read_dir(root) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
                Err(e) => {
                    return Err(TenantDbError::io(format!("listing {}", root.display()))(e));
                }
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    folders.push(entry.path());
                }
            }
            for folder in folders {
                let entries = std::fs::read_dir(&folder)
                    .map_err(TenantDbError::io(format!("listing {}", folder.display())))?;
                for entry in entries.flatten() {
                    let file = entry.file_name().to_string_lossy().into_owned();
                    if let Some(name) = file
                        .strip_suffix(".meta.json")
                        .and_then(|n| DatabaseName::parse(n).ok())
                    {
                        names.push(name);
                    }
                }
            }
            Ok(names)
        })
        .await?;
        let mut out = Vec::new();
        for name in names {
            if let Some(record) = self.read_record(&name).await?
                && group.is_none_or(|g| g == record.group)
            {
                out.push(self.info(&name, &record));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    async fn delete_database(&self, database: &DatabaseName) -> TenantDbResult<bool> {
        let _guard = self.stripe(database).lock().await;
        let Files {
            db,
            record,
            temp,
            dir,
        } = self.files(database);
        // The database's files first, its record last: while the record exists the deletion
        // is unfinished, and a retry after a crash removes the rest (a corrupt record too).
        let files = [
            db.clone(),
            PathBuf::from(format!("{}-wal", db.display())),
            PathBuf::from(format!("{}-shm", db.display())),
            temp,
            record.clone(),
        ];
        blocking(move || {
            let existed = record.exists() || db.exists();
            for file in files {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(TenantDbError::io(format!("deleting {}", file.display()))(e));
                    }
                }
            }
            if existed {
                sync_dir(&dir).map_err(TenantDbError::io(format!("syncing {}", dir.display())))?;
            }
            Ok(existed)
        })
        .await
    }

    async fn issue_token(
        &self,
        database: &DatabaseName,
        scope: TursoTokenScope,
        expires_in: Option<Duration>,
    ) -> TenantDbResult<IssuedToken> {
        self.update_record(database, "issue_token", move |record| {
            record.issue(scope, expires_in)
        })
        .await
    }

    async fn rotate_tokens(&self, database: &DatabaseName) -> TenantDbResult<()> {
        self.update_record(database, "rotate_tokens", |record| record.tokens.clear())
            .await
    }

    async fn storage_bytes(&self, database: &DatabaseName) -> TenantDbResult<u64> {
        if self.read_record(database).await?.is_none() {
            return Err(TenantDbError::NotFound(database.to_string()));
        }
        let db = self.database_path(database);
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
        let mut builder = libsql::Builder::new_local(self.database_path(database));
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
