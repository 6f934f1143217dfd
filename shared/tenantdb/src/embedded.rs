//! What the two embedded backends (local files, memory) share: the per-database record and
//! the "tokens" they issue — random secrets checked by the backend on open, so the flow is the
//! same as Turso's (issue → store sealed → open with it → rotate to revoke). Only a token's
//! SHA-256 is kept.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_protocol::turso::{TursoDatabaseInfo, TursoTokenScope};
use fleet_protocol::{DatabaseName, TenantId};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{IssuedToken, TenantDbError, TenantDbResult};

/// The record of one embedded database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DatabaseRecord {
    pub tenant: TenantId,
    pub group: String,
    pub db_id: String,
    pub tokens: Vec<TokenRecord>,
}

/// One issued token, by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenRecord {
    pub sha256: String,
    pub scope: TursoTokenScope,
    /// Seconds since the Unix epoch; `None` = never expires.
    pub expires_at: Option<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl DatabaseRecord {
    pub fn new(tenant: &TenantId, group: &str) -> Self {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        Self {
            tenant: tenant.clone(),
            group: group.to_owned(),
            db_id: hex::encode(id),
            tokens: Vec::new(),
        }
    }

    /// Whether a create for `tenant` in `group` may reuse this record; why not otherwise.
    pub fn check_owner(
        &self,
        name: &DatabaseName,
        tenant: &TenantId,
        group: &str,
    ) -> TenantDbResult<()> {
        if &self.tenant != tenant {
            return Err(TenantDbError::AlreadyExists {
                name: name.to_string(),
                why: format!("it belongs to tenant {}", self.tenant),
            });
        }
        if self.group != group {
            return Err(TenantDbError::AlreadyExists {
                name: name.to_string(),
                why: format!("it is in group {:?}", self.group),
            });
        }
        Ok(())
    }

    pub fn info(&self, name: &DatabaseName, hostname: String, version: &str) -> TursoDatabaseInfo {
        TursoDatabaseInfo {
            name: name.to_string(),
            db_id: self.db_id.clone(),
            hostname,
            group: self.group.clone(),
            primary_region: "local".to_owned(),
            regions: vec!["local".to_owned()],
            kind: "logical".to_owned(),
            version: version.to_owned(),
            sleeping: false,
        }
    }

    /// Adds a new random token and returns it.
    pub fn issue(&mut self, scope: TursoTokenScope, expires_in: Option<Duration>) -> IssuedToken {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("flt1.{}", hex::encode(secret));
        self.tokens
            .retain(|t| t.expires_at.is_none_or(|at| at > now_secs()));
        self.tokens.push(TokenRecord {
            sha256: hash(&token),
            scope,
            expires_at: expires_in.map(|d| now_secs() + d.as_secs().max(1)),
        });
        IssuedToken {
            token: SecretString::from(token),
            scope,
            expires_in,
        }
    }

    /// The scope of `token`, when it is valid for this database.
    pub fn authorize(
        &self,
        name: &DatabaseName,
        token: &SecretString,
    ) -> TenantDbResult<TursoTokenScope> {
        let digest = hash(token.expose_secret());
        let record = self
            .tokens
            .iter()
            .find(|t| t.sha256 == digest)
            .ok_or_else(|| {
                TenantDbError::Unauthorized(format!(
                    "token not valid for {name} (unknown or revoked)"
                ))
            })?;
        if record.expires_at.is_some_and(|at| at <= now_secs()) {
            return Err(TenantDbError::Unauthorized(format!(
                "token for {name} has expired"
            )));
        }
        Ok(record.scope)
    }
}
