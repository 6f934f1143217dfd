//! Turso Cloud: the Platform API over reqwest (shapes from the API's OpenAPI document) and the
//! [`TursoBackend`] built on it, whose connections use libSQL's remote mode.
//!
//! Every call has a timeout. 429, 5xx, timeouts and dropped connections are retried with
//! jittered exponential backoff (backon), honouring `Retry-After`; 4xx answers are typed and
//! never retried. A client-side rate limit (Turso publishes none) spaces the calls out.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable;
use fleet_protocol::turso::{TursoDatabaseInfo, TursoTokenScope};
use fleet_protocol::{DatabaseName, TenantId};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::{IssuedToken, TenantDatabase, TenantDatabases, TenantDbError, TenantDbResult};

/// Settings of the Platform API client.
#[derive(Debug, Clone)]
pub struct TursoApiSettings {
    /// API base URL (`https://api.turso.tech`).
    pub base_url: String,
    /// Organisation slug.
    pub organization: String,
    /// Platform API token (a secret).
    pub api_token: SecretString,
    /// Timeout of one HTTP attempt.
    pub request_timeout: Duration,
    /// How transient failures are retried; its longest delay is also the longest
    /// `Retry-After` honoured.
    pub retry: fleet_config::RetryPolicy,
    /// Calls per second, client-side.
    pub rate_limit_per_second: NonZeroU32,
}

/// Whether an API answer may change on retry, and after how long the server asked to wait.
#[derive(Debug)]
struct Attempt {
    error: TenantDbError,
    retry_after: Option<Duration>,
}

/// How the client waits between retries (a hook so tests can observe the delays).
pub type Sleeper = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Adapts the [`Sleeper`] hook to backon (a named type keeps the retry future `Send`).
struct RetrySleeper(Sleeper);

impl backon::Sleeper for RetrySleeper {
    type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn sleep(&self, delay: Duration) -> Self::Sleep {
        (self.0)(delay)
    }
}

fn is_transient(attempt: &Attempt) -> bool {
    attempt.error.is_transient()
}

/// Retry-After replaces the computed delay, but never extends the number of retries.
fn honour_retry_after(attempt: &Attempt, delay: Option<Duration>) -> Option<Duration> {
    delay.map(|d| attempt.retry_after.unwrap_or(d))
}

fn log_retry(attempt: &Attempt, delay: Duration) {
    tracing::warn!(error = %attempt.error, ?delay, "Turso API call failed; retrying");
}

/// The Turso Platform API.
#[derive(Clone)]
pub struct TursoClient {
    settings: Arc<TursoApiSettings>,
    http: reqwest::Client,
    limiter: Arc<DefaultDirectRateLimiter>,
    sleeper: Sleeper,
}

impl std::fmt::Debug for TursoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TursoClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct ApiDatabase {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "DbId", default)]
    db_id: String,
    #[serde(rename = "Hostname", default)]
    hostname: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(rename = "primaryRegion", default)]
    primary_region: Option<String>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    r#type: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    sleeping: bool,
}

impl ApiDatabase {
    fn into_info(self, group: Option<&str>) -> TursoDatabaseInfo {
        TursoDatabaseInfo {
            name: self.name,
            db_id: self.db_id,
            hostname: self.hostname,
            group: self
                .group
                .or_else(|| group.map(str::to_owned))
                .unwrap_or_default(),
            primary_region: self.primary_region.unwrap_or_default(),
            regions: self.regions,
            kind: self.r#type.unwrap_or_else(|| "logical".to_owned()),
            version: self.version.unwrap_or_default(),
            sleeping: self.sleeping,
        }
    }
}

/// Storage and row usage of a database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct DatabaseUsage {
    /// Rows read.
    #[serde(default)]
    pub rows_read: u64,
    /// Rows written.
    #[serde(default)]
    pub rows_written: u64,
    /// Storage in bytes.
    #[serde(default)]
    pub storage_bytes: u64,
}

