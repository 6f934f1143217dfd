//! Fleet configuration: one figment chain and its validation.
//!
//! The chain, later sources winning: built-in defaults ([`Config::default`]) →
//! `config/default.toml` → `config/$FLEET_ENV.toml` (`dev` when unset) → environment variables
//! `FLEET_SECTION__KEY` (`FLEET_NATS__URL`). `FLEET_CONFIG_DIR` moves the folder. After merging,
//! [`Config::validate`] checks every setting and reports all problems at once.
//! `config/default.toml` documents every setting.

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use fleet_protocol::TenantResolverStrategy;
use serde::{Deserialize, Serialize};

pub mod retry;

pub use retry::RetryPolicy;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("configuration could not be loaded: {0}")]
    Load(#[from] Box<figment::Error>),
    /// Values are present but invalid; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole fleet configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NATS connection.
    pub nats: NatsConfig,
    /// Tenant databases.
    pub tenantdb: TenantDbConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Worker job loop.
    pub worker: WorkerConfig,
    /// Tenant router.
    pub router: RouterConfig,
    /// Keys sealing connection secrets at rest.
    pub secrets: SecretsConfig,
    /// Tenant provisioning.
    pub provisioner: ProvisionerConfig,
    /// The quota auditor.
    pub quota: QuotaConfig,
    /// The tenant-aware data gateway.
    pub gateway: GatewayConfig,
    /// The deployer.
    pub deployer: DeployerConfig,
}

/// The deployer (`workers/deployer`): how a wave is split into jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployerConfig {
    /// Most tenants one `deploy.tenant` job carries (1–256). A wave of `n` tenants is published
    /// as `max(ceil(n / job_tenants), min(n, worker.concurrency))` jobs of even size, so a small
    /// wave still spreads over a replica's concurrency. 1 publishes the one-tenant jobs of
    /// earlier releases (command version 1), which every deployer reads — the setting for the
    /// first rollout of a release that reads version 2.
    pub job_tenants: usize,
}

impl Default for DeployerConfig {
    fn default() -> Self {
        Self { job_tenants: 16 }
    }
}

/// The data gateway (`workers/gateway`): upstream's data API in front of the tenants' databases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address the data API listens on (`host:port`; port 0 picks one).
    pub listen: String,
    /// Records one find returns at most (a larger `top` is capped to it).
    pub max_page_size: u64,
    /// Largest request body taken, in bytes.
    pub max_body_bytes: usize,
    /// Tenants whose state (plan, quotas, status) a replica keeps in memory at most; the
    /// tenants bucket's watch keeps them current.
    pub max_cached_tenants: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_page_size: 200,
            max_body_bytes: 1024 * 1024,
            max_cached_tenants: 10_000,
        }
    }
}

/// The quota auditor's schedule and consequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Seconds between audits of every tenant (the tick's time bucket).
    pub interval_secs: u64,
    /// Share of a limit, in percent, from which `hooks.quota.warning` is published.
    pub soft_percent: u64,
    /// Seconds a tenant may stay over a hard limit before it is suspended (reason `quota`).
    pub grace_secs: u64,
    /// Each plan's quotas (`free`, `pro`, `enterprise`, `custom` → upstream `TenantQuota`,
    /// camelCase keys); a plan not listed gets the built-in defaults.
    pub plans: BTreeMap<String, fleet_protocol::TenantQuota>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            interval_secs: 300,
            soft_percent: 80,
            grace_secs: 24 * 3600,
            plans: BTreeMap::new(),
        }
    }
}

/// Where a region's tenants live: the Turso group (and its primary location).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionGroup {
    /// Database group of the region.
    pub group: String,
    /// The group's primary location (Turso region code), for the record.
    #[serde(default)]
    pub primary_location: String,
}

