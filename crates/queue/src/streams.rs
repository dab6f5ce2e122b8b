//! The scale-out queue: a Redis stream read by a consumer group.
//!
//! This is the queue of the scale-out roles (ingest, writer and query processes on several
//! machines): ingest processes append, writer processes read through one consumer group
//! and acknowledge what their store committed. It keeps the embedded [`crate::Wal`]'s
//! contract where Redis can:
//!
//! - **Ack means accepted.** [`RedisStreams::append`] sends every record of a call as one
//!   pipeline of `XADD`s and resolves only after Redis answered all of them. Whether
//!   accepted also means on disk is Redis's persistence setting (`appendonly yes` with
//!   `appendfsync always` is the WAL's `fsync = "always"`; the default `everysec` can lose
//!   the last second in a crash of the Redis host). See docs/scale-out.md.
//! - **Fails loudly.** When Redis is unreachable, or answers with an error, the append
//!   fails ([`StreamError::Unavailable`], [`StreamError::Redis`]) and ingest answers 503; a
//!   stream holding [`StreamConfig::max_len`] entries refuses with [`StreamError::Full`]. It
//!   never trims unread entries to make room (no `XADD MAXLEN`).
//! - **At-least-once to the store.** [`RedisStreams::read`] hands a writer the entries
//!   delivered to it but never acknowledged (after its own restart), then entries other
//!   writers left unacknowledged for longer than [`StreamConfig::claim_idle`] (a writer
//!   that died; `XAUTOCLAIM`), then new entries (`XREADGROUP >`). The writer calls
//!   [`RedisStreams::ack`] (`XACK`) only after its store committed, so an entry is
//!   delivered again after any crash before that; the store removes duplicates by the
//!   entry id and the event uuids it holds.
//! - **Trim only what every group acknowledged.** [`RedisStreams::trim`] removes entries
//!   older than the oldest entry that any consumer group still has pending or has not yet
//!   read (`XTRIM MINID`).
//!
//! Entry layout: field `p` is the record payload (the same bytes a WAL record holds) and
//! `n` the number of events in it. The entry id's first part is Redis's clock in
//! milliseconds when the entry was added, which gives the queue's age metrics.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Value};

/// Where the stream lives and how this process uses it.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// The writers' consumer group.
    pub group: String,
    /// This process's name within the group; must be unique per live writer and the same
    /// after its restart (so it gets back what it had read but not acknowledged).
    pub consumer: String,
    /// Appends are refused with [`StreamError::Full`] once the stream holds this many
    /// entries (acknowledged entries count until [`RedisStreams::trim`] removes them).
    pub max_len: u64,
    /// Entries another consumer has held unacknowledged for this long are taken over.
    pub claim_idle: Duration,
    /// How long one command may take before it fails as [`StreamError::Unavailable`].
    pub timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            stream: "tally:events".into(),
            group: "tally-writers".into(),
            consumer: "writer-1".into(),
            max_len: 10_000_000,
            claim_idle: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    #[error("redis error: {0}")]
    Redis(String),
    #[error("queue full: the stream holds {len} entries (limit {max})")]
    Full { len: u64, max: u64 },
    #[error("malformed stream entry {id}: {reason}")]
    Malformed { id: String, reason: String },
}

impl From<redis::ParsingError> for StreamError {
    fn from(e: redis::ParsingError) -> Self {
        StreamError::Redis(format!("unexpected answer: {e}"))
    }
}

impl From<RedisError> for StreamError {
    fn from(e: RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == ErrorKind::Io
        {
            StreamError::Unavailable(e.to_string())
        } else {
            StreamError::Redis(e.to_string())
        }
    }
}

/// A stream entry id, `<milliseconds>-<sequence>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// The smallest id after this one.
    pub fn next(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        let parse = |part: &str| {
            part.parse::<u64>()
                .map_err(|_| format!("not a stream id: {s:?}"))
        };
        Ok(EntryId {
            ms: parse(ms)?,
            seq: parse(seq)?,
        })
    }
}

