//! Typed configuration: defaults → TOML file → `TALLY_*` environment → validate.
//!
//! Every key of the file can be set from the environment by its path joined with `_`
//! and upper-cased: `queue.fsync` is `TALLY_QUEUE_FSYNC`, `data_dir` is
//! `TALLY_DATA_DIR`. Unknown keys, in the file or the environment, are errors, so a typo
//! never silently falls back to a default. docs/configuration.md lists every field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Folder for the queue, the store and the project file.
    pub data_dir: PathBuf,
    /// Log format: "text" or "json".
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax, e.g. "info" or "tally_server=debug".
    pub log_level: String,
    pub ingest: IngestConfig,
    pub queue: QueueConfig,
    pub writer: WriterConfig,
    pub store: StoreConfig,
    pub query: QueryConfig,
    pub http: HttpConfig,
    /// What this process does: "all" (ingest, writer and query API in one process, the
    /// single-node mode) or one scale-out role: "ingest", "writer" or "query". A role
    /// needs `queue.backend = "redis"` and `store.backend = "clickhouse"`.
    pub role: Role,
    pub redis: RedisConfig,
    pub clickhouse: ClickHouseSection,
    pub auth: AuthConfig,
    pub cache: CacheConfig,
}

/// The query result cache (docs/caching.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Keep and serve query answers: in the single-node mode in this process (L1), in
    /// scale-out also in Redis (L2), shared by every query process.
    pub enabled: bool,
    /// The in-process cache's bound, in bytes of answers kept.
    pub l1_bytes: u64,
    /// The longest an answer whose range reaches now is served after newer data was
    /// stored (a day's range gets all of it, shorter ranges less).
    pub max_staleness_ms: u64,
    /// Scale-out: the Redis that holds L2, the flush log and the leases; empty: the
    /// queue's (`redis.url`).
    pub redis_url: String,
    /// Scale-out: the bound on one L2 call; past it the request goes on without L2.
    pub redis_timeout_ms: u64,
    /// Scale-out: how long an answer is kept in L2 after it was computed.
    pub l2_ttl_s: u64,
    /// After each flush, the warmer computes again at most this many of the most asked
    /// answers the flush touched. 0: no warmer.
    pub warm_keys: usize,
    /// The share of one core's time the warmer may use (it pauses after each
    /// computation for that long over again).
    pub warm_share: f64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            l1_bytes: 256 * 1024 * 1024,
            max_staleness_ms: 60_000,
            redis_url: String::new(),
            redis_timeout_ms: 50,
            l2_ttl_s: 3_600,
            warm_keys: 20,
            warm_share: 0.25,
        }
    }
}

/// Dashboard users' sessions and logins (docs/dashboard.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a dashboard session lasts after its login.
    pub session_ttl_hours: u32,
    /// Login attempts one client address may make per minute (as a burst, refilled
    /// evenly); past them the answer is 429 with Retry-After.
    pub login_attempts_per_ip_per_minute: u32,
    /// Login attempts per minute for one email, from any address.
    pub login_attempts_per_email_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_ttl_hours: 168,
            login_attempts_per_ip_per_minute: 20,
            login_attempts_per_email_per_minute: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    All,
    Ingest,
    Writer,
    Query,
}