/// Tenant provisioning settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionerConfig {
    /// Data residency: each TenantRegion (`us-east`, `eu-west`, …) → its group. A request for a
    /// region not listed fails permanently (its data would have nowhere lawful to live).
    pub regions: BTreeMap<String, RegionGroup>,
    /// Lifecycle hooks (upstream `TenantDatabaseLifecycle`, camelCase keys).
    pub lifecycle: fleet_protocol::TenantDatabaseLifecycle,
    /// Lifetime of a tenant's database token in days (0 = never expires).
    pub token_expiration_days: u64,
    /// Folder of the backups taken before deletion (local backend).
    pub backup_dir: PathBuf,
    /// How long a worker holds a tenant's provisioning lease (renewed per step), in seconds; a
    /// crashed worker's tenant waits at most this long for another.
    pub lease_secs: u64,
    /// Chaos testing only: a pause inside every provisioning step, in milliseconds, so a test
    /// can kill the worker in the middle of one. 0 (the default) in production.
    pub step_delay_ms: u64,
    /// A provisioning step that took at least this long, in milliseconds, is written to the
    /// tenant's record (with its progress entry) as soon as it ends: it shows while the next
    /// one runs, and a crash does not redo it. Quicker steps are written together with the
    /// next write (at the latest the activation), one compare-and-set for all, each with its
    /// own progress entry; a crash redoes them.
    pub checkpoint_step_after_ms: u64,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        Self {
            regions: BTreeMap::new(),
            lifecycle: fleet_protocol::TenantDatabaseLifecycle::default(),
            token_expiration_days: 0,
            backup_dir: PathBuf::from(".fleet/data/backups"),
            lease_secs: 15,
            step_delay_ms: 0,
            checkpoint_step_after_ms: 250,
        }
    }
}

/// NATS connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL.
    pub url: String,
    /// Prefix of every subject; empty for none.
    pub subject_prefix: String,
    /// Connection timeout in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long a delivered message may stay unacknowledged (renewed while a job runs) before it
    /// is redelivered — how soon a crashed worker's work moves on — in milliseconds.
    pub ack_wait_ms: u64,
    /// Unacknowledged deliveries at most per consumer, across all its replicas.
    pub max_ack_pending: u32,
    /// Replicas of streams and buckets (1 for one server, 3 in a production cluster).
    pub replicas: usize,
    /// How the fleet proves who it is to the server (`[nats.auth]`; none by default).
    pub auth: NatsAuthConfig,
    /// TLS to the server (`[nats.tls]`; off by default, on for `tls://` URLs).
    pub tls: NatsTlsConfig,
}

impl NatsConfig {
    /// `url` fit to show (logs, errors, `fleetctl config`): a password or token given in a
    /// server's URL (`nats://user:password@host:4222`) replaced by `<redacted>`; every server of
    /// a comma-separated list treated alike.
    pub fn display_url(url: &str) -> String {
        url.split(',')
            .map(|server| {
                let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
                match rest.rsplit_once('@') {
                    Some((userinfo, host)) => {
                        let user = match userinfo.split_once(':') {
                            Some((user, _)) => format!("{user}:<redacted>"),
                            None => "<redacted>".to_owned(),
                        };
                        let sep = if scheme.is_empty() { "" } else { "://" };
                        format!("{scheme}{sep}{user}@{host}")
                    }
                    None => server.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: String::new(),
            connect_timeout_ms: 5000,
            ack_wait_ms: 30_000,
            max_ack_pending: 1000,
            replicas: 1,
            auth: NatsAuthConfig::default(),
            tls: NatsTlsConfig::default(),
        }
    }
}

/// How every fleet process authenticates to NATS: at most one of the server's client
/// authentication methods (nats-server's `authorization` block or its decentralized JWT
/// accounts). Empty strings mean "not set"; with none set the client connects anonymously.
///
/// - `credentials_file`: a `.creds` file (user JWT and NKey seed, as `nsc` writes it) — the
///   decentralized (operator/account JWT) setup;
/// - `nkey_seed_file`: a file holding a user NKey seed (`SU…`), for `authorization { users =
///   [{ nkey: "U…" }] }`;
/// - `user` with `password`;
/// - `token`.
///
/// `password` and `token` are secrets: set them through the environment
/// (`FLEET_NATS__AUTH__PASSWORD`, `FLEET_NATS__AUTH__TOKEN`), never in a committed file; they are
/// redacted from [`Config::redacted`] and from `Debug`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsAuthConfig {
    /// Path of a NATS credentials (`.creds`) file.
    pub credentials_file: String,
    /// Path of a file holding a user NKey seed.
    pub nkey_seed_file: String,
    /// User name (with `password`).
    pub user: String,
    /// Password of `user`.
    pub password: String,
    /// Authentication token.
    pub token: String,
}

impl NatsAuthConfig {
    /// The methods set, by their setting's name (`user` and `password` count as one).
    pub fn methods(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if !self.credentials_file.is_empty() {
            set.push("credentials_file");
        }
        if !self.nkey_seed_file.is_empty() {
            set.push("nkey_seed_file");
        }
        if !self.user.is_empty() || !self.password.is_empty() {
            set.push("user/password");
        }
        if !self.token.is_empty() {
            set.push("token");
        }
        set
    }
}

impl fmt::Debug for NatsAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("NatsAuthConfig")
            .field("credentials_file", &self.credentials_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .finish()
    }
}

