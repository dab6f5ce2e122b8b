//! The shared layer of the result cache, in Redis (docs/caching.md): the answers every
//! query process of a scale-out deployment reads and writes (L2), the log of flushes the
//! writers publish and the query processes follow, and leases so that one process at a
//! time computes an answer.
//!
//! - `tally:cache:<key>`: an answer ([`Entry::encode`]), expiring after `cache.l2_ttl_s`.
//!   A newer answer replaces an older one, never the reverse (a script compares their
//!   versions).
//! - `tally:lease:<key>`: who is computing the answer, with its owner's token; it expires
//!   with the query's time budget, so a process that died holds nobody up for longer.
//! - `tally:flushes`: the log of flushes, a stream trimmed to about [`FLUSH_LOG_LEN`]
//!   entries. A flush's data version is its stream id (`ms × 2²⁰ + sequence`), so versions
//!   are the same in every process and an answer one computed another can vouch for.
//!
//! Every call has a bound (`cache.redis_timeout_ms`). A failure or a timeout counts in
//! `tally_cache_errors_total{layer="l2"}` and the request goes on without L2: L1 and the
//! store still answer. A follower that loses the log stops vouching for kept answers
//! ([`Flushes::lost`]) until it has read the log again, so nothing stale is served as
//! fresh while Redis is away.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Value};

use crate::cache::{Entry, Flush, Flushes, Key};

/// The stream of flushes.
pub(crate) const FLUSH_LOG: &str = "tally:flushes";
/// About how many flushes the log keeps (`XADD MAXLEN ~`): hours of them at a flush a
/// second. A query process that starts reads them all.
pub(crate) const FLUSH_LOG_LEN: u64 = 100_000;
/// How long one blocking read of the log waits for a flush.
const FOLLOW_BLOCK: Duration = Duration::from_millis(500);

/// Stores `ARGV[1]` at `KEYS[1]` for `ARGV[2]` ms unless the kept value's version (its
/// first 20 digits) is newer.
const PUT_SCRIPT: &str = r#"
local old = redis.call('GETRANGE', KEYS[1], 0, 19)
if old ~= '' and old > string.sub(ARGV[1], 1, 20) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Deletes the lease `KEYS[1]` if `ARGV[1]` still owns it.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// A connection to the Redis that holds L2 and the flush log, made when first needed
/// (and tried again at most once a second while Redis is away).
pub(crate) struct L2 {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    /// When the last connection attempt began.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    timeout: Duration,
    ttl: Duration,
}

/// What asking for a lease gave.
pub(crate) enum Lease {
    /// This process computes; release with the token.
    Mine(String),
    /// Another process is computing.
    Taken,
    /// Redis did not answer: compute without one.
    Unavailable,
}

impl L2 {
    /// A handle on `url`; no connection is made yet, so Redis may be away at start.
    pub(crate) fn new(url: &str, timeout: Duration, ttl: Duration) -> anyhow::Result<L2> {
        Ok(L2 {
            client: redis::Client::open(url)?,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(None),
            timeout,
            ttl,
        })
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        if let Some(c) = self.conn.read().clone() {
            return Some(c);
        }
        let mut last = self.connecting.lock().await;
        if let Some(c) = self.conn.read().clone() {
            return Some(c);
        }
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        *last = Some(Instant::now());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        match self.client.get_connection_manager_with_config(config).await {
            Ok(c) => {
                *self.conn.write() = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                error("connect", &e);
                None
            }
        }
    }