/// One entry handed to a writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    /// How many events the payload holds, as given to [`RedisStreams::append`].
    pub events: u32,
    pub payload: Bytes,
    /// How many times Redis has delivered it (1 the first time); 0 when not known.
    pub deliveries: u64,
}

/// What the stream holds, for `/metrics` and autoscaling (KEDA's Redis Streams scaler
/// reads the same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Entries in the stream (acknowledged ones count until trimmed).
    pub length: u64,
    /// Entries delivered to a writer of the group and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell (after
    /// entries were deleted out of order).
    pub lag: Option<u64>,
    /// Age of the oldest entry the group has not acknowledged (pending or unread).
    pub oldest_age: Option<Duration>,
}

/// A Redis stream used as Tally's queue. Cheap to clone.
#[derive(Clone)]
pub struct RedisStreams {
    config: Arc<StreamConfig>,
    /// Appends, acks and statistics share one multiplexed connection that reconnects.
    conn: ConnectionManager,
    /// Blocking reads get their own connection: `XREADGROUP BLOCK` would stall every
    /// other command on a multiplexed one.
    client: Client,
    /// The stream length Redis last reported, for the [`StreamConfig::max_len`] check.
    last_len: Arc<AtomicU64>,
}

impl RedisStreams {
    /// Connects and creates the stream and the consumer group if they do not exist.
    pub async fn connect(config: StreamConfig) -> Result<Self, StreamError> {
        let client = Client::open(config.url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        let mut conn = client.get_connection_manager_with_config(manager).await?;
        let created: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&config.stream)
            .arg(&config.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Self {
            config: Arc::new(config),
            conn,
            client,
            last_len: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Appends records (payload, events in it) in one pipeline and returns their ids, in
    /// order, once Redis has accepted all of them. On an error none or only some may have
    /// been added: the caller answers with an error, and a client retry may then store an
    /// event twice, which the store's uuid dedup removes.
    pub async fn append(&self, records: &[(Bytes, u32)]) -> Result<Vec<EntryId>, StreamError> {
        let len = self.last_len.load(AtomicOrdering::Relaxed);
        if len >= self.config.max_len {
            // Look again: the writers may have trimmed since.
            let fresh = self.length().await?;
            if fresh >= self.config.max_len {
                return Err(StreamError::Full {
                    len: fresh,
                    max: self.config.max_len,
                });
            }
        }
        let mut pipe = redis::pipe();
        for (payload, events) in records {
            pipe.cmd("XADD")
                .arg(&self.config.stream)
                .arg("*")
                .arg("p")
                .arg(payload.as_ref())
                .arg("n")
                .arg(*events);
        }
        pipe.cmd("XLEN").arg(&self.config.stream);
        let mut conn = self.conn.clone();
        let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let len = match replies.pop() {
            Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
            other => return Err(StreamError::Redis(format!("XLEN answered {other:?}"))),
        };
        self.last_len.store(len, AtomicOrdering::Relaxed);
        replies
            .into_iter()
            .map(|v| {
                let id: String = redis::from_redis_value(v)?;
                id.parse().map_err(StreamError::Redis)
            })
            .collect()
    }

    /// The number of entries in the stream.
    pub async fn length(&self) -> Result<u64, StreamError> {
        let mut conn = self.conn.clone();
        let len: u64 = redis::cmd("XLEN")
            .arg(&self.config.stream)
            .query_async(&mut conn)
            .await?;
        self.last_len.store(len, AtomicOrdering::Relaxed);
        Ok(len)
    }

    /// A reader for this process's consumer name.
    pub async fn reader(&self) -> Result<StreamReader, StreamError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            // A blocking read waits up to its own `block` on top of the usual timeout.
            .set_response_timeout(None);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(StreamReader {
            streams: self.clone(),
            conn,
            own_pending_done: false,
        })
    }

    /// Acknowledges entries the store has committed.
    pub async fn ack(&self, ids: &[EntryId]) -> Result<u64, StreamError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.config.stream).arg(&self.config.group);
        for id in ids {
            cmd.arg(id.to_string());
        }
        let mut conn = self.conn.clone();
        Ok(cmd.query_async(&mut conn).await?)
    }