/// TLS between every fleet process and NATS (nats-server's `tls` block). Paths are PEM files;
/// empty strings mean "not set".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// Refuse a connection that is not TLS (implied by a `tls://` URL and by any file below).
    pub required: bool,
    /// CA certificates the server's certificate must chain to, instead of the system's roots.
    pub ca_file: String,
    /// Client certificate (chain) for servers that verify clients (`verify: true`), with
    /// `key_file`.
    pub cert_file: String,
    /// Private key of `cert_file`.
    pub key_file: String,
    /// TLS handshake before the server's greeting, for servers set to `handshake_first`.
    pub handshake_first: bool,
}

impl NatsTlsConfig {
    /// Whether the connection must be TLS: required, handshake first, or a file given.
    pub fn enabled(&self) -> bool {
        self.required
            || self.handshake_first
            || !self.ca_file.is_empty()
            || !self.cert_file.is_empty()
    }
}

/// Which tenant database backend to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// One libSQL file per tenant (embedded default).
    #[default]
    Local,
    /// Turso Cloud through the Platform API.
    Turso,
    /// In-memory databases.
    Memory,
}

/// Tenant database settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDbConfig {
    /// Which backend holds the tenant databases (`local`, `turso` or `memory`).
    pub backend: BackendKind,
    /// Folder of the local backend.
    pub data_dir: PathBuf,
    /// Connection URL template with `{tenant_id}`.
    pub url_template: String,
    /// Prefix of every tenant database's name (`{prefix}{tenant_id}`).
    pub database_prefix: String,
    /// Turso Cloud settings (the `turso` backend).
    pub turso: TursoConfig,
}

impl Default for TenantDbConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Local,
            data_dir: PathBuf::from(".fleet/data/tenants"),
            url_template: "file:.fleet/data/tenants/{tenant_id}.db".into(),
            database_prefix: String::new(),
            turso: TursoConfig::default(),
        }
    }
}

/// Turso Platform API settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TursoConfig {
    /// API base URL.
    pub api_url: String,
    /// Organisation slug.
    pub organization: String,
    /// Platform API token (secret: set it through the environment).
    pub api_token: String,
    /// Group of new databases when the region map names none.
    pub default_group: String,
    /// Timeout of one API request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Retries of a transient failure (429, 5xx, timeout, dropped connection); its longest
    /// delay is also the longest `Retry-After` honoured.
    pub retry: RetryPolicy,
    /// Client-side limit of API calls per second.
    pub rate_limit_per_second: u32,
}

/// How a secret setting prints: empty when unset, `<redacted>` otherwise.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

impl fmt::Debug for TursoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TursoConfig")
            .field("api_url", &self.api_url)
            .field("organization", &self.organization)
            .field("api_token", &redacted(&self.api_token))
            .field("default_group", &self.default_group)
            .finish_non_exhaustive()
    }
}

impl Default for TursoConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.turso.tech".into(),
            organization: String::new(),
            api_token: String::new(),
            default_group: "default".into(),
            request_timeout_ms: 10_000,
            retry: RetryPolicy::turso_default(),
            rate_limit_per_second: 20,
        }
    }
}

/// Tenant router settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// `header`, `subdomain`, `path`, `token` or `lookup`.
    pub strategy: TenantResolverStrategy,
    /// Header of the `header` strategy.
    pub header: String,
    /// Path segment index of the `path` strategy.
    pub path_segment: usize,
    /// Claim of the `token` strategy.
    pub token_claim: String,
    /// The `token` strategy's key: the shared secret that signs the bearer tokens (HS256) a
    /// request carries in `Authorization: Bearer …`; a token that does not verify is refused.
    /// Set it from a secret (`FLEET_ROUTER__TOKEN_SECRET`), never in a file.
    #[serde(default)]
    pub token_secret: String,
    /// The `lookup` strategy's map: host name (lowercase, no port) → tenant id.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// Cached tenant databases at most.
    pub max_cached_connections: u64,
    /// Seconds a cached database stays before it is reopened.
    pub connection_cache_ttl_secs: u64,
}

impl fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterConfig")
            .field("strategy", &self.strategy)
            .field("header", &self.header)
            .field("path_segment", &self.path_segment)
            .field("token_claim", &self.token_claim)
            .field("token_secret", &redacted(&self.token_secret))
            .field("hosts", &self.hosts)
            .field("max_cached_connections", &self.max_cached_connections)
            .field("connection_cache_ttl_secs", &self.connection_cache_ttl_secs)
            .finish()
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            strategy: TenantResolverStrategy::Header,
            header: "X-Tenant-ID".into(),
            path_segment: 1,
            token_claim: "tenant_id".into(),
            token_secret: String::new(),
            hosts: BTreeMap::new(),
            max_cached_connections: 100,
            connection_cache_ttl_secs: 300,
        }
    }
}