    /// Runs `cmd` within the bound; `None` (counted) on any failure.
    async fn run<T: redis::FromRedisValue>(&self, what: &str, cmd: &redis::Cmd) -> Option<T> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                error(what, &e);
                None
            }
            Err(_) => {
                error(what, &"timed out");
                None
            }
        }
    }

    /// The answer kept for `key`, if any (a miss and a failure alike are `None`).
    pub(crate) async fn get(&self, key: &Key) -> Option<Entry> {
        let bytes: Option<Vec<u8>> = self
            .run("get", redis::cmd("GET").arg(answer_key(key)))
            .await?;
        let entry = Entry::decode(&bytes?);
        if entry.is_none() {
            tracing::warn!(key = %key.hex(), "an L2 entry that does not decode; ignored");
        }
        entry
    }

    /// Keeps `entry` for `key`, unless a newer answer is already kept.
    pub(crate) async fn put(&self, key: &Key, entry: &Entry) {
        let _: Option<i64> = self
            .run(
                "put",
                redis::cmd("EVAL")
                    .arg(PUT_SCRIPT)
                    .arg(1)
                    .arg(answer_key(key))
                    .arg(entry.encode())
                    .arg(self.ttl.as_millis() as u64),
            )
            .await;
    }

    /// Asks to be the one process computing `key`, for at most `ttl`.
    pub(crate) async fn lease(&self, key: &Key, ttl: Duration) -> Lease {
        let token = uuid::Uuid::new_v4().to_string();
        let set: Option<Option<String>> = self
            .run(
                "lease",
                redis::cmd("SET")
                    .arg(lease_key(key))
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64),
            )
            .await;
        match set {
            Some(Some(_)) => Lease::Mine(token),
            Some(None) => Lease::Taken,
            None => Lease::Unavailable,
        }
    }

    /// Whether another process still holds the lease on `key`.
    pub(crate) async fn leased(&self, key: &Key) -> bool {
        self.run::<bool>("lease", redis::cmd("EXISTS").arg(lease_key(key)))
            .await
            .unwrap_or(false)
    }

    pub(crate) async fn release(&self, key: &Key, token: &str) {
        let _: Option<i64> = self
            .run(
                "release",
                redis::cmd("EVAL")
                    .arg(RELEASE_SCRIPT)
                    .arg(1)
                    .arg(lease_key(key))
                    .arg(token),
            )
            .await;
    }

    /// Appends `flush` to the log; its version. For writers, which retry until it
    /// succeeds (before acknowledging the batch).
    pub(crate) async fn publish(&self, flush: &Flush) -> Result<u64, String> {
        let json = serde_json::to_string(flush).map_err(|e| e.to_string())?;
        let id: String = self
            .run(
                "publish",
                redis::cmd("XADD")
                    .arg(FLUSH_LOG)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(FLUSH_LOG_LEN)
                    .arg("*")
                    .arg("f")
                    .arg(json),
            )
            .await
            .ok_or("redis did not take the flush")?;
        version_of(&id)
            .map(|(v, _)| v)
            .ok_or(format!("stream id {id}"))
    }

    /// Follows the log into `flushes`, for as long as the process runs: reads it whole
    /// at start and after every reconnect, then waits for new flushes.
    pub(crate) async fn follow(self: std::sync::Arc<Self>, flushes: std::sync::Arc<Flushes>) {
        let mut after: Option<String> = None;
        loop {
            match self.follow_once(&flushes, &mut after).await {
                Ok(()) => unreachable!("follows until an error"),
                Err(e) => {
                    flushes.lost();
                    error("follow", &e);
                    tracing::warn!(error = %e, "lost the flush log; kept answers are not served until it is back");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// One connection's worth of following. `after`: the last flush read, kept across
    /// reconnects.
    async fn follow_once(
        &self,
        flushes: &Flushes,
        after: &mut Option<String>,
    ) -> Result<(), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(None);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let bounded = |d: Duration| d + self.timeout.max(Duration::from_secs(1));
        match after {
            None => {
                // At start: the log from its beginning. Flushes trimmed from it before
                // are unknown, so answers older than the last one trimmed are not
                // vouched for.
                let info: Result<Value, _> = tokio::time::timeout(
                    bounded(Duration::ZERO),
                    redis::cmd("XINFO")
                        .arg("STREAM")
                        .arg(FLUSH_LOG)
                        .query_async(&mut conn),
                )
                .await
                .map_err(|_| "XINFO timed out".to_string())?;
                let horizon = match info {
                    Ok(info) => max_deleted(&info),
                    Err(e) if e.to_string().contains("no such key") => 0,
                    Err(e) => return Err(e.to_string()),
                };
                flushes.resync(horizon);
            }
            Some(_) => {
                // After a reconnect: what was missed meanwhile may be gone (trimmed,
                // or Redis restarted), so nothing kept before is vouched for.
                let (version, _) = flushes.current();
                flushes.resync(version + 1);
            }
        }
        let mut catching_up = true;
        loop {
            let from = after.clone().unwrap_or_else(|| "0-0".into());
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(10_000);
            if !catching_up {
                cmd.arg("BLOCK").arg(FOLLOW_BLOCK.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(FLUSH_LOG).arg(&from);
            let reply: Value =
                tokio::time::timeout(bounded(FOLLOW_BLOCK), cmd.query_async(&mut conn))
                    .await
                    .map_err(|_| "XREAD timed out".to_string())?
                    .map_err(|e| e.to_string())?;
            let entries = stream_entries(reply);
            catching_up = entries.len() >= 10_000;
            for (id, json) in entries {
                match (version_of(&id), serde_json::from_slice::<Flush>(&json)) {
                    (Some((version, as_of)), Ok(flush)) => flushes.apply(version, as_of, flush),
                    _ => tracing::warn!(%id, "a flush that does not decode; skipped"),
                }
                *after = Some(id);
            }
            flushes.heard();
        }
    }
}

fn answer_key(key: &Key) -> String {
    format!("tally:cache:{}", key.hex())
}

fn lease_key(key: &Key) -> String {
    format!("tally:lease:{}", key.hex())
}

fn error(what: &str, e: &dyn std::fmt::Display) {
    metrics::counter!("tally_cache_errors_total", "layer" => "l2").increment(1);
    tracing::debug!(what, error = %e, "redis (L2)");
}

/// A stream id (`ms-seq`) as a data version, and its time.
fn version_of(id: &str) -> Option<(u64, DateTime<Utc>)> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    let version = ms
        .checked_mul(1 << 20)?
        .checked_add(seq.min((1 << 20) - 1))?;
    Some((version, DateTime::from_timestamp_millis(ms as i64)?))
}

/// `max-deleted-entry-id` of an `XINFO STREAM` answer, as a version (0 if none).
fn max_deleted(info: &Value) -> u64 {
    let Ok(pairs) = redis::from_redis_value_ref::<Vec<(String, Value)>>(info) else {
        return 0;
    };
    pairs
        .iter()
        .find(|(k, _)| k == "max-deleted-entry-id")
        .and_then(|(_, v)| redis::from_redis_value_ref::<String>(v).ok())
        .and_then(|id| version_of(&id))
        .map_or(0, |(v, _)| v)
}

/// The `(id, f)` pairs of an `XREAD` answer on one stream.
fn stream_entries(reply: Value) -> Vec<(String, Vec<u8>)> {
    let Ok(reply) = redis::from_redis_value::<Option<StreamReadReply>>(reply) else {
        return Vec::new();
    };
    reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|k| k.ids)
        .filter_map(|e| {
            let json = redis::from_redis_value_ref::<Vec<u8>>(e.map.get("f")?).ok()?;
            Some((e.id, json))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_ordered_versions() {
        let (a, t) = version_of("1700000000000-0").unwrap();
        let (b, _) = version_of("1700000000000-5").unwrap();
        let (c, _) = version_of("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(t.timestamp_millis(), 1_700_000_000_000);
        assert_eq!(version_of("nonsense"), None);
    }
}
