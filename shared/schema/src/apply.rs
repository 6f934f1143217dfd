//! Applies a [`MigrationPlan`] in one transaction: all of it, or nothing.
//!
//! Foreign-key enforcement is switched off for the duration (a table rebuild drops and renames
//! tables that others reference — SQLite's documented procedure), `pragma foreign_key_check`
//! runs before the commit, and the previous setting is restored whatever happens. Any failing
//! statement, or any violated key, rolls the whole plan back: the database is exactly as before.

use std::time::Instant;

use fleet_protocol::MigrationPlan;
use fleet_protocol::contracts::MigrationApplyResult;
use libsql::Connection;

use crate::introspect::IntrospectError;

/// Why a plan did not apply (the database is unchanged in every case).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The plan is for another dialect.
    #[error("the plan is for {0:?}, not sqlite")]
    Dialect(String),
    /// The transaction could not be started or ended.
    #[error("{what}")]
    Transaction {
        /// What failed.
        what: &'static str,
        /// The database error.
        #[source]
        source: libsql::Error,
    },
    /// A statement failed; everything was rolled back.
    #[error("statement {index} failed and the migration was rolled back ({sql})")]
    Statement {
        /// Position of the failed statement.
        index: usize,
        /// Its SQL.
        sql: String,
        /// The database error.
        #[source]
        source: libsql::Error,
    },
    /// Rows violate foreign keys after the migration; everything was rolled back.
    #[error(
        "the migration would leave {count} row(s) violating foreign keys (first: {first}); rolled back"
    )]
    ForeignKeys {
        /// How many violations.
        count: usize,
        /// The first one, as `table rowid → parent`.
        first: String,
    },
    /// The foreign-key check could not run.
    #[error(transparent)]
    Check(#[from] IntrospectError),
    /// A guard found what it guards against, inside the transaction; nothing was applied.
    #[error("{0}")]
    Guard(String),
}