/// Keys that seal connection secrets (base64 of 32 random bytes each, by key id).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Id of the key that seals new secrets.
    pub active_key: String,
    /// Every key still able to open secrets, by id.
    pub keys: BTreeMap<String, String>,
}

impl fmt::Debug for SecretsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsConfig")
            .field("active_key", &self.active_key)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a key of the ring (`secrets.keys`) is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// The id is not 1–32 of `[A-Za-z0-9_-]` (it is stored beside every sealed token).
    Id,
    /// The value is not base64.
    NotBase64,
    /// The value decodes to this many bytes instead of 32.
    Length(usize),
}

/// The 32 bytes of key `id` of the ring from its base64 `encoded` form (surrounding blanks
/// ignored): the one check of a key, for [`Config::validate`] and for the key ring that uses
/// it (`fleet_tenantdb::KeyRing`).
pub fn decode_key(id: &str, encoded: &str) -> Result<[u8; 32], KeyProblem> {
    use base64::Engine as _;
    let valid_id = !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_id {
        return Err(KeyProblem::Id);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| KeyProblem::NotBase64)?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| KeyProblem::Length(len))
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Telemetry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (RUST_LOG syntax).
    pub log_filter: String,
    /// OTLP/HTTP traces endpoint, the whole URL (`http://collector:4318/v1/traces`); empty
    /// disables trace export.
    pub otlp_endpoint: String,
    /// Share of traces kept when this process starts them, 0.0–1.0 (by trace id, so every
    /// process keeps or drops the same trace). Parent-based: a span whose caller sent a
    /// `traceparent` follows the caller's decision.
    pub trace_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            trace_sample_ratio: 1.0,
        }
    }
}

/// Worker job-loop settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Concurrent messages per worker.
    pub concurrency: u32,
    /// Shutdown grace in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub health_addr: String,
    /// Longest one job may run before it is presumed stuck, in milliseconds.
    pub max_job_duration_ms: u64,
    /// How transient failures are redelivered; `max_attempts` is each consumer's `max_deliver`
    /// (deliveries before a message is dead-lettered).
    pub retry: RetryPolicy,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            shutdown_grace_ms: 30_000,
            health_addr: "127.0.0.1:9464".into(),
            max_job_duration_ms: 600_000,
            retry: RetryPolicy::worker_default(),
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// Folder holding `default.toml` and the environment overlays.
    pub dir: PathBuf,
    /// Name of the overlay (`dev`, `test`, …).
    pub env: String,
}

impl ConfigSource {
    /// From `FLEET_CONFIG_DIR` (default `config`) and `FLEET_ENV` (default `dev`).
    pub fn from_env() -> Self {
        Self {
            dir: std::env::var_os("FLEET_CONFIG_DIR")
                .map_or_else(|| PathBuf::from("config"), PathBuf::from),
            env: std::env::var("FLEET_ENV").unwrap_or_else(|_| "dev".into()),
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (env {})", self.dir.display(), self.env)
    }
}

impl Config {
    /// Loads the chain described in the module docs from `FLEET_CONFIG_DIR`/`FLEET_ENV`.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(&ConfigSource::from_env())
    }

