//! Upstream `ITursoPlatformService` ([`TursoPlatform`]) on the real Turso Platform API client
//! ([`TursoClient`]): the same calls the turso backend makes, with their retries, rate limit and
//! timeouts, for callers that speak the contract (operators' tools, tests against the double).
//!
//! Errors map onto upstream's [`ContractError`]: a missing database or group is `NotFound`, a
//! taken name `AlreadyExists`, a refused token `Unauthorized`, an account limit
//! `QuotaExceeded`, a timeout, 429 or 5xx (after the client's retries) `Unavailable`.

use async_trait::async_trait;
use fleet_protocol::DatabaseName;
use fleet_protocol::contracts::{ContractError, ContractResult, TursoPlatform};
use fleet_protocol::turso::{
    CreateTursoDatabaseOptions, TursoDatabaseInfo, TursoTokenResult, TursoTokenScope,
};
use secrecy::ExposeSecret;

use crate::TenantDbError;
use crate::turso::TursoClient;

fn contract(e: TenantDbError) -> ContractError {
    match e {
        TenantDbError::NotFound(name) => ContractError::NotFound {
            kind: "database",
            name,
        },
        TenantDbError::GroupNotFound(name) => ContractError::NotFound {
            kind: "group",
            name,
        },
        TenantDbError::AlreadyExists { name, .. } => ContractError::AlreadyExists {
            kind: "database",
            name,
        },
        TenantDbError::Unauthorized(why) => ContractError::Unauthorized(why),
        TenantDbError::NoSubscription(why) => ContractError::QuotaExceeded(why),
        TenantDbError::Unavailable(why) => ContractError::Unavailable(why),
        other => ContractError::Other(Box::new(other)),
    }
}

fn database(name: &str) -> ContractResult<DatabaseName> {
    DatabaseName::parse(name).map_err(|e| ContractError::IllegalState(format!("name: {e}")))
}

#[async_trait]
impl TursoPlatform for TursoClient {
    async fn create_database(
        &self,
        options: CreateTursoDatabaseOptions,
    ) -> ContractResult<TursoDatabaseInfo> {
        let name = database(&options.name)?;
        self.create_database_seeded(&name, &options.group, options.seed.as_ref())
            .await
            .map_err(|e| match e {
                // The API's 409 names the path; the caller named the database.
                TenantDbError::AlreadyExists { .. } => ContractError::AlreadyExists {
                    kind: "database",
                    name: options.name.clone(),
                },
                e => contract(e),
            })
    }

    async fn delete_database(&self, database: &DatabaseName) -> ContractResult<()> {
        match TursoClient::delete_database(self, database).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ContractError::NotFound {
                kind: "database",
                name: database.to_string(),
            }),
            Err(e) => Err(contract(e)),
        }
    }

    async fn list_databases(&self, group: Option<&str>) -> ContractResult<Vec<TursoDatabaseInfo>> {
        TursoClient::list_databases(self, group)
            .await
            .map_err(contract)
    }

    async fn get_database(
        &self,
        database: &DatabaseName,
    ) -> ContractResult<Option<TursoDatabaseInfo>> {
        TursoClient::get_database(self, database)
            .await
            .map_err(contract)
    }

    /// `expiration`: Turso's format (`never`, `2w`, `1d`, `30m`); `None` is `never`.
    async fn create_token(
        &self,
        database: &DatabaseName,
        scope: TursoTokenScope,
        expiration: Option<&str>,
    ) -> ContractResult<TursoTokenResult> {
        let expiration = expiration.unwrap_or("never");
        let jwt = TursoClient::create_token(self, database, scope, expiration)
            .await
            .map_err(contract)?;
        Ok(TursoTokenResult {
            jwt: jwt.expose_secret().to_owned(),
            expiration: (expiration != "never").then(|| expiration.to_owned()),
        })
    }

    async fn revoke_tokens(&self, database: &DatabaseName) -> ContractResult<()> {
        self.rotate_tokens(database).await.map_err(contract)
    }
}