impl TursoClient {
    /// A client for `settings`.
    pub fn new(settings: TursoApiSettings) -> TenantDbResult<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .build()
            .map_err(|e| TenantDbError::BadRequest(format!("HTTP client: {e}")))?;
        let limiter = Arc::new(RateLimiter::direct(Quota::per_second(
            settings.rate_limit_per_second,
        )));
        let sleeper: Sleeper = Arc::new(|delay| Box::pin(tokio::time::sleep(delay)));
        Ok(Self {
            settings: Arc::new(settings),
            http,
            limiter,
            sleeper,
        })
    }

    /// The same client waiting between retries with `sleeper` instead of `tokio::time::sleep`.
    pub fn with_sleeper(mut self, sleeper: Sleeper) -> Self {
        self.sleeper = sleeper;
        self
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/organizations/{}{path}",
            self.settings.base_url.trim_end_matches('/'),
            self.settings.organization
        )
    }

    /// One API call with timeouts, rate limit and retries; the JSON body of a 2xx answer.
    /// (A boxed `'static` future over owned copies, which keeps it `Send` inside the retry loop.)
    fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Pin<Box<dyn Future<Output = TenantDbResult<Value>> + Send + 'static>> {
        // The policy's delays, jittered here; backon takes any iterator of delays.
        let backoff = self.settings.retry.delays(rand::random::<f64>).into_iter();
        let this = self.clone();
        let path = path.to_owned();
        let query: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let sleeper = self.sleeper.clone();
        Box::pin(async move {
            let attempt = move || {
                let (this, method, path, query, body) = (
                    this.clone(),
                    method.clone(),
                    path.clone(),
                    query.clone(),
                    body.clone(),
                );
                async move { this.attempt(method, path, query, body).await }
            };
            attempt
                .retry(backoff)
                .sleep(RetrySleeper(sleeper))
                .when(is_transient)
                .adjust(honour_retry_after)
                .notify(log_retry)
                .await
                .map_err(|a| a.error)
        })
    }

    async fn attempt(
        self,
        method: Method,
        path: String,
        query: Vec<(String, String)>,
        body: Option<Value>,
    ) -> Result<Value, Attempt> {
        let path = path.as_str();
        self.limiter.until_ready().await;
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(self.settings.api_token.expose_secret())
            .query(&query);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let transient = |what: String| Attempt {
            error: TenantDbError::Unavailable(what),
            retry_after: None,
        };
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                transient(format!("{path}: timed out"))
            } else {
                transient(format!("{path}: {e}"))
            }
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(self.settings.retry.max_delay()));
        let text = response
            .text()
            .await
            .map_err(|e| transient(format!("{path}: reading the answer: {e}")))?;
        if status.is_success() {
            return Ok(if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            });
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(200).collect());
        let error = match status {
            StatusCode::TOO_MANY_REQUESTS => {
                TenantDbError::Unavailable(format!("{path}: rate limited (429)"))
            }
            s if s.is_server_error() => {
                TenantDbError::Unavailable(format!("{path}: {s}: {message}"))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                TenantDbError::Unauthorized(format!("{path}: {message}"))
            }
            StatusCode::PAYMENT_REQUIRED => TenantDbError::NoSubscription(message),
            StatusCode::NOT_FOUND => TenantDbError::NotFound(message),
            StatusCode::CONFLICT => TenantDbError::AlreadyExists {
                name: path.to_owned(),
                why: message,
            },
            StatusCode::BAD_REQUEST if message.contains("group not found") => {
                TenantDbError::GroupNotFound(message)
            }
            _ => TenantDbError::BadRequest(format!("{path}: {status}: {message}")),
        };
        Err(Attempt { error, retry_after })
    }

    /// `POST /databases`.
    pub async fn create_database(
        &self,
        name: &DatabaseName,
        group: &str,
    ) -> TenantDbResult<TursoDatabaseInfo> {
        self.create_database_seeded(name, group, None).await
    }

    /// `POST /databases` with an optional seed (`{"type": "database", "name": …}` copies an
    /// existing database, e.g. a group's template).
    pub async fn create_database_seeded(
        &self,
        name: &DatabaseName,
        group: &str,
        seed: Option<&fleet_protocol::turso::DatabaseSeed>,
    ) -> TenantDbResult<TursoDatabaseInfo> {
        let mut body = json!({"name": name.as_str(), "group": group});
        if let Some(seed) = seed {
            body["seed"] = serde_json::to_value(seed)
                .map_err(|e| TenantDbError::BadRequest(format!("seed: {e}")))?;
        }
        let answer = self
            .call(Method::POST, "/databases", &[], Some(body))
            .await?;
        let database: ApiDatabase = parse(
            answer.get("database").cloned().unwrap_or(Value::Null),
            "create database",
        )?;
        Ok(database.into_info(Some(group)))
    }

    /// `GET /databases/{name}`; `None` on 404.
    pub async fn get_database(
        &self,
        name: &DatabaseName,
    ) -> TenantDbResult<Option<TursoDatabaseInfo>> {
        match self
            .call(Method::GET, &format!("/databases/{name}"), &[], None)
            .await
        {
            Ok(answer) => Ok(Some(
                parse::<ApiDatabase>(
                    answer.get("database").cloned().unwrap_or(Value::Null),
                    "get database",
                )?
                .into_info(None),
            )),
            Err(TenantDbError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /databases?group=`.
    pub async fn list_databases(
        &self,
        group: Option<&str>,
    ) -> TenantDbResult<Vec<TursoDatabaseInfo>> {
        let query: Vec<(&str, &str)> = group.map(|g| ("group", g)).into_iter().collect();
        let answer = self.call(Method::GET, "/databases", &query, None).await?;
        let databases: Vec<ApiDatabase> = parse(
            answer.get("databases").cloned().unwrap_or(json!([])),
            "list databases",
        )?;
        Ok(databases.into_iter().map(|d| d.into_info(None)).collect())
    }

    /// `DELETE /databases/{name}`; `false` on 404.
    pub async fn delete_database(&self, name: &DatabaseName) -> TenantDbResult<bool> {
        match self
            .call(Method::DELETE, &format!("/databases/{name}"), &[], None)
            .await
        {
            Ok(_) => Ok(true),
            Err(TenantDbError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `POST /databases/{name}/auth/tokens?expiration=&authorization=`.
    pub async fn create_token(
        &self,
        name: &DatabaseName,
        scope: TursoTokenScope,
        expiration: &str,
    ) -> TenantDbResult<SecretString> {
        let authorization = match scope {
            TursoTokenScope::FullAccess => "full-access",
            TursoTokenScope::ReadOnly => "read-only",
        };
        let query = [("expiration", expiration), ("authorization", authorization)];
        let answer = self
            .call(
                Method::POST,
                &format!("/databases/{name}/auth/tokens"),
                &query,
                None,
            )
            .await?;
        let jwt = answer
            .get("jwt")
            .and_then(Value::as_str)
            .ok_or_else(|| TenantDbError::BadRequest("token answer without jwt".into()))?;
        Ok(SecretString::from(jwt.to_owned()))
    }

    /// `POST /databases/{name}/auth/rotate`: invalidates every token of the database.
    pub async fn rotate_tokens(&self, name: &DatabaseName) -> TenantDbResult<()> {
        self.call(
            Method::POST,
            &format!("/databases/{name}/auth/rotate"),
            &[],
            None,
        )
        .await
        .map(|_| ())
    }

    /// `GET /databases/{name}/usage`.
    pub async fn usage(&self, name: &DatabaseName) -> TenantDbResult<DatabaseUsage> {
        let answer = self
            .call(Method::GET, &format!("/databases/{name}/usage"), &[], None)
            .await?;
        parse(
            answer
                .pointer("/database/total")
                .cloned()
                .unwrap_or(json!({})),
            "usage",
        )
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> TenantDbResult<T> {
    serde_json::from_value(value)
        .map_err(|e| TenantDbError::BadRequest(format!("unexpected {what} answer: {e}")))
}

/// Turso's token expiration syntax for a lifetime (`never` when unbounded).
pub fn expiration_text(expires_in: Option<Duration>) -> String {
    match expires_in {
        None => "never".to_owned(),
        Some(d) => format!("{}m", d.as_secs().div_ceil(60).max(1)),
    }
}

/// Tenant databases in Turso Cloud.
#[derive(Debug, Clone)]
pub struct TursoBackend {
    client: TursoClient,
    default_group: String,
    prefix: String,
    url_template: String,
}

impl TursoBackend {
    /// A backend creating databases `{prefix}{tenant}` in `default_group`, reached at
    /// `url_template` (with `{tenant_id}`, e.g. `libsql://{tenant_id}-myorg.turso.io`).
    pub fn new(
        client: TursoClient,
        default_group: impl Into<String>,
        prefix: impl Into<String>,
        url_template: impl Into<String>,
    ) -> Self {
        Self {
            client,
            default_group: default_group.into(),
            prefix: prefix.into(),
            url_template: url_template.into(),
        }
    }

    /// The Platform API client.
    pub fn client(&self) -> &TursoClient {
        &self.client
    }
}

#[async_trait]
impl TenantDatabases for TursoBackend {
    fn database_name(&self, tenant: &TenantId) -> DatabaseName {
        DatabaseName::for_tenant(&self.prefix, tenant)
            .expect("a tenant id with a valid prefix is a valid database name")
    }

    fn connection_url(&self, database: &DatabaseName) -> String {
        self.url_template.replace("{tenant_id}", database.as_str())
    }

    async fn create_database(
        &self,
        tenant: &TenantId,
        group: Option<&str>,
    ) -> TenantDbResult<TursoDatabaseInfo> {
        let group = group.unwrap_or(&self.default_group);
        let database = self.database_name(tenant);
        match self.client.create_database(&database, group).await {
            Ok(info) => Ok(info),
            // The name is derived from the tenant id, so an existing database of that name in the
            // same group is this tenant's: a retried or concurrent create (idempotent provisioning).
            Err(TenantDbError::AlreadyExists { .. }) => {
                match self.client.get_database(&database).await? {
                    Some(info) if info.group == group => Ok(info),
                    Some(info) => Err(TenantDbError::AlreadyExists {
                        name: database.to_string(),
                        why: format!("it is in group {:?}, not {group:?}", info.group),
                    }),
                    None => Err(TenantDbError::Unavailable(format!(
                        "{database}: conflict, then not found"
                    ))),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn get_database(
        &self,
        database: &DatabaseName,
    ) -> TenantDbResult<Option<TursoDatabaseInfo>> {
        self.client.get_database(database).await
    }

    async fn list_databases(&self, group: Option<&str>) -> TenantDbResult<Vec<TursoDatabaseInfo>> {
        self.client.list_databases(group).await
    }

    async fn delete_database(&self, database: &DatabaseName) -> TenantDbResult<bool> {
        self.client.delete_database(database).await
    }

    async fn issue_token(
        &self,
        database: &DatabaseName,
        scope: TursoTokenScope,
        expires_in: Option<Duration>,
    ) -> TenantDbResult<IssuedToken> {
        let token = self
            .client
            .create_token(database, scope, &expiration_text(expires_in))
            .await?;
        Ok(IssuedToken {
            token,
            scope,
            expires_in,
        })
    }

    async fn rotate_tokens(&self, database: &DatabaseName) -> TenantDbResult<()> {
        self.client.rotate_tokens(database).await
    }

    async fn storage_bytes(&self, database: &DatabaseName) -> TenantDbResult<u64> {
        Ok(self.client.usage(database).await?.storage_bytes)
    }

    async fn open(
        &self,
        database: &DatabaseName,
        token: &SecretString,
    ) -> TenantDbResult<TenantDatabase> {
        let tenant = database
            .as_str()
            .strip_prefix(&self.prefix)
            .and_then(|t| TenantId::parse(t).ok())
            .ok_or_else(|| {
                TenantDbError::BadRequest(format!("{database} is not a tenant database"))
            })?;
        let db = libsql::Builder::new_remote(
            self.connection_url(database),
            token.expose_secret().to_owned(),
        )
        .build()
        .await
        .map_err(TenantDbError::db(format!("opening {database}")))?;
        Ok(TenantDatabase::new(
            tenant,
            database.clone(),
            db,
            false,
            false,
        ))
    }
}