    /// Loads the chain from an explicit source (environment variables still apply).
    pub fn load_from(source: &ConfigSource) -> Result<Self, ConfigError> {
        let config: Config = Self::figment(&source.dir, &source.env)
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn figment(dir: &Path, env: &str) -> Figment {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(dir.join("default.toml")))
            .merge(Toml::file(dir.join(format!("{env}.toml"))))
            // Only `FLEET_SECTION__KEY` variables are settings; FLEET_ENV, FLEET_CONFIG_DIR,
            // FLEET_HOME and the like steer the tooling and are not part of the config.
            .merge(
                Env::prefixed("FLEET_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .merge(Self::raw_secrets())
    }

    /// The credentials given in the environment (secrets, and the NATS user that goes with a
    /// password), exactly as given: figment's `Env` reads a value as TOML-like data (`12345` a
    /// number, `true` a boolean, quotes and surrounding blanks stripped), which a credential
    /// must not be — a user `0012` would not load, and `"fleet\n"` would be trimmed instead of
    /// refused.
    fn raw_secrets() -> Figment {
        const SECRETS: [(&str, &str); 5] = [
            ("FLEET_NATS__AUTH__USER", "nats.auth.user"),
            ("FLEET_NATS__AUTH__PASSWORD", "nats.auth.password"),
            ("FLEET_NATS__AUTH__TOKEN", "nats.auth.token"),
            (
                "FLEET_TENANTDB__TURSO__API_TOKEN",
                "tenantdb.turso.api_token",
            ),
            ("FLEET_ROUTER__TOKEN_SECRET", "router.token_secret"),
        ];
        SECRETS
            .iter()
            .filter_map(|(var, key)| Some((std::env::var(var).ok()?, key)))
            .fold(Figment::new(), |figment, (value, key)| {
                figment.merge(Serialized::default(key, value))
            })
    }

    /// A copy safe to print: secret values (API token, keys) replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        if !copy.tenantdb.turso.api_token.is_empty() {
            copy.tenantdb.turso.api_token = "<redacted>".into();
        }
        for key in copy.secrets.keys.values_mut() {
            *key = "<redacted>".into();
        }
        if !copy.router.token_secret.is_empty() {
            copy.router.token_secret = "<redacted>".into();
        }
        copy.nats.url = NatsConfig::display_url(&copy.nats.url);
        if !copy.nats.auth.password.is_empty() {
            copy.nats.auth.password = "<redacted>".into();
        }
        if !copy.nats.auth.token.is_empty() {
            copy.nats.auth.token = "<redacted>".into();
        }
        copy
    }