    /// Removes the entries every consumer group has acknowledged and returns how many.
    pub async fn trim(&self) -> Result<u64, StreamError> {
        let Some(keep_from) = self.oldest_unacked_all_groups().await? else {
            return Ok(0);
        };
        let mut conn = self.conn.clone();
        let removed: u64 = redis::cmd("XTRIM")
            .arg(&self.config.stream)
            .arg("MINID")
            .arg(keep_from.to_string())
            .query_async(&mut conn)
            .await?;
        Ok(removed)
    }

    /// Every consumer group of the stream (`XINFO GROUPS`).
    async fn groups(&self) -> Result<StreamInfoGroupsReply, StreamError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.config.stream)
            .query_async(&mut conn)
            .await?)
    }

    /// The first id that some group still needs (pending, or after its last delivered
    /// entry); `None` when the stream has no group.
    async fn oldest_unacked_all_groups(&self) -> Result<Option<EntryId>, StreamError> {
        let groups = self.groups().await?;
        let mut keep: Option<EntryId> = None;
        for group in &groups.groups {
            let needed = self
                .group_needs_from(&group.name, group.pending, &group.last_delivered_id)
                .await?;
            keep = Some(keep.map_or(needed, |k| k.min(needed)));
        }
        Ok(keep)
    }

    /// The first id a group still needs: its oldest pending entry, else the entry after
    /// the last one delivered to it.
    async fn group_needs_from(
        &self,
        group: &str,
        pending: usize,
        last_delivered: &str,
    ) -> Result<EntryId, StreamError> {
        let after_delivered = last_delivered
            .parse::<EntryId>()
            .map_err(StreamError::Redis)?
            .next();
        if pending == 0 {
            return Ok(after_delivered);
        }
        let mut conn = self.conn.clone();
        let oldest: Value = redis::cmd("XPENDING")
            .arg(&self.config.stream)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(first_id(oldest)?.map_or(after_delivered, |id| id.min(after_delivered)))
    }

    /// Length, pending, lag and the oldest unacknowledged entry's age, for this group.
    pub async fn stats(&self) -> Result<StreamStats, StreamError> {
        let length = self.length().await?;
        let groups = self.groups().await?;
        let Some(group) = groups.groups.iter().find(|g| g.name == self.config.group) else {
            return Ok(StreamStats {
                length,
                ..StreamStats::default()
            });
        };
        let needed = self
            .group_needs_from(&group.name, group.pending, &group.last_delivered_id)
            .await?;
        // The oldest entry at or after `needed` that still exists.
        let mut conn = self.conn.clone();
        let first: Value = redis::cmd("XRANGE")
            .arg(&self.config.stream)
            .arg(needed.to_string())
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let first = first_id(first)?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(StreamStats {
            length,
            pending: group.pending as u64,
            lag: group.lag.map(|l| l as u64),
            oldest_age: first.map(|id| Duration::from_millis(now_ms.saturating_sub(id.ms))),
        })
    }
}

/// The id of the first entry of an `XRANGE ... COUNT 1` or `XPENDING ... 1` answer.
fn first_id(v: Value) -> Result<Option<EntryId>, StreamError> {
    let Value::Array(items) = v else {
        return Ok(None);
    };
    let Some(Value::Array(entry)) = items.into_iter().next() else {
        return Ok(None);
    };
    let Some(id) = entry.into_iter().next() else {
        return Ok(None);
    };
    let id: String = redis::from_redis_value(id)?;
    id.parse().map(Some).map_err(StreamError::Redis)
}

