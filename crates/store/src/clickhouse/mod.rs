//! ClickHouse over its HTTP interface: the store of the scale-out mode.
//!
//! - **Whole batches.** [`Store::insert`] sends a batch's events as one
//!   `INSERT ... FORMAT JSONEachRow` request, gzip-compressed, never row by row; people,
//!   accounts, memberships and identity links follow as one insert per table.
//! - **Retries.** Connection failures, timeouts and the server errors that mean "try
//!   later" (too many parts, too many queries, memory limit, network and timeout errors)
//!   are retried with exponential backoff ([`ClickHouseConfig::retries`],
//!   [`ClickHouseConfig::backoff`]); anything else (a syntax error, an unknown table, a
//!   row the server cannot parse) fails at once as permanent. See
//!   [`StoreError::is_transient`].
//! - **Versions.** The server's version is read at open; the schema
//!   ([`migrations`]) and the insert settings follow it. Tested on Debian's 18.16 (a
//!   real server) and on a current release through chDB.
//! - **No duplicates on retry.** Each batch gets a deterministic dedup token (a hash of
//!   its event uuids) where the server supports one (22.2 and later), and `events` is a
//!   ReplacingMergeTree on the event uuid on every version. What each version guarantees
//!   is in docs/scale-out.md.
//! - **Queue position.** ClickHouse has no transactions across tables: the queue position
//!   is written after the batch. A crash between the two replays the batch, which the
//!   dedup above absorbs.
//!
//! Reads ([`Store::query`]) run SQL written for ClickHouse, with the parameters inlined
//! as literals (18.16 has no server-side parameters). The query engine (`tally-query`)
//! compiles ClickHouse SQL for part of `stats`, `trends`, `funnel`, `retention`, `lifecycle`, `stickiness`, `paths`, `realtime` and `events`, so far (see
//! docs/scale-out.md).

mod migrations;

use migrations::Layout;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tally_model::StoredBatch;

use crate::derived::{Derived, Traits};
use crate::{InsertStats, Lsn, Param, Rows, Sql, Store, StoreError};

/// Every statement of the schema for a server of `version`, in order, with the database
/// name filled in: what [`ClickHouseStore::open`] applies (after the migrations already
/// applied are skipped), on one server or, with `cluster`, `ON CLUSTER`. Public so the
/// schema can be checked against other versions.
pub fn schema_sql(version: Version, database: &str, cluster: Option<&str>) -> Vec<String> {
    migrations::migrations(version, layout(cluster))
        .into_iter()
        .flat_map(|(_, statements)| statements)
        .map(|s| render(&s, database))
        .collect()
}

fn layout(cluster: Option<&str>) -> Layout<'_> {
    cluster.map_or(Layout::Single, Layout::Cluster)
}

/// A schema statement with its database placeholders filled in.
fn render(statement: &str, database: &str) -> String {
    statement
        .replace("{db}", &format!("`{database}`"))
        .replace("{db_name}", database)
        .replace("{db_name_literal}", &quote_str(database))
}

/// The settings of a batch's insert into `events` on a server of `version`, `token` being
/// the batch's dedup token: from 22.2 on, a batch sent again with the same token is
/// dropped, and then not counted again by the rollup's materialized view either.
pub fn events_insert_settings(version: Version, token: &str) -> Vec<(&'static str, String)> {
    if version >= migrations::DEDUP_TOKEN_SINCE {
        vec![
            ("insert_deduplication_token", token.to_owned()),
            (
                "deduplicate_blocks_in_dependent_materialized_views",
                "1".into(),
            ),
        ]
    } else {
        Vec::new()
    }
}

/// Where the server is and how hard to try.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Created if missing.
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Per request.
    pub timeout: Duration,
    /// Extra attempts after a transient failure.
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one, at most 30 s.
    pub backoff: Duration,
    /// When the query engine reads the `events_hourly` rollup.
    pub rollups: Rollups,
    /// A cluster of the servers' `remote_servers`: the schema is created `ON CLUSTER`,
    /// as replicated tables on every shard behind `Distributed` tables (needs ZooKeeper
    /// and the `shard` and `replica` macros on every server; docs/scale-out.md).
    pub cluster: Option<String>,
}