impl ApplyError {
    /// Index of the failed statement, when a statement failed.
    pub fn failed_at(&self) -> Option<usize> {
        match self {
            Self::Statement { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// Applies every statement of `plan`, in order, in one transaction.
pub async fn apply_plan(
    conn: &Connection,
    plan: &MigrationPlan,
) -> Result<MigrationApplyResult, ApplyError> {
    apply_plan_with(conn, plan, &[]).await
}

/// A parameterised statement run in the plan's transaction (e.g. recording what was deployed in
/// the tenant's metadata registry, so a database is never migrated but unregistered).
#[derive(Debug, Clone)]
pub struct BoundStatement {
    /// SQL with `?N` placeholders.
    pub sql: String,
    /// The values.
    pub params: Vec<libsql::Value>,
}

/// A query run first inside the transaction (after `BEGIN IMMEDIATE`, so no other writer can
/// change what it reads until the commit): a row back refuses the whole apply with `refusal`.
/// What a caller checked before planning, checked again where it cannot race.
#[derive(Debug, Clone)]
pub struct Guard {
    /// SQL with `?N` placeholders; any row refuses.
    pub sql: String,
    /// The values.
    pub params: Vec<libsql::Value>,
    /// Why, when it refuses.
    pub refusal: String,
}

/// [`apply_plan`], then `after` — all in the same transaction.
pub async fn apply_plan_with(
    conn: &Connection,
    plan: &MigrationPlan,
    after: &[BoundStatement],
) -> Result<MigrationApplyResult, ApplyError> {
    apply_plan_guarded(conn, plan, &[], after).await
}

/// [`apply_plan_with`], with `guards` checked first inside the transaction.
pub async fn apply_plan_guarded(
    conn: &Connection,
    plan: &MigrationPlan,
    guards: &[Guard],
    after: &[BoundStatement],
) -> Result<MigrationApplyResult, ApplyError> {
    if plan.dialect != "sqlite" {
        return Err(ApplyError::Dialect(plan.dialect.clone()));
    }
    let started = Instant::now();
    let tx = |what| move |source| ApplyError::Transaction { what, source };
    let mut rows = conn
        .query("PRAGMA foreign_keys", ())
        .await
        .map_err(tx("reading foreign_keys"))?;
    let foreign_keys_on = match rows.next().await.map_err(tx("reading foreign_keys"))? {
        Some(row) => row.get::<i64>(0).unwrap_or(0) != 0,
        None => false,
    };
    drop(rows);
    conn.execute("PRAGMA foreign_keys = OFF", ())
        .await
        .map_err(tx("disabling foreign keys"))?;
    let outcome = run_in_transaction(conn, plan, guards, after).await;
    if foreign_keys_on {
        conn.execute("PRAGMA foreign_keys = ON", ())
            .await
            .map_err(tx("re-enabling foreign keys"))?;
    }
    let executed = outcome?;
    Ok(MigrationApplyResult {
        success: true,
        statements_executed: executed as u64,
        duration_ms: started.elapsed().as_millis() as u64,
        error: None,
        failed_at_index: None,
    })
}

async fn run_in_transaction(
    conn: &Connection,
    plan: &MigrationPlan,
    guards: &[Guard],
    after: &[BoundStatement],
) -> Result<usize, ApplyError> {
    conn.execute("BEGIN IMMEDIATE", ())
        .await
        .map_err(|source| ApplyError::Transaction {
            what: "BEGIN",
            source,
        })?;
    let result = match run_guards(conn, guards).await {
        Ok(()) => run_statements(conn, plan, after).await,
        Err(refused) => Err(refused),
    };
    match result {
        Ok(executed) => {
            conn.execute("COMMIT", ())
                .await
                .map_err(|source| ApplyError::Transaction {
                    what: "COMMIT",
                    source,
                })?;
            Ok(executed)
        }
        Err(err) => {
            conn.execute("ROLLBACK", ())
                .await
                .map_err(|source| ApplyError::Transaction {
                    what: "ROLLBACK",
                    source,
                })?;
            Err(err)
        }
    }
}

async fn run_guards(conn: &Connection, guards: &[Guard]) -> Result<(), ApplyError> {
    for guard in guards {
        let mut rows = conn
            .query(&guard.sql, guard.params.clone())
            .await
            .map_err(|source| ApplyError::Transaction {
                what: "a guard",
                source,
            })?;
        let found = rows
            .next()
            .await
            .map_err(|source| ApplyError::Transaction {
                what: "a guard",
                source,
            })?;
        if found.is_some() {
            return Err(ApplyError::Guard(guard.refusal.clone()));
        }
    }
    Ok(())
}

async fn run_statements(
    conn: &Connection,
    plan: &MigrationPlan,
    after: &[BoundStatement],
) -> Result<usize, ApplyError> {
    let mut statements: Vec<_> = plan.statements.iter().collect();
    statements.sort_by_key(|s| s.order);
    for (index, statement) in statements.iter().enumerate() {
        tracing::debug!(index, sql = %statement.sql, "applying migration statement");
        conn.execute_batch(&statement.sql)
            .await
            .map_err(|source| ApplyError::Statement {
                index,
                sql: statement.sql.clone(),
                source,
            })?;
    }
    for (offset, statement) in after.iter().enumerate() {
        conn.execute(&statement.sql, statement.params.clone())
            .await
            .map_err(|source| ApplyError::Statement {
                index: statements.len() + offset,
                sql: statement.sql.clone(),
                source,
            })?;
    }
    let mut rows = conn
        .query("PRAGMA foreign_key_check", ())
        .await
        .map_err(|source| ApplyError::Transaction {
            what: "foreign_key_check",
            source,
        })?;
    let mut violations = Vec::new();
    while let Some(row) = rows
        .next()
        .await
        .map_err(|source| ApplyError::Transaction {
            what: "foreign_key_check",
            source,
        })?
    {
        // table, rowid, parent, fkid
        let table = row.get::<String>(0).unwrap_or_default();
        let rowid = row.get::<i64>(1).unwrap_or_default();
        let parent = row.get::<String>(2).unwrap_or_default();
        violations.push(format!("{table} row {rowid} → {parent}"));
    }
    if let Some(first) = violations.first() {
        return Err(ApplyError::ForeignKeys {
            count: violations.len(),
            first: first.clone(),
        });
    }
    Ok(statements.len())
}