/// One writer's view of the stream (see the module docs for what it reads, in which
/// order).
pub struct StreamReader {
    streams: RedisStreams,
    conn: MultiplexedConnection,
    /// Whether this consumer's own pending entries (from before a restart) were read.
    own_pending_done: bool,
}

impl StreamReader {
    /// Up to `max` entries: this consumer's own unacknowledged ones first (once, after it
    /// starts), then ones taken over from consumers idle past `claim_idle`, then new ones,
    /// waiting up to `block` for those. Empty when nothing arrived in time.
    pub async fn read(&mut self, max: usize, block: Duration) -> Result<Vec<Entry>, StreamError> {
        let config = self.streams.config.clone();
        if max == 0 {
            return Ok(Vec::new());
        }
        if !self.own_pending_done {
            let reply: Option<StreamReadReply> = xreadgroup(&config, max, None, "0")
                .query_async(&mut self.conn)
                .await?;
            let entries = entries_of(reply)?;
            if !entries.is_empty() {
                return Ok(entries);
            }
            self.own_pending_done = true;
        }
        let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&config.stream)
            .arg(&config.group)
            .arg(&config.consumer)
            .arg(config.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.conn)
            .await?;
        if !claimed.claimed.is_empty() {
            tracing::warn!(
                entries = claimed.claimed.len(),
                idle_ms = config.claim_idle.as_millis() as u64,
                "took over stream entries another writer left unacknowledged"
            );
            return claimed.claimed.into_iter().map(entry_of).collect();
        }
        let reply: Option<StreamReadReply> = xreadgroup(&config, max, Some(block), ">")
            .query_async(&mut self.conn)
            .await?;
        entries_of(reply)
    }
}

/// `XREADGROUP` for this consumer: from `id` ("0": its own pending entries; ">": new
/// ones), waiting up to `block` when given.
fn xreadgroup(config: &StreamConfig, max: usize, block: Option<Duration>, id: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&config.group)
        .arg(&config.consumer)
        .arg("COUNT")
        .arg(max);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
    }
    cmd.arg("STREAMS").arg(&config.stream).arg(id);
    cmd
}

fn entries_of(reply: Option<StreamReadReply>) -> Result<Vec<Entry>, StreamError> {
    reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|k| k.ids)
        .map(entry_of)
        .collect()
}

fn entry_of(raw: StreamId) -> Result<Entry, StreamError> {
    let id: EntryId = raw.id.parse().map_err(|reason| StreamError::Malformed {
        id: raw.id.clone(),
        reason,
    })?;
    let malformed = |reason: &str| StreamError::Malformed {
        id: raw.id.clone(),
        reason: reason.to_owned(),
    };
    let payload = match raw.map.get("p") {
        Some(Value::BulkString(b)) => Bytes::copy_from_slice(b),
        _ => return Err(malformed("no payload field \"p\"")),
    };
    let events = match raw.map.get("n") {
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| malformed("field \"n\" is not a count"))?,
        Some(Value::Int(n)) => {
            u32::try_from(*n).map_err(|_| malformed("field \"n\" out of range"))?
        }
        _ => return Err(malformed("no event count field \"n\"")),
    };
    Ok(Entry {
        id,
        events,
        payload,
        deliveries: raw.delivered_count.map_or(0, |d| d as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_and_step_like_redis() {
        let a: EntryId = "1700000000000-5".parse().unwrap();
        let b: EntryId = "1700000000001-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.next().to_string(), "1700000000000-6");
        assert_eq!(
            EntryId {
                ms: 7,
                seq: u64::MAX
            }
            .next(),
            EntryId { ms: 8, seq: 0 }
        );
        assert_eq!("42".parse::<EntryId>().unwrap(), EntryId { ms: 42, seq: 0 });
        assert!("x-1".parse::<EntryId>().is_err());
        assert!("1-".parse::<EntryId>().is_err());
    }
}