/// When reads use the rollup tables. They are kept by materialized views, which count a
/// batch inserted twice twice unless the server drops the second insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rollups {
    /// Where the server drops replayed inserts (22.2 and later, with the dedup token).
    #[default]
    Auto,
    /// Always, accepting that on servers that keep a replayed insert (before 22.2), a
    /// batch replayed after a writer crash is counted twice by the rollup (docs/scale-out.md
    /// says how to rebuild it).
    Always,
    /// Never: every read scans `events`.
    Never,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "tally".into(),
            user: None,
            password: None,
            timeout: Duration::from_secs(30),
            retries: 5,
            backoff: Duration::from_millis(200),
            rollups: Rollups::Auto,
            cluster: None,
        }
    }
}

/// A server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `SELECT version()` output such as `18.16.1` or `24.8.4.13`.
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.trim().split('.').map(|p| p.parse::<u32>().ok());
        Some(Version(
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The ClickHouse store. Calls block (they are HTTP requests): run them on a blocking
/// thread, as with every [`Store`].
pub struct ClickHouseStore {
    http: reqwest::blocking::Client,
    config: ClickHouseConfig,
    version: Version,
    /// Whether the database exists, so requests may name it as their default.
    db_ready: bool,
}

impl ClickHouseStore {
    /// Connects, reads the server version, creates the database and applies the
    /// migrations it lacks.
    pub fn open(config: ClickHouseConfig) -> Result<Self, StoreError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| StoreError::ClickHouse {
                code: None,
                message: format!("http client: {e}"),
                transient: false,
            })?;
        let mut store = Self {
            http,
            config,
            version: Version(0, 0, 0),
            db_ready: false,
        };
        let version = store.send("SELECT version()", None, &[])?;
        store.version = Version::parse(&version).ok_or_else(|| StoreError::ClickHouse {
            code: None,
            message: format!("unreadable server version {version:?}"),
            transient: false,
        })?;
        store.migrate()?;
        tracing::info!(version = %store.version, database = %store.config.database, "clickhouse store open");
        Ok(store)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    fn db(&self) -> &str {
        &self.config.database
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        // The database name is an identifier, and on a cluster part of a ZooKeeper path:
        // letters, digits, `_` and `-` only.
        let valid = |name: &str| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !valid(self.db()) {
            return Err(StoreError::ClickHouse {
                code: None,
                message: format!(
                    "invalid database name {:?}: use letters, digits, _ and -",
                    self.db()
                ),
                transient: false,
            });
        }
        if let Some(cluster) = &self.config.cluster {
            if !valid(cluster) {
                return Err(StoreError::ClickHouse {
                    code: None,
                    message: format!(
                        "invalid cluster name {cluster:?}: use letters, digits, _ and -"
                    ),
                    transient: false,
                });
            }
        }
        let on_cluster = match &self.config.cluster {
            Some(c) => format!(" ON CLUSTER `{c}`"),
            None => String::new(),
        };
        self.send(
            &format!("CREATE DATABASE IF NOT EXISTS `{}`{on_cluster}", self.db()),
            None,
            &[],
        )?;
        self.db_ready = true;
        let layout = layout(self.config.cluster.as_deref());
        for statement in migrations::migrations_table(layout) {
            self.send(&render(&statement, self.db()), None, &[])?;
        }
        let applied = self.send(
            &format!("SELECT max(version) FROM `{}`.tally_migrations", self.db()),
            None,
            &[],
        )?;
        let applied: u32 = applied.trim().parse().unwrap_or(0);
        for (version, statements) in migrations::migrations(self.version, layout) {
            if version <= applied {
                continue;
            }
            for statement in statements {
                self.send(&render(&statement, self.db()), None, &[])
                    .map_err(|e| StoreError::ClickHouse {
                        code: None,
                        message: format!("migration {version} failed: {e}"),
                        transient: e.is_transient(),
                    })?;
            }
            self.send(
                &format!(
                    "INSERT INTO `{}`.tally_migrations VALUES ({version}, now())",
                    self.db()
                ),
                None,
                &[],
            )?;
            tracing::info!(version, "applied clickhouse migration");
        }
        Ok(())
    }

    /// One statement over HTTP, retried while failures are transient. `body` is sent
    /// gzip-compressed. Returns the response text.
    fn send(
        &self,
        query: &str,
        body: Option<&[u8]>,
        settings: &[(&str, String)],
    ) -> Result<String, StoreError> {
        let gz = match body {
            Some(body) => {
                let mut enc =
                    GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
                enc.write_all(body)?;
                Some(enc.finish()?)
            }
            None => None,
        };
        let mut attempt = 0;
        let mut wait = self.config.backoff;
        loop {
            attempt += 1;
            match self.send_once(query, gz.as_deref(), settings) {
                Ok(text) => return Ok(text),
                Err(e) if e.is_transient() && attempt <= self.config.retries => {
                    tracing::warn!(attempt, error = %e, wait_ms = wait.as_millis() as u64, "clickhouse request failed; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                Err(e) if e.is_transient() => {
                    return Err(StoreError::Unavailable {
                        attempts: attempt,
                        message: e.to_string(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn send_once(
        &self,
        query: &str,
        gz_body: Option<&[u8]>,
        settings: &[(&str, String)],
    ) -> Result<String, StoreError> {
        let mut params: Vec<(&str, &str)> = Vec::new();
        if self.db_ready {
            params.push(("database", self.db()));
        }
        let ddl_timeout;
        if self.config.cluster.is_some() {
            // An insert is answered once every shard has its rows; DDL waits for every
            // shard at most as long as a request may take; a subquery on a Distributed
            // table inside another is read whole (GLOBAL), never per shard.
            ddl_timeout = self.config.timeout.as_secs().max(1).to_string();
            params.push(("insert_distributed_sync", "1"));
            params.push(("distributed_ddl_task_timeout", &ddl_timeout));
            params.push(("distributed_product_mode", "global"));
        }
        for (k, v) in settings {
            params.push((k, v));
        }
        let request = match gz_body {
            // The statement goes in the URL and the rows in the body.
            Some(body) => self
                .http
                .post(&self.config.url)
                .query(&params)
                .query(&[("query", query)])
                .header("Content-Encoding", "gzip")
                .body(body.to_vec()),
            None => self
                .http
                .post(&self.config.url)
                .query(&params)
                .body(query.to_owned()),
        };
        let request = match &self.config.user {
            Some(user) => request.basic_auth(user, self.config.password.as_deref()),
            None => request,
        };
        let response = request.send().map_err(|e| StoreError::ClickHouse {
            code: None,
            message: format!("request to {} failed: {e}", self.config.url),
            transient: true,
        })?;
        let status = response.status();
        let text = response.text().map_err(|e| StoreError::ClickHouse {
            code: None,
            message: format!("reading the answer failed: {e}"),
            transient: true,
        })?;
        if status.is_success() {
            return Ok(text);
        }
        let code = exception_code(&text);
        Err(StoreError::ClickHouse {
            code,
            message: text.trim().chars().take(2_000).collect(),
            transient: code.is_some_and(transient_code) || status.as_u16() == 503,
        })
    }

    /// The current traits of `keys` in `table` (persons or groups), by key.
    fn current_traits(
        &self,
        table: &str,
        key_col: &str,
        project: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, Stored>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(5_000) {
            let list: Vec<String> = chunk.iter().map(|k| quote_str(k)).collect();
            let text = self.send(
                &format!(
                    "SELECT {key_col}, argMax(traits, written_at), min(created_at), max(updated_at), max(written_at) \
                     FROM `{db}`.{table} WHERE project_id = {project} AND {key_col} IN ({list}) \
                     GROUP BY {key_col} FORMAT JSONCompact",
                    db = self.db(),
                    project = quote_str(project),
                    list = list.join(", "),
                ),
                None,
                &[("output_format_json_quote_64bit_integers", "0".into())],
            )?;
            for row in json_rows(&text)? {
                let key = row
                    .first()
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let traits = row
                    .get(1)
                    .and_then(Value::as_str)
                    .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
                    .unwrap_or_default();
                let created = row.get(2).and_then(Value::as_u64).unwrap_or(0);
                let updated = row.get(3).and_then(Value::as_u64).unwrap_or(0);
                let written = row.get(4).and_then(Value::as_u64).unwrap_or(0);
                out.insert(
                    key,
                    Stored {
                        traits,
                        created,
                        updated,
                        written,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Merges a batch's traits into what is stored (later calls win per trait, an
    /// earlier call only fills gaps: the DuckDB store's rule) and inserts the results.
    fn upsert_traits(
        &self,
        table: &str,
        key_col: &str,
        merged: HashMap<(String, String), Traits>,
    ) -> Result<usize, StoreError> {
        let mut by_project: HashMap<&str, Vec<(&str, &Traits)>> = HashMap::new();
        for ((project, key), traits) in &merged {
            by_project.entry(project).or_default().push((key, traits));
        }
        let mut rows = Vec::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        for (project, items) in by_project {
            let keys: Vec<&str> = items.iter().map(|(k, _)| *k).collect();
            let stored = self.current_traits(table, key_col, project, &keys)?;
            for (key, new) in items {
                let Stored {
                    mut traits,
                    created,
                    updated,
                    written,
                } = stored.get(key).cloned().unwrap_or(Stored {
                    traits: Map::new(),
                    created: u64::MAX,
                    updated: 0,
                    written: 0,
                });
                for (k, v) in &new.traits {
                    if micros_u64(new.last) >= updated || !traits.contains_key(k) {
                        traits.insert(k.clone(), v.clone());
                    }
                }
                rows.push(json!({
                    "project_id": project,
                    key_col: key,
                    "traits": Value::Object(traits).to_string(),
                    "created_at": created.min(micros_u64(new.first)),
                    "updated_at": updated.max(micros_u64(new.last)),
                    "written_at": now.max(written + 1),
                }));
            }
        }
        self.insert_rows(table, &rows, &[])?;
        Ok(merged.len())
    }

    fn insert_rows(
        &self,
        table: &str,
        rows: &[Value],
        settings: &[(&str, String)],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(rows.len() * 256);
        for row in rows {
            serde_json::to_writer(&mut body, row).map_err(encode_error)?;
            body.push(b'\n');
        }
        self.send(
            &format!("INSERT INTO `{}`.{table} FORMAT JSONEachRow", self.db()),
            Some(&body),
            settings,
        )?;
        Ok(())
    }
}

/// One row of `events`, serialized straight from the event (no intermediate JSON tree).
#[derive(serde::Serialize)]
struct EventRow<'a> {
    project_id: &'a str,
    uuid: String,
    #[serde(rename = "type")]
    kind: &'a str,
    event: &'a str,
    user_id: Option<&'a str>,
    device_id: Option<&'a str>,
    session_id: Option<&'a str>,
    group_id: Option<&'a str>,
    visitor_id: &'a str,
    ts: i64,
    received_at: i64,
    page: Option<Cow<'a, str>>,
    properties: &'a str,
    traits: &'a str,
    context: &'a str,
    lsn: u64,
}

/// An object's JSON text, `{}` for an empty one.
fn json_text(object: Option<&RawValue>) -> &str {
    object.map_or("{}", RawValue::get)
}

fn encode_error(e: serde_json::Error) -> StoreError {
    StoreError::ClickHouse {
        code: None,
        message: format!("encoding a row: {e}"),
        transient: false,
    }
}

/// The current row of one person or group.
#[derive(Clone)]
struct Stored {
    traits: Map<String, Value>,
    created: u64,
    updated: u64,
    written: u64,
}

fn micros_u64(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

impl Store for ClickHouseStore {
    fn dialect(&self) -> crate::Dialect {
        crate::Dialect::ClickHouse
    }

    fn rollups(&self) -> bool {
        match self.config.rollups {
            Rollups::Auto => {
                self.version >= migrations::DEDUP_TOKEN_SINCE || self.config.cluster.is_some()
            }
            Rollups::Always => true,
            Rollups::Never => false,
        }
    }

    fn committed_lsn(&self) -> Result<Lsn, StoreError> {
        let text = self.send(
            &format!(
                "SELECT max(lsn) FROM `{}`.queue_offsets WHERE queue = 'wal'",
                self.db()
            ),
            None,
            &[],
        )?;
        Ok(text.trim().parse().unwrap_or(0))
    }

    fn insert(&self, batches: &[StoredBatch<'_>], upto: Lsn) -> Result<InsertStats, StoreError> {
        let mut stats = InsertStats::default();
        let mut events =
            Vec::with_capacity(batches.iter().map(|b| b.events.len()).sum::<usize>() * 512);
        let mut derived = Derived::default();
        let mut token = Sha256::new();
        for batch in batches {
            let project: &str = &batch.project_id;
            for e in &batch.events {
                token.update(e.uuid.as_bytes());
                let row = EventRow {
                    project_id: project,
                    uuid: e.uuid.hyphenated().to_string(),
                    kind: e.kind.as_str(),
                    event: &e.event,
                    user_id: e.user_id.as_deref(),
                    device_id: e.device_id.as_deref(),
                    session_id: e.session_id.as_deref(),
                    group_id: e.group_id.as_deref(),
                    visitor_id: e.visitor_id(),
                    ts: e.timestamp,
                    received_at: e.received_at,
                    page: e.stored_page(),
                    properties: json_text(e.properties),
                    traits: json_text(e.traits),
                    context: json_text(e.context),
                    lsn: upto,
                };
                serde_json::to_writer(&mut events, &row).map_err(encode_error)?;
                events.push(b'\n');
                stats.events += 1;
                // The store has no cache of links made before: every link in the batch
                // is written, and reads keep each device's earliest.
                derived.add(project, e, |_, _| false);
            }
        }
        stats.identities = derived.projects();
        let links: Vec<Value> = derived
            .links()
            .map(|(project, device, user, at)| {
                json!({"project_id": project, "device_id": device, "user_id": user, "linked_at": at})
            })
            .collect();
        let members: Vec<Value> = derived
            .members
            .iter()
            .map(|((project, group, user), (first, last))| {
                json!({"project_id": project, "group_id": group, "user_id": user,
                       "first_seen": first, "last_seen": last})
            })
            .collect();
        let settings = events_insert_settings(self.version, &hex::encode(token.finalize()));
        if !events.is_empty() {
            self.send(
                &format!("INSERT INTO `{}`.events FORMAT JSONEachRow", self.db()),
                Some(&events),
                &settings,
            )?;
        }
        stats.persons = self.upsert_traits("persons", "user_id", derived.persons)?;
        stats.groups = self.upsert_traits("groups", "group_id", derived.groups)?;
        self.insert_rows("group_members", &members, &[])?;
        self.insert_rows("identities", &links, &[])?;
        self.insert_rows(
            "queue_offsets",
            &[json!({"queue": "wal", "lsn": upto})],
            &[],
        )?;
        Ok(stats)
    }

    fn query(&self, sql: &Sql) -> Result<Rows, StoreError> {
        let text = inline_params(&sql.text, &sql.params)?;
        let started = Instant::now();
        let out = self.send(
            &format!("{text} FORMAT JSONCompact"),
            None,
            &[("output_format_json_quote_64bit_integers", "0".into())],
        );
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, sql = %text, "clickhouse query");
        json_rows(&out?)
    }
}

/// The `data` rows of a `FORMAT JSONCompact` answer.
fn json_rows(text: &str) -> Result<Rows, StoreError> {
    let v: Value = serde_json::from_str(text).map_err(|e| StoreError::ClickHouse {
        code: None,
        message: format!(
            "unreadable answer ({e}): {}",
            text.chars().take(200).collect::<String>()
        ),
        transient: false,
    })?;
    Ok(match v.get("data") {
        Some(Value::Array(rows)) => rows
            .iter()
            .map(|r| r.as_array().cloned().unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    })
}

/// `Code: 62, e.displayText() = DB::Exception: ...` (18.x) or `Code: 62. DB::Exception:
/// ...` (later versions): the error code.
fn exception_code(body: &str) -> Option<u32> {
    let rest = &body[body.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `s` as a ClickHouse string literal. ClickHouse reads backslash escapes inside
/// literals, so backslashes are escaped as well as quotes (the DuckDB quoting, which only
/// doubles quotes, would let `\'` end the literal here).
pub fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Server errors that mean "try again later".
fn transient_code(code: u32) -> bool {
    matches!(
        code,
        159 // TIMEOUT_EXCEEDED
        | 164 // READONLY (a replica in read-only mode, e.g. lost ZooKeeper)
        | 202 // TOO_MANY_SIMULTANEOUS_QUERIES
        | 203 // NO_FREE_CONNECTION
        | 209 // SOCKET_TIMEOUT
        | 210 // NETWORK_ERROR
        | 241 // MEMORY_LIMIT_EXCEEDED
        | 242 // TABLE_IS_READ_ONLY
        | 252 // TOO_MANY_PARTS
        | 319 // UNKNOWN_STATUS_OF_INSERT
        | 425 // SYSTEM_ERROR
        | 999 // KEEPER_EXCEPTION
    )
}

/// Replaces the `?` and `$n` placeholders outside string literals and quoted names with
/// the parameters as ClickHouse literals: the text [`ClickHouseStore::query`] sends.
pub fn inline_params(sql: &str, params: &[Param]) -> Result<String, StoreError> {
    let literal = |p: &Param| match p {
        Param::Text(s) => quote_str(s),
        Param::Int(i) => i.to_string(),
        Param::Float(f) if f.is_finite() => format!("{f:?}"),
        Param::Float(_) => "nan".to_owned(),
        Param::Timestamp(t) => t.to_string(),
    };
    let missing = |n: usize| StoreError::ClickHouse {
        code: None,
        message: format!("query has no parameter {n}"),
        transient: false,
    };
    let mut out = String::with_capacity(sql.len() + params.len() * 8);
    let mut next = 0;
    let mut chars = sql.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((_, c)) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' {
                if let Some((_, escaped)) = chars.next() {
                    out.push(escaped);
                }
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => {
                quote = Some(c);
                out.push(c);
            }
            '?' => {
                out.push_str(&literal(params.get(next).ok_or_else(|| missing(next + 1))?));
                next += 1;
            }
            '$' if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                let mut n = 0usize;
                while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
                    n = n * 10 + d.to_digit(10).unwrap_or(0) as usize;
                    chars.next();
                }
                let p = n
                    .checked_sub(1)
                    .and_then(|i| params.get(i))
                    .ok_or_else(|| missing(n))?;
                out.push_str(&literal(p));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("18.16.1"), Some(Version(18, 16, 1)));
        assert_eq!(Version::parse("24.8.4.13\n"), Some(Version(24, 8, 4)));
        assert_eq!(Version::parse("25.1"), Some(Version(25, 1, 0)));
        assert_eq!(Version::parse("x"), None);
        assert!(Version(18, 16, 1) < migrations::DEDUP_TOKEN_SINCE);
        assert!(Version(22, 2, 0) >= migrations::DEDUP_TOKEN_SINCE);
    }

    #[test]
    fn error_codes_are_read_from_both_message_styles() {
        assert_eq!(
            exception_code("Code: 62, e.displayText() = DB::Exception: Syntax error"),
            Some(62)
        );
        assert_eq!(
            exception_code("Code: 252. DB::Exception: Too many parts"),
            Some(252)
        );
        assert_eq!(exception_code("nothing"), None);
        assert!(transient_code(252) && !transient_code(62));
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote_str("plan"), "'plan'");
        assert_eq!(quote_str("o'k"), r"'o\'k'");
        assert_eq!(quote_str(r"a\"), r"'a\\'");
        assert_eq!(
            quote_str(r"x\'; DROP TABLE t; --"),
            r"'x\\\'; DROP TABLE t; --'"
        );
    }

    #[test]
    fn parameters_are_inlined_outside_literals_only() {
        let sql = "SELECT '?', \"$1\", x FROM t WHERE a = ? AND b = $2 AND c = 'it''s ?'";
        let params = [Param::Text("o'k".into()), Param::Int(7)];
        assert_eq!(
            inline_params(sql, &params).unwrap(),
            "SELECT '?', \"$1\", x FROM t WHERE a = 'o\\'k' AND b = 7 AND c = 'it''s ?'"
        );
        assert!(inline_params("SELECT ?", &[]).is_err());
        assert!(inline_params("SELECT $3", &params).is_err());
        assert_eq!(
            inline_params("SELECT $1, $1", &[Param::Timestamp(5)]).unwrap(),
            "SELECT 5, 5"
        );
    }
}