impl Role {
    pub fn ingests(self) -> bool {
        matches!(self, Role::All | Role::Ingest)
    }
    pub fn writes(self) -> bool {
        matches!(self, Role::All | Role::Writer)
    }
    pub fn queries(self) -> bool {
        matches!(self, Role::All | Role::Query)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// The embedded write-ahead log in `<data_dir>/wal`.
    Wal,
    /// A Redis stream (see `[redis]`), shared by ingest and writer processes.
    Redis,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Embedded DuckDB in `<data_dir>/tally.duckdb`.
    Duckdb,
    /// A ClickHouse server (see `[clickhouse]`).
    Clickhouse,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`, for `queue.backend = "redis"`.
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// The writers' consumer group.
    pub group: String,
    /// This writer's name in the group: unique per writer process and the same after
    /// its restart. Empty: the host name.
    pub consumer: String,
    /// Appends are refused (503) once the stream holds this many entries.
    pub max_len: u64,
    /// Entries another writer has held this long without acknowledging are taken over.
    pub claim_idle_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSection {
    /// The HTTP interface, e.g. "http://127.0.0.1:8123", for `store.backend = "clickhouse"`.
    pub url: String,
    /// Created if missing.
    pub database: String,
    /// Empty: ClickHouse's default user without a password.
    pub user: String,
    pub password: String,
    /// Extra attempts after a transient failure, per request.
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one, at most 30 s.
    pub backoff_ms: u64,
    /// When queries read the `events_hourly` rollup instead of the events.
    pub rollups: RollupsSetting,
    /// Empty: one server. Else a cluster of the servers' `remote_servers`: the schema is
    /// created ON CLUSTER, replicated tables behind Distributed ones.
    pub cluster: String,
}

/// `clickhouse.rollups`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RollupsSetting {
    /// Where the server drops a replayed insert (22.2 and later).
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest accepted request body, in bytes (ThriveStack: 2 MB).
    pub max_body_bytes: usize,
    /// Most events in one request (ThriveStack: 1000).
    pub max_events_per_request: usize,
    /// Deepest nesting of objects/arrays inside one event.
    pub max_depth: usize,
    /// Timestamps further than this in the future are clamped to the time received.
    pub max_future_skew_secs: i64,
    /// Most bytes a compressed (gzip) PostHog body may inflate to; beyond it → 413.
    pub max_decompressed_bytes: usize,
    /// Hours an event id (Segment messageId, PostHog uuid) is remembered so a retried
    /// request is stored once; 0 turns deduplication off.
    pub dedup_window_hours: u32,
    /// Most ids remembered (10–20 bytes each); when reached, the oldest hour is
    /// forgotten early.
    pub dedup_max_ids: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// "wal" (embedded, the default) or "redis" (scale-out; see `[redis]`). The settings
    /// below are the WAL's.
    pub backend: QueueBackend,
    /// When appends are fsynced: "always" (ack after fsync, group commit), "interval"
    /// (fsync every `fsync_interval_ms`; a crash may lose that much acked data) or
    /// "never" (leave it to the OS).
    pub fsync: FsyncMode,
    /// Period of the background fsync when `fsync = "interval"`.
    pub fsync_interval_ms: u64,
    /// Size at which the WAL starts a new segment file.
    pub segment_bytes: u64,
    /// Bytes the queue may hold that the store has not committed; beyond it ingest
    /// answers 503 with Retry-After.
    pub max_pending_bytes: u64,
    /// Free space the data volume keeps for the store's own commits and checkpoints:
    /// below it, ingest answers 503 `disk_full` with Retry-After (embedded mode).
    pub min_free_bytes: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Most queue records (requests) the writer inserts in one transaction.
    pub batch_max_records: usize,
    /// Most payload bytes in one batch.
    pub batch_max_bytes: usize,
    /// How long the writer waits for more records before inserting a partial batch.
    pub batch_max_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// "duckdb" (embedded, the default) or "clickhouse" (scale-out; see `[clickhouse]`).
    /// The settings below are DuckDB's.
    pub backend: StoreBackend,
    /// DuckDB memory limit, e.g. "2GB".
    pub memory_limit: String,
    /// Threads DuckDB may use per query.
    pub threads: u32,
    /// How large DuckDB's own log may grow before it is checkpointed into the file.
    pub checkpoint_threshold: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// One query request's time budget: its wait for a turn and all its statements
    /// together. Past it the running statement is interrupted and the answer is 503.
    pub timeout_ms: u64,
    /// Queries that run on the store at once (each uses `store.threads` threads).
    pub max_concurrent: usize,
    /// Queries that may wait for a turn; one more is refused at once with 503 and
    /// `Retry-After`.
    pub max_queued: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Origins allowed by CORS; ["*"] allows any (browser SDKs run on customers' sites).
    pub cors_origins: Vec<String>,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace_ms: u64,
    /// After the shutdown signal, how long to keep serving while `/readyz` answers 503,
    /// so a load balancer's health check takes the process out of rotation before it
    /// stops accepting (0: stop accepting at once).
    pub unready_delay_ms: u64,
    /// A connection must send a whole request head (request line and headers) within
    /// this long: slow or silent clients do not hold sockets. (Idle keep-alive
    /// connections between requests are not reliably bounded by it.)
    pub header_read_timeout_ms: u64,
    /// A request body must arrive whole within this long (408 otherwise).
    pub body_read_timeout_ms: u64,
    /// Open connections at most; one more is closed at once. Lowered at start to fit
    /// the process's open-file limit (raised to its hard limit first).
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("valid address"),
            data_dir: PathBuf::from("data"),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            ingest: IngestConfig::default(),
            queue: QueueConfig::default(),
            writer: WriterConfig::default(),
            store: StoreConfig::default(),
            query: QueryConfig::default(),
            http: HttpConfig::default(),
            role: Role::All,
            redis: RedisConfig::default(),
            clickhouse: ClickHouseSection::default(),
            auth: AuthConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            stream: "tally:events".into(),
            group: "tally-writers".into(),
            consumer: String::new(),
            max_len: 10_000_000,
            claim_idle_ms: 60_000,
        }
    }
}

impl Default for ClickHouseSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            database: "tally".into(),
            user: String::new(),
            password: String::new(),
            retries: 5,
            backoff_ms: 200,
            rollups: RollupsSetting::Auto,
            cluster: String::new(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_events_per_request: 1000,
            max_depth: 16,
            max_future_skew_secs: 23 * 3600,
            max_decompressed_bytes: 20 * 1024 * 1024,
            dedup_window_hours: 24,
            dedup_max_ids: 5_000_000,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Wal,
            fsync: FsyncMode::Always,
            fsync_interval_ms: 100,
            segment_bytes: 64 * 1024 * 1024,
            max_pending_bytes: 1024 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            batch_max_records: 10_000,
            batch_max_bytes: 32 * 1024 * 1024,
            batch_max_wait_ms: 100,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Duckdb,
            memory_limit: "2GB".into(),
            threads: 2,
            checkpoint_threshold: "16MB".into(),
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 30_000,
            max_concurrent: 4,
            max_queued: 16,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: vec!["*".into()],
            shutdown_grace_ms: 10_000,
            unready_delay_ms: 0,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_connections: 10_000,
        }
    }
}

/// Variables that configure the command line, not the file.
const NOT_CONFIG_VARS: &[&str] = &["TALLY_CONFIG", "TALLY_LOG", "TALLY_BIN", "TALLY_URL"];

impl Config {
    /// Loads the file at `path` (if any), applies `TALLY_*` variables from `env`, and
    /// validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Parse {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(environment)".into()),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.into(),
            })
        };
        if self.ingest.max_body_bytes < 1024 {
            return invalid("ingest.max_body_bytes", "must be at least 1024");
        }
        if self.ingest.max_events_per_request == 0 {
            return invalid("ingest.max_events_per_request", "must be at least 1");
        }
        if !(1..=tally_ingest::Limits::MAX_DEPTH).contains(&self.ingest.max_depth) {
            return invalid("ingest.max_depth", "must be 1 to 100");
        }
        if self.queue.segment_bytes < 64 * 1024 {
            return invalid("queue.segment_bytes", "must be at least 65536");
        }
        if self.queue.max_pending_bytes < self.ingest.max_body_bytes as u64 * 2 {
            return invalid(
                "queue.max_pending_bytes",
                "must be at least twice ingest.max_body_bytes",
            );
        }
        if self.queue.fsync == FsyncMode::Interval && self.queue.fsync_interval_ms == 0 {
            return invalid(
                "queue.fsync_interval_ms",
                "must be > 0 with fsync = \"interval\"",
            );
        }
        if self.writer.batch_max_records == 0 || self.writer.batch_max_bytes == 0 {
            return invalid("writer.batch_max_records", "batch limits must be > 0");
        }
        if self.store.threads == 0 {
            return invalid("store.threads", "must be at least 1");
        }
        if self.http.header_read_timeout_ms == 0 || self.http.body_read_timeout_ms == 0 {
            return invalid("http.header_read_timeout_ms", "http timeouts must be > 0");
        }
        if self.http.max_connections == 0 {
            return invalid("http.max_connections", "must be > 0");
        }
        if self.query.max_concurrent == 0 {
            return invalid("query.max_concurrent", "must be > 0");
        }
        if self.query.timeout_ms == 0 {
            return invalid("query.timeout_ms", "must be > 0");
        }
        if !(self.cache.warm_share > 0.0 && self.cache.warm_share <= 1.0) {
            return invalid("cache.warm_share", "must be more than 0 and at most 1");
        }
        if self.queue.backend == QueueBackend::Redis && self.redis.url.is_empty() {
            return invalid("redis.url", "must be set with queue.backend = \"redis\"");
        }
        if self.store.backend == StoreBackend::Clickhouse && self.clickhouse.url.is_empty() {
            return invalid(
                "clickhouse.url",
                "must be set with store.backend = \"clickhouse\"",
            );
        }
        if self.queue.backend == QueueBackend::Redis && self.store.backend == StoreBackend::Duckdb {
            return invalid(
                "queue.backend",
                "\"redis\" is for separate writer processes, which DuckDB (one process's file) cannot serve: use store.backend = \"clickhouse\"",
            );
        }
        if self.queue.backend == QueueBackend::Wal && self.store.backend == StoreBackend::Clickhouse
        {
            return invalid(
                "store.backend",
                "\"clickhouse\" goes with queue.backend = \"redis\" (the scale-out mode); the WAL feeds the embedded DuckDB store",
            );
        }
        if self.role != Role::All
            && (self.queue.backend != QueueBackend::Redis
                || self.store.backend != StoreBackend::Clickhouse)
        {
            return invalid(
                "role",
                "a scale-out role needs queue.backend = \"redis\" and store.backend = \"clickhouse\" (processes share only those)",
            );
        }
        if self.auth.session_ttl_hours == 0 {
            return invalid("auth.session_ttl_hours", "must be > 0");
        }
        if self.auth.login_attempts_per_ip_per_minute == 0
            || self.auth.login_attempts_per_email_per_minute == 0
        {
            return invalid(
                "auth.login_attempts_per_ip_per_minute",
                "login rate limits must be > 0",
            );
        }
        if self.redis.claim_idle_ms == 0 || self.redis.max_len == 0 {
            return invalid("redis.claim_idle_ms", "redis limits must be > 0");
        }
        if self
            .http
            .cors_origins
            .iter()
            .any(|o| o != "*" && !o.starts_with("http"))
        {
            return invalid(
                "http.cors_origins",
                "each origin is \"*\" or like \"https://app.example.com\"",
            );
        }
        Ok(())
    }
}

/// Every leaf key path of the default config, e.g. `["queue", "fsync"]`.
fn key_paths() -> Vec<Vec<String>> {
    fn walk(prefix: &mut Vec<String>, value: &toml::Value, out: &mut Vec<Vec<String>>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    prefix.push(k.clone());
                    walk(prefix, v, out);
                    prefix.pop();
                }
            }
            _ => out.push(prefix.clone()),
        }
    }
    let defaults = toml::Value::try_from(Config::default()).expect("config serializes");
    let mut out = Vec::new();
    walk(&mut Vec::new(), &defaults, &mut out);
    out
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let paths: BTreeMap<String, Vec<String>> = key_paths()
        .into_iter()
        .map(|p| (format!("TALLY_{}", p.join("_").to_uppercase()), p))
        .collect();
    for (var, raw) in env {
        if !var.starts_with("TALLY_") || NOT_CONFIG_VARS.contains(&var.as_str()) {
            continue;
        }
        let Some(path) = paths.get(&var) else {
            match unknown_var(&var, paths.keys()) {
                Unknown::ServiceLink => {}
                Unknown::Typo(setting) => {
                    return Err(ConfigError::Env {
                        var: var.clone(),
                        message: format!(
                            "not a tally setting; did you mean {setting}? (see docs/configuration.md)"
                        ),
                    })
                }
                Unknown::Other => eprintln!(
                    "tally: warning: ignoring {var}: not a tally setting (see docs/configuration.md)"
                ),
            }
            continue;
        };
        // A value is read as TOML (numbers, booleans, arrays), else taken as a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let mut node = &mut *table;
        for key in &path[..path.len() - 1] {
            let entry = node
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: format!("the file sets {key} to a value, not a section"),
            })?;
        }
        node.insert(path[path.len() - 1].clone(), value);
    }
    Ok(())
}

/// What an unknown `TALLY_*` variable is taken for.
#[derive(Debug, PartialEq, Eq)]
enum Unknown<'a> {
    /// One Kubernetes sets for every Service in the namespace (a Service named
    /// `tally-ingest` gives `TALLY_INGEST_SERVICE_HOST`, `TALLY_INGEST_PORT_8080_TCP`...):
    /// ignored, or every pod of a namespace with such a Service would crash-loop.
    ServiceLink,
    /// Within two edits of a real setting: a typo, which would otherwise leave the
    /// setting at its default without a word, so start-up stops and names the setting.
    Typo(&'a str),
    /// Anything else (another tool's variable, a setting from a newer release): a
    /// warning, and start-up goes on.
    Other,
}

fn unknown_var<'a>(var: &str, settings: impl Iterator<Item = &'a String>) -> Unknown<'a> {
    if is_service_link(var) {
        return Unknown::ServiceLink;
    }
    settings
        .map(|s| (strsim::levenshtein(var, s), s))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map_or(Unknown::Other, |(_, s)| Unknown::Typo(s))
}

/// The shapes of Kubernetes' service-link variables: `<SVC>_SERVICE_HOST`,
/// `<SVC>_SERVICE_PORT`, `<SVC>_SERVICE_PORT_<PORTNAME>`, `<SVC>_PORT`, and
/// `<SVC>_PORT_<n>_<PROTO>` with `_PROTO`, `_PORT` or `_ADDR` after it.
fn is_service_link(var: &str) -> bool {
    if var.ends_with("_SERVICE_HOST") || var.ends_with("_SERVICE_PORT") {
        return true;
    }
    if var.contains("_SERVICE_PORT_") {
        return true;
    }
    let parts: Vec<&str> = var.split('_').collect();
    // `<SVC>_PORT`: its value is a URL like tcp://10.0.0.1:8080; the name alone is
    // enough, as no setting ends in `_PORT`.
    if parts.last() == Some(&"PORT") {
        return true;
    }
    // `<SVC>_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]`
    parts.windows(3).any(|w| {
        w[0] == "PORT"
            && !w[1].is_empty()
            && w[1].bytes().all(|b| b.is_ascii_digit())
            && matches!(w[2], "TCP" | "UDP" | "SCTP")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_fsync_always() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.queue.fsync, FsyncMode::Always);
    }

    #[test]
    fn file_then_env_override_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, "data_dir = \"/srv/a\"\n[queue]\nfsync = \"never\"\n").unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("TALLY_QUEUE_FSYNC", "interval"),
                ("TALLY_WRITER_BATCH_MAX_WAIT_MS", "50"),
                ("TALLY_LISTEN", "127.0.0.1:9999"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(c.queue.fsync, FsyncMode::Interval);
        assert_eq!(c.writer.batch_max_wait_ms, 50);
        assert_eq!(c.listen, "127.0.0.1:9999".parse().unwrap());
    }

    #[test]
    fn unknown_keys_are_rejected_in_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.toml");
        std::fs::write(&path, "[queue]\nfsynk = \"never\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("fsynk"), "{err}");
        let err = Config::load(None, env(&[("TALLY_QUEUE_FSYNK", "never")])).unwrap_err();
        assert!(err.to_string().contains("TALLY_QUEUE_FSYNK"), "{err}");
        assert!(
            err.to_string().contains("did you mean TALLY_QUEUE_FSYNC"),
            "{err}"
        );
    }

    #[test]
    fn kubernetes_service_links_and_unrelated_names_do_not_stop_tally() {
        // What a pod gets for Services named tally-ingest, tally-query and tally.
        let pod = env(&[
            ("TALLY_INGEST_SERVICE_HOST", "10.96.0.12"),
            ("TALLY_INGEST_SERVICE_PORT", "8080"),
            ("TALLY_INGEST_SERVICE_PORT_HTTP", "8080"),
            ("TALLY_INGEST_PORT", "tcp://10.96.0.12:8080"),
            ("TALLY_INGEST_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("TALLY_INGEST_PORT_8080_TCP_PROTO", "tcp"),
            ("TALLY_INGEST_PORT_8080_TCP_PORT", "8080"),
            ("TALLY_INGEST_PORT_8080_TCP_ADDR", "10.96.0.12"),
            ("TALLY_QUERY_SERVICE_HOST", "10.96.0.13"),
            ("TALLY_QUERY_PORT_9090_UDP", "udp://10.96.0.13:9090"),
            ("TALLY_SERVICE_HOST", "10.96.0.14"),
            ("TALLY_PORT", "tcp://10.96.0.14:8080"),
            ("TALLY_VERSION", "0.1.0"),
            ("TALLY_QUEUE_FSYNC", "interval"),
        ]);
        let c = Config::load(None, pod).unwrap();
        assert_eq!(
            c.queue.fsync,
            FsyncMode::Interval,
            "real settings still apply"
        );
        // No real setting has a service-link shape, so none can be skipped by mistake.
        for path in key_paths() {
            let var = format!("TALLY_{}", path.join("_").to_uppercase());
            assert!(!is_service_link(&var), "{var}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::load(None, env(&[("TALLY_QUEUE_FSYNC", "sometimes")])).unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
        let err = Config::load(None, env(&[("TALLY_INGEST_MAX_DEPTH", "0")])).unwrap_err();
        assert!(err.to_string().contains("ingest.max_depth"), "{err}");
    }
}