    /// Checks every setting; all problems are reported together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let shown_url = NatsConfig::display_url(&self.nats.url);
        // The client does not send credentials given in a URL: they would be ignored, and
        // printed wherever the URL is.
        // Every server of the list (the first with its scheme; the rest may leave it out).
        let servers = || self.nats.url.split(',').map(str::trim);
        if servers()
            .enumerate()
            .any(|(i, server)| match server.split_once("://") {
                Some((scheme, _)) => scheme != "nats" && scheme != "tls",
                None => i == 0,
            })
        {
            problems.push(format!(
                "nats.url: {shown_url:?} must start with nats:// or tls://, and so must each server it lists with a scheme"
            ));
        }
        if servers().any(|server| {
            let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
            rest.contains('@')
        }) {
            problems.push(format!(
                "nats.url: {shown_url:?} carries credentials; set them in [nats.auth] (the password as FLEET_NATS__AUTH__PASSWORD) instead"
            ));
        }
        let prefix = &self.nats.subject_prefix;
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !prefix.is_empty() && !prefix.split('.').all(token_ok) {
            problems.push(format!(
                "nats.subject_prefix: {prefix:?} must be dot-separated tokens of letters, digits, '-' and '_'"
            ));
        }
        let auth = &self.nats.auth;
        let methods = auth.methods();
        if methods.len() > 1 {
            problems.push(format!(
                "nats.auth: set one way to authenticate, not {}",
                methods.join(" and ")
            ));
        }
        if auth.user.is_empty() != auth.password.is_empty() {
            problems.push("nats.auth: user and password go together (set both, or neither)".into());
        }
        // A secret mounted from a file often ends in a newline the server would compare too:
        // the connection is then refused with nothing that says why. The value is not shown.
        for (name, value) in [
            ("user", &auth.user),
            ("password", &auth.password),
            ("token", &auth.token),
        ] {
            if value.trim() != value.as_str() {
                problems.push(format!(
                    "nats.auth.{name}: begins or ends with whitespace (a newline from a secret's file?)"
                ));
            }
        }
        let tls = &self.nats.tls;
        if tls.cert_file.is_empty() != tls.key_file.is_empty() {
            problems
                .push("nats.tls: cert_file and key_file go together (set both, or neither)".into());
        }
        if self.nats.ack_wait_ms < 1000 {
            problems.push("nats.ack_wait_ms: must be at least 1000".into());
        }
        let ratio = self.telemetry.trace_sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            problems.push(format!(
                "telemetry.trace_sample_ratio: {ratio} must be between 0.0 and 1.0"
            ));
        }
        let endpoint = &self.telemetry.otlp_endpoint;
        let http = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !http {
            problems.push(format!(
                "telemetry.otlp_endpoint: {endpoint:?} must be an http:// or https:// URL (OTLP/HTTP)"
            ));
        }
        if self.provisioner.lease_secs.saturating_mul(1000) >= self.nats.ack_wait_ms {
            problems.push(format!(
                "provisioner.lease_secs: {} s must be shorter than nats.ack_wait_ms ({} ms): a message redelivered after its worker crashed must find the crashed worker's lease expired, or every crash costs a second delivery",
                self.provisioner.lease_secs, self.nats.ack_wait_ms
            ));
        }
        problems.extend(self.worker.retry.problems("worker.retry"));
        if self.gateway.max_page_size == 0 {
            problems.push("gateway.max_page_size: must be at least 1".into());
        }
        if self.gateway.max_cached_tenants == 0 {
            problems.push("gateway.max_cached_tenants: must be at least 1".into());
        }
        problems.extend(self.tenantdb.turso.retry.problems("tenantdb.turso.retry"));
        if self.nats.max_ack_pending == 0 {
            problems.push("nats.max_ack_pending: must be at least 1".into());
        }
        if self.nats.connect_timeout_ms == 0 {
            problems.push("nats.connect_timeout_ms: must be at least 1".into());
        }
        if !self.tenantdb.url_template.contains("{tenant_id}") {
            problems.push(format!(
                "tenantdb.url_template: {:?} must contain the {{tenant_id}} placeholder",
                self.tenantdb.url_template
            ));
        }
        if self.tenantdb.backend == BackendKind::Local
            && self.tenantdb.data_dir.as_os_str().is_empty()
        {
            problems.push("tenantdb.data_dir: required by the local backend".into());
        }
        if self.tenantdb.backend == BackendKind::Turso
            && (self.tenantdb.turso.organization.is_empty()
                || self.tenantdb.turso.api_token.is_empty())
        {
            problems.push(
                "tenantdb.turso: organization and api_token are required by the turso backend"
                    .into(),
            );
        }
        if self.tenantdb.turso.rate_limit_per_second == 0 {
            problems.push("tenantdb.turso.rate_limit_per_second: must be at least 1".into());
        }
        // The key ring is checked here, with the rest, so a worker with a mistyped key refuses
        // to start before it connects to anything (and the CLI calls it a configuration error).
        for (id, key) in &self.secrets.keys {
            match decode_key(id, key) {
                Ok(_) => {}
                Err(KeyProblem::Id) => problems.push(format!(
                    "secrets.keys: key id {id:?} must be 1-32 of [A-Za-z0-9_-]"
                )),
                Err(KeyProblem::Length(len)) => problems.push(format!(
                    "secrets.keys.{id}: must be 32 bytes (base64), has {len}"
                )),
                Err(KeyProblem::NotBase64) => {
                    problems.push(format!("secrets.keys.{id}: is not base64"))
                }
            }
        }
        if !self.secrets.keys.contains_key(&self.secrets.active_key) {
            problems.push(format!(
                "secrets.active_key: {:?} is not among secrets.keys (set FLEET_SECRETS__KEYS__<ID> and FLEET_SECRETS__ACTIVE_KEY)",
                self.secrets.active_key
            ));
        }
        if self.router.strategy == TenantResolverStrategy::Token
            && self.router.token_secret.len() < 32
        {
            problems.push(
                "router.token_secret: the token strategy needs the key its tokens are signed with (at least 32 bytes; FLEET_ROUTER__TOKEN_SECRET)"
                    .into(),
            );
        }
        for (host, tenant) in &self.router.hosts {
            if fleet_protocol::TenantId::parse(tenant.as_str()).is_err() {
                problems.push(format!(
                    "router.hosts.{host}: {tenant:?} is not a tenant id"
                ));
            }
            if host.chars().any(|c| c.is_ascii_uppercase() || c == ':') {
                problems.push(format!(
                    "router.hosts.{host}: host names are lowercase, without a port"
                ));
            }
        }
        if self.router.max_cached_connections == 0 {
            problems.push("router.max_cached_connections: must be at least 1".into());
        }
        if !(1..=256).contains(&self.deployer.job_tenants) {
            problems.push(format!(
                "deployer.job_tenants: {} is not within 1-256",
                self.deployer.job_tenants
            ));
        }
        if self.worker.concurrency == 0 {
            problems.push("worker.concurrency: must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
// figment's Jail API returns its (large) error type; that is not ours to box.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    const KEYS: &str = "[secrets]\nactive_key = \"k\"\nkeys = { k = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\" }\n";

    #[test]
    fn redacted_hides_every_secret_value() {
        let mut config = Config::default();
        config.tenantdb.turso.api_token = "api-secret".into();
        config.secrets.keys.insert("k".into(), "key-secret".into());
        config.router.token_secret = "router-secret-router-secret-router-secret".into();
        let shown = format!(
            "{:?} {}",
            config.redacted(),
            serde_json::to_string(&config.redacted()).unwrap()
        );
        assert!(
            !shown.contains("api-secret")
                && !shown.contains("key-secret")
                && !shown.contains("router-secret"),
            "{shown}"
        );
        assert!(!format!("{config:?}").contains("key-secret"));
        assert!(!format!("{config:?}").contains("router-secret"));
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn chain_order_is_defaults_file_overlay_env() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            write(
                &dir,
                "default.toml",
                "[nats]\nurl = \"nats://a:1\"\nsubject_prefix = \"x\"\n",
            );
            write(
                &dir,
                "staging.toml",
                &format!("[nats]\nsubject_prefix = \"staging\"\n[worker]\nconcurrency = 3\n{KEYS}"),
            );
            jail.set_env("FLEET_WORKER__CONCURRENCY", "7");
            jail.set_env("FLEET_ENV", "staging");
            let config = Config::load_from(&ConfigSource {
                dir,
                env: "staging".into(),
            })
            .unwrap();
            assert_eq!(config.nats.url, "nats://a:1");
            assert_eq!(config.nats.subject_prefix, "staging");
            assert_eq!(config.worker.concurrency, 7);
            assert_eq!(config.telemetry, TelemetryConfig::default());
            Ok(())
        });
    }

    #[test]
    fn every_problem_is_reported() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            write(
                &dir,
                "default.toml",
                "[nats]\nurl = \"http://x\"\nsubject_prefix = \"a..b\"\n[tenantdb]\nurl_template = \"file:x.db\"\n[worker]\nconcurrency = 0\n[secrets]\nactive_key = \"missing\"\n[telemetry]\ntrace_sample_ratio = 1.5\notlp_endpoint = \"collector:4317\"\n",
            );
            let err = Config::load_from(&ConfigSource {
                dir,
                env: "none".into(),
            })
            .unwrap_err();
            let ConfigError::Invalid(problems) = err else {
                panic!("{err}")
            };
            assert_eq!(problems.len(), 7, "{problems:#?}");
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("telemetry.trace_sample_ratio: 1.5"))
                    && problems
                        .iter()
                        .any(|p| p.starts_with("telemetry.otlp_endpoint:")),
                "{problems:#?}"
            );
            Ok(())
        });
    }

    /// The defaults with a ring of one valid key (`k`, all zeros), which is all they lack.
    fn with_one_key() -> Config {
        let mut config = Config::default();
        config.secrets.active_key = "k".into();
        config.secrets.keys.insert(
            "k".into(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        );
        config
    }

    #[test]
    fn every_key_of_the_ring_is_checked_without_showing_it() {
        let mut config = with_one_key();
        config.validate().unwrap();
        config
            .secrets
            .keys
            .insert("short".into(), "c2hvcnQtc2VjcmV0".into());
        config
            .secrets
            .keys
            .insert("typo".into(), "!!!notb64".into());
        config.secrets.keys.insert("bad id".into(), "x".into());
        let ConfigError::Invalid(problems) = config.validate().unwrap_err() else {
            panic!("invalid")
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let text = problems.join("\n");
        assert!(text.contains("secrets.keys.short: must be 32 bytes (base64), has 12"));
        assert!(text.contains("secrets.keys.typo: is not base64"));
        assert!(text.contains("key id \"bad id\""));
        assert!(
            !text.contains("notb64") && !text.contains("c2hvcnQ"),
            "{text}"
        );
    }

    #[test]
    fn nats_auth_and_tls_are_checked_together_and_never_shown() {
        let mut config = with_one_key();
        config.nats.auth.user = "fleet".into();
        config.nats.auth.password = "nats-pass-secret".into();
        config.nats.tls.ca_file = "/etc/nats/ca.pem".into();
        config.validate().unwrap();
        assert!(config.nats.tls.enabled());
        let shown = format!(
            "{config:?} {:?} {}",
            config.redacted(),
            serde_json::to_string(&config.redacted()).unwrap()
        );
        assert!(!shown.contains("nats-pass-secret"), "{shown}");
        assert!(shown.contains("fleet"), "{shown}");
        config.nats.auth.token = "nats-token-secret".into();
        assert!(!format!("{config:?}").contains("nats-token-secret"));
        config.nats.auth.password.clear();
        config.nats.tls.cert_file = "/etc/nats/client.pem".into();
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("accepted")
        };
        assert_eq!(
            problems,
            [
                "nats.auth: set one way to authenticate, not user/password and token",
                "nats.auth: user and password go together (set both, or neither)",
                "nats.tls: cert_file and key_file go together (set both, or neither)",
            ],
        );
        let text = problems.join("\n");
        assert!(!text.contains("nats-token-secret"), "{text}");
        // Whitespace around a secret (a newline from a mounted file) is named, never shown.
        config.nats.auth = NatsAuthConfig {
            user: "fleet".into(),
            password: "nats-pass-secret\n".into(),
            ..NatsAuthConfig::default()
        };
        config.nats.tls.cert_file.clear();
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("accepted")
        };
        assert_eq!(
            problems,
            [
                "nats.auth.password: begins or ends with whitespace (a newline from a secret's file?)"
            ]
        );
        config.nats.auth.password = "   ".into();
        config.nats.auth.user = " fleet".into();
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("accepted")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(!problems.join("\n").contains("nats-pass-secret"));
    }

    #[test]
    fn a_password_in_the_nats_url_is_not_shown() {
        assert_eq!(
            NatsConfig::display_url("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            NatsConfig::display_url("nats://fleet:s3cret@a:4222, tls://t0ken@b:4222,nats://c:4222"),
            "nats://fleet:<redacted>@a:4222, tls://<redacted>@b:4222,nats://c:4222"
        );
        let mut config = with_one_key();
        // Behind another server, without a scheme: refused all the same.
        config.nats.url = "nats://b:4222,fleet:s3cret@a:4222".into();
        assert!(config.validate().is_err());
        config.nats.url = "nats://fleet:s3cret@a:4222".into();
        let shown = serde_json::to_string(&config.redacted()).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        // Refused: the client would not send them.
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("accepted")
        };
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].contains("carries credentials; set them in [nats.auth]")
                && !problems[0].contains("s3cret"),
            "{problems:#?}"
        );
    }

    #[test]
    fn nats_secrets_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            write(
                &dir,
                "default.toml",
                &format!("[nats.auth]\nuser = \"fleet\"\n[nats.tls]\nrequired = true\n{KEYS}"),
            );
            // As given: not a number, quotes and blanks kept.
            jail.set_env("FLEET_NATS__AUTH__PASSWORD", "0012345678901234");
            jail.set_env("FLEET_ROUTER__TOKEN_SECRET", " \"true\" ");
            jail.set_env("FLEET_NATS__TLS__CA_FILE", "/run/ca.pem");
            let config = Config::load_from(&ConfigSource {
                dir,
                env: "none".into(),
            })
            .unwrap();
            assert_eq!(config.nats.auth.user, "fleet");
            assert_eq!(config.nats.auth.password, "0012345678901234");
            assert_eq!(config.router.token_secret, " \"true\" ");
            assert!(config.nats.tls.required);
            assert_eq!(config.nats.tls.ca_file, "/run/ca.pem");
            assert_eq!(config.nats.url, NatsConfig::default().url);
            // The user too: not a number; and a newline left in a credential is refused, not
            // trimmed away.
            jail.set_env("FLEET_NATS__AUTH__USER", "0012");
            let source = ConfigSource {
                dir: jail.directory().to_path_buf(),
                env: "none".into(),
            };
            assert_eq!(Config::load_from(&source).unwrap().nats.auth.user, "0012");
            jail.set_env("FLEET_NATS__AUTH__USER", "fleet\n");
            let Err(error) = Config::load_from(&source) else {
                panic!("a user with a newline was accepted")
            };
            assert!(
                error
                    .to_string()
                    .contains("nats.auth.user: begins or ends with whitespace"),
                "{error}"
            );
            Ok(())
        });
    }

    #[test]
    fn consumer_and_lease_settings_are_checked_together() {
        let mut config = with_one_key();
        config.validate().unwrap();
        config.nats.ack_wait_ms = 10_000;
        config.worker.retry = RetryPolicy::Fixed {
            interval_ms: 10,
            max_attempts: 0,
        };
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("accepted")
        };
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].starts_with(
            "provisioner.lease_secs: 15 s must be shorter than nats.ack_wait_ms (10000 ms)"
        ));
        assert!(problems[1].starts_with("worker.retry.max_attempts"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_path_buf();
            write(&dir, "default.toml", "[nats]\nurll = \"nats://x\"\n");
            let err = Config::load_from(&ConfigSource {
                dir,
                env: "none".into(),
            })
            .unwrap_err();
            assert!(err.to_string().contains("urll"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_shipped_config_files_load_and_validate() {
        // In a jail: another test's FLEET_* variables must not reach this one's chain.
        figment::Jail::expect_with(|_| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
            for env in ["dev", "test"] {
                Config::load_from(&ConfigSource {
                    dir: dir.clone(),
                    env: env.into(),
                })
                .unwrap();
            }
            Ok(())
        });
    }
}
