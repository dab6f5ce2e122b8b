//! The query result cache (docs/caching.md): L1 in this process, bounded in bytes, with
//! one computation per key at a time, and invalidation by the hours of event time each
//! stored batch touched.
//!
//! - The key is a hash of the project, the normalized query (its date range resolved to
//!   absolute whole days in its timezone) and [`CODE_VERSION`]: equal questions share an
//!   entry, two projects never do.
//! - Each store insert the writer makes records, per project, the UTC hours its events
//!   fall in ([`Flush`]), under a new data version. An entry remembers the version that
//!   was current when its computation began; it is fresh while no hour of its range
//!   ([`tally_query::Reads`]) was touched after that version. An insert that writes
//!   people, accounts or identity links touches the project's whole history (a link
//!   merges a device's past into a person).
//! - A closed range that nothing touched stays valid until memory evicts it. A range that
//!   reaches now may be served for a while after newer data arrived: at most
//!   `cache.max_staleness_ms`, less for short ranges ([`Cache::allowance`]); the answer
//!   then says `"stale": true`.
//! - Errors, timeouts and partial answers are never kept.
//!
//! In the single-node mode the writer tells this process's [`Flushes`] directly. In
//! scale-out, writers publish each flush to Redis and every query process follows it
//! (`l2.rs`), which also keeps answers in Redis (L2) for all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use tally_model::{EventType, StoredBatch};
use tally_query::{Plan, Reads};
use tally_store::InsertStats;

/// Changes whenever the meaning of a cached answer may change with the code: part of
/// every key, so answers of an older build are never served by a newer one.
pub(crate) const CODE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "/cache-1");

const HOUR: i64 = 3_600_000_000;

/// What one store insert touched.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Flush {
    pub(crate) projects: HashMap<String, Touched>,
}

/// The part of one project's data an insert touched.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Touched {
    /// UTC hours (event time / 1 h) the new events fall in.
    #[serde(rename = "h", default, skip_serializing_if = "BTreeSet::is_empty")]
    pub(crate) hours: BTreeSet<i64>,
    /// People, accounts or links were written: every answer may change.
    #[serde(rename = "all", default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) everything: bool,
}

impl Flush {
    /// What inserting `batches` touched, as the store reported it in `stats`.
    pub(crate) fn of(batches: &[StoredBatch<'_>], stats: &InsertStats) -> Flush {
        let mut flush = Flush::default();
        for batch in batches {
            let touched = flush
                .projects
                .entry(batch.project_id.to_string())
                .or_default();
            for e in &batch.events {
                touched.hours.insert(e.timestamp.div_euclid(HOUR));
                // The store reports the traits and links it wrote; an alias always
                // links two ids, whatever the store knew.
                if e.kind == EventType::Alias {
                    touched.everything = true;
                }
            }
        }
        for project in &stats.identities {
            flush
                .projects
                .entry(project.clone())
                .or_default()
                .everything = true;
        }
        flush
    }
}

/// How long a process that follows the flushes from Redis may go without hearing from
/// it before it stops vouching for any kept answer.
pub(crate) const OUT_OF_TOUCH: Duration = Duration::from_secs(2);

/// The data versions: what each insert touched, and when.
pub(crate) struct Flushes {
    state: RwLock<FlushState>,
    /// Told of every new version (the warmer waits on it).
    pub(crate) changed: tokio::sync::Notify,
    /// For flushes followed from Redis: when the follower last heard from it (ms since
    /// the epoch; 0: not yet, or lost). `None`: told directly by this process's writer.
    contact: Option<AtomicI64>,
}

struct FlushState {
    version: u64,
    /// When the current version's data was committed (the start, for version 0).
    as_of: DateTime<Utc>,
    projects: HashMap<String, ProjectVersions>,
    /// Flushes before it may be unknown here (they came before this process followed
    /// them, or while it was out of touch): an answer computed at an older version
    /// cannot be vouched for.
    horizon: u64,
}

#[derive(Default)]
struct ProjectVersions {
    /// The last version that touched every answer of the project.
    everything: u64,
    /// The last version that touched each hour.
    hours: BTreeMap<i64, u64>,
    /// The last version that touched anything.
    latest: u64,
}

impl Flushes {
    /// Versions this process's own writer records.
    pub(crate) fn new() -> Self {
        Self {
            state: RwLock::new(FlushState {
                version: 0,
                as_of: Utc::now(),
                projects: HashMap::new(),
                horizon: 0,
            }),
            changed: tokio::sync::Notify::new(),
            contact: None,
        }
    }

    /// Versions followed from the writers' shared log: nothing is vouched for until
    /// the follower has read it ([`Flushes::resync`]).
    pub(crate) fn followed() -> Self {
        Self {
            contact: Some(AtomicI64::new(0)),
            ..Self::new()
        }
    }

    /// The follower heard from the log just now.
    pub(crate) fn heard(&self) {
        if let Some(c) = &self.contact {
            c.store(Utc::now().timestamp_millis(), Ordering::Release);
        }
    }

    /// The follower lost the log: nothing is vouched for until it is back.
    pub(crate) fn lost(&self) {
        if let Some(c) = &self.contact {
            c.store(0, Ordering::Release);
        }
    }

    /// Whether flushes reach this process now (always, for its own writer's).
    pub(crate) fn in_touch(&self) -> bool {
        match &self.contact {
            None => true,
            Some(c) => {
                let heard = c.load(Ordering::Acquire);
                heard > 0
                    && Utc::now().timestamp_millis() - heard <= OUT_OF_TOUCH.as_millis() as i64
            }
        }
    }

    /// Every flush after `horizon` is known from now on (the follower has (re)read the
    /// log from there); answers computed at older versions are not vouched for.
    pub(crate) fn resync(&self, horizon: u64) {
        let mut s = self.state.write();
        s.horizon = s.horizon.max(horizon);
        s.version = s.version.max(horizon);
    }

    /// Records a flush read from the shared log, at the version the log gave it.
    pub(crate) fn apply(&self, version: u64, as_of: DateTime<Utc>, flush: Flush) {
        let mut s = self.state.write();
        if version <= s.version {
            // Read again after a reconnect: already applied, or older than the horizon.
            return;
        }
        s.version = version;
        s.as_of = as_of;
        Self::touch(&mut s, version, flush);
        self.changed.notify_one();
    }

    /// The current data version and when it was committed.
    pub(crate) fn current(&self) -> (u64, DateTime<Utc>) {
        let s = self.state.read();
        (s.version, s.as_of)
    }

    /// Records a committed insert under a new version.
    pub(crate) fn record(&self, flush: Flush) {
        let mut s = self.state.write();
        s.version += 1;
        s.as_of = Utc::now();
        let version = s.version;
        Self::touch(&mut s, version, flush);
        self.changed.notify_one();
    }

    fn touch(s: &mut FlushState, version: u64, flush: Flush) {
        for (project, touched) in flush.projects {
            let p = s.projects.entry(project).or_default();
            p.latest = version;
            if touched.everything {
                p.everything = version;
            }
            for hour in touched.hours {
                p.hours.insert(hour, version);
            }
        }
    }

    /// Whether nothing `reads` covers in `project` was touched after `version`.
    pub(crate) fn untouched_since(&self, project: &str, reads: Reads, version: u64) -> bool {
        if !self.in_touch() {
            return false;
        }
        let s = self.state.read();
        if version < s.horizon {
            return false;
        }
        let Some(p) = s.projects.get(project) else {
            return true;
        };
        if p.latest <= version {
            return true;
        }
        if p.everything > version {
            return false;
        }
        let from = reads.from.div_euclid(HOUR);
        // `to` is exclusive: an event at exactly `to` is outside.
        let to = reads.to.saturating_sub(1).div_euclid(HOUR);
        if from > to {
            return true;
        }
        !p.hours.range(from..=to).any(|(_, v)| *v > version)
    }
}

/// A cache key: the hash of (code version, project, normalized query).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key([u8; 32]);

impl Key {
    pub(crate) fn new(project: &str, normalized: &serde_json::Value) -> Key {
        let mut h = Sha256::new();
        for part in [CODE_VERSION, project] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(normalized.to_string().as_bytes());
        Key(h.finalize().into())
    }

    /// A short form for the ETag.
    fn short(&self) -> String {
        hex::encode(&self.0[..12])
    }

    /// The whole key, for Redis.
    pub(crate) fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// One kept answer.
pub(crate) struct Entry {
    /// The response body, a JSON object, without its `cache` block.
    pub(crate) body: Bytes,
    pub(crate) reads: Reads,
    /// The data version current when the computation began: the answer holds at
    /// least everything committed up to it.
    pub(crate) version: u64,
    pub(crate) data_as_of: DateTime<Utc>,
    pub(crate) computed_at: DateTime<Utc>,
}

/// An entry's header in L2, after its version.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    from: i64,
    to: i64,
    /// `data_as_of` and `computed_at`, µs since the epoch.
    as_of: i64,
    at: i64,
}

impl Entry {
    /// The form kept in L2: the version as 20 digits (a Redis script compares them so
    /// that an answer never replaces a newer one), a JSON header line, the body.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_string(&Header {
            from: self.reads.from,
            to: self.reads.to,
            as_of: self.data_as_of.timestamp_micros(),
            at: self.computed_at.timestamp_micros(),
        })
        .expect("plain numbers");
        let mut out = Vec::with_capacity(self.body.len() + header.len() + 22);
        out.extend_from_slice(format!("{:020}", self.version).as_bytes());
        out.extend_from_slice(header.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    /// An entry [`Entry::encode`] made; `None` for anything else.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Entry> {
        let version = std::str::from_utf8(bytes.get(..20)?).ok()?.parse().ok()?;
        let rest = &bytes[20..];
        let newline = rest.iter().position(|b| *b == b'\n')?;
        let header: Header = serde_json::from_slice(&rest[..newline]).ok()?;
        Some(Entry {
            body: Bytes::copy_from_slice(&rest[newline + 1..]),
            reads: Reads {
                from: header.from,
                to: header.to,
            },
            version,
            data_as_of: DateTime::from_timestamp_micros(header.as_of)?,
            computed_at: DateTime::from_timestamp_micros(header.at)?,
        })
    }
}

/// What a request asked of the cache (`"refresh"` in the query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// A fresh (or, for an open range, recent enough) answer, else compute.
    Auto,
    /// Compute now.
    Force,
    /// Never compute: what is kept, or 404 `not_cached`.
    CacheOnly,
    /// What is kept, however old; compute again in the background if it is not fresh.
    StaleWhileRevalidate,
}

impl Refresh {
    pub(crate) fn parse(v: Option<&serde_json::Value>) -> Result<Refresh, String> {
        match v.map(|v| v.as_str()) {
            None => Ok(Refresh::Auto),
            Some(Some("auto")) => Ok(Refresh::Auto),
            Some(Some("force")) => Ok(Refresh::Force),
            Some(Some("cache_only")) => Ok(Refresh::CacheOnly),
            Some(Some("stale_while_revalidate")) => Ok(Refresh::StaleWhileRevalidate),
            _ => Err(
                "must be \"auto\", \"force\", \"cache_only\" or \"stale_while_revalidate\"".into(),
            ),
        }
    }
}

/// How an entry stands when it is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Nothing it covers was touched since it was computed.
    Fresh,
    /// Touched, but its range reaches now and it is younger than the allowance.
    Recent,
    /// Touched: computing again would give a different answer.
    Stale,
}

/// A key that was asked for: what it takes to compute it again, and how often.
pub(crate) struct Wanted {
    pub(crate) project: String,
    pub(crate) plan: Arc<Plan>,
    pub(crate) asked: AtomicU64,
}

/// How many keys the warmer remembers (the most recently asked; one not asked for an
/// hour is forgotten).
const WANTED_KEYS: u64 = 10_000;

pub(crate) struct Cache {
    pub(crate) enabled: bool,
    /// The keys asked for, for the warmer.
    pub(crate) wanted: moka::future::Cache<Key, Arc<Wanted>>,
    pub(crate) l1: moka::future::Cache<Key, Arc<Entry>>,
    /// Shared by the query processes of a scale-out deployment.
    pub(crate) l2: Option<Arc<crate::l2::L2>>,
    pub(crate) flushes: Arc<Flushes>,
    max_staleness: Duration,
}

impl Cache {
    /// A cache whose flushes this process's writer records.
    pub(crate) fn new(enabled: bool, l1_bytes: u64, max_staleness: Duration) -> Self {
        let l1 = moka::future::Cache::builder()
            .max_capacity(l1_bytes)
            // Bytes held: the body and the entry's own fields.
            .weigher(|_: &Key, e: &Arc<Entry>| {
                (e.body.len() + std::mem::size_of::<Entry>() + 64).min(u32::MAX as usize) as u32
            })
            .build();
        Self {
            enabled,
            wanted: moka::future::Cache::builder()
                .max_capacity(WANTED_KEYS)
                .time_to_idle(Duration::from_secs(3_600))
                .build(),
            l1,
            l2: None,
            flushes: Arc::new(Flushes::new()),
            max_staleness,
        }
    }

    /// A cache that follows the flushes from Redis, and keeps answers there too.
    pub(crate) fn shared(mut self, l2: Arc<crate::l2::L2>) -> Self {
        self.l2 = Some(l2);
        self.flushes = Arc::new(Flushes::followed());
        self
    }

    /// How long after newer data an answer whose range reaches now may still be
    /// served: a 1,440th of the range's length (60 s for a day), at least 1 s, at most
    /// `cache.max_staleness_ms`. A closed range gets none.
    pub(crate) fn allowance(&self, reads: Reads, now: DateTime<Utc>) -> Duration {
        let now = now.timestamp_micros();
        if reads.to <= now {
            return Duration::ZERO;
        }
        let from = reads.from.max(now - 366 * 24 * HOUR);
        let span = Duration::from_micros((reads.to.min(now + 24 * HOUR) - from).max(0) as u64);
        (span / 1440)
            .max(Duration::from_secs(1))
            .min(self.max_staleness)
    }

    pub(crate) fn standing(&self, project: &str, e: &Entry, now: DateTime<Utc>) -> Standing {
        if self.flushes.untouched_since(project, e.reads, e.version) {
            Standing::Fresh
        } else if age(e, now) <= self.allowance(e.reads, now) {
            Standing::Recent
        } else {
            Standing::Stale
        }
    }

    /// Counts a request for `key`.
    pub(crate) async fn want(&self, key: Key, project: &str, plan: &Arc<Plan>) {
        self.wanted
            .get_with(key, async {
                Arc::new(Wanted {
                    project: project.to_owned(),
                    plan: plan.clone(),
                    asked: AtomicU64::new(0),
                })
            })
            .await
            .asked
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_size(&self) {
        metrics::gauge!("tally_cache_bytes", "layer" => "l1").set(self.l1.weighted_size() as f64);
    }
}

pub(crate) fn age(e: &Entry, now: DateTime<Utc>) -> Duration {
    (now - e.computed_at).to_std().unwrap_or(Duration::ZERO)
}

/// A strong ETag for `entry` under `key`: it changes when the data the answer was
/// computed from does.
pub(crate) fn etag(key: &Key, entry: &Entry) -> String {
    format!("\"{}-{}\"", key.short(), entry.version)
}

/// The response body: `entry`'s with the `cache` block first.
pub(crate) fn body_with(entry: &Entry, block: &serde_json::Value) -> Vec<u8> {
    let block = block.to_string();
    let mut out = Vec::with_capacity(entry.body.len() + block.len() + 12);
    out.extend_from_slice(b"{\"cache\":");
    out.extend_from_slice(block.as_bytes());
    let rest = &entry.body[1..];
    if rest.first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flush(project: &str, hours: &[i64], everything: bool) -> Flush {
        let mut f = Flush::default();
        f.projects.insert(
            project.into(),
            Touched {
                hours: hours.iter().copied().collect(),
                everything,
            },
        );
        f
    }

    fn span(from_h: i64, to_h: i64) -> Reads {
        Reads {
            from: from_h * HOUR,
            to: to_h * HOUR,
        }
    }

    #[test]
    fn an_entry_goes_stale_only_when_an_hour_it_reads_is_touched_after_it() {
        let f = Flushes::new();
        f.record(flush("p", &[10], false));
        let (v, _) = f.current();
        assert!(f.untouched_since("p", span(0, 24), v));
        f.record(flush("p", &[30], false));
        assert!(f.untouched_since("p", span(0, 24), v), "an hour outside");
        f.record(flush("q", &[5], false));
        assert!(f.untouched_since("p", span(0, 24), v), "another project");
        f.record(flush("p", &[24], false));
        assert!(f.untouched_since("p", span(0, 24), v), "`to` is exclusive");
        f.record(flush("p", &[23], false));
        assert!(
            !f.untouched_since("p", span(0, 24), v),
            "the last hour inside"
        );
        let (v2, _) = f.current();
        assert!(f.untouched_since("p", span(0, 24), v2));
        f.record(flush("p", &[], true));
        assert!(!f.untouched_since("p", span(0, 24), v2), "people or links");
        assert!(!f.untouched_since("p", Reads::ALL, v2));
    }

    #[test]
    fn negative_times_fall_in_their_own_hours() {
        let f = Flushes::new();
        f.record(flush("p", &[-1], false));
        assert!(f.untouched_since("p", span(0, 5), 0));
        assert!(!f.untouched_since("p", Reads::ALL, 0));
    }

    #[test]
    fn the_staleness_allowance_grows_with_the_range_and_is_capped() {
        let cache = Cache::new(true, 1 << 20, Duration::from_secs(60));
        let now = Utc::now();
        let n = now.timestamp_micros();
        let closed = Reads {
            from: n - 48 * HOUR,
            to: n - HOUR,
        };
        assert_eq!(cache.allowance(closed, now), Duration::ZERO);
        let day = Reads {
            from: n - 12 * HOUR,
            to: n + 12 * HOUR,
        };
        assert_eq!(cache.allowance(day, now), Duration::from_secs(60));
        let hour = Reads {
            from: n - HOUR / 2,
            to: n + HOUR / 2,
        };
        assert_eq!(cache.allowance(hour, now), Duration::from_millis(2_500));
        let year = Reads {
            from: n - 365 * 24 * HOUR,
            to: n + HOUR,
        };
        assert_eq!(cache.allowance(year, now), Duration::from_secs(60));
    }

    #[test]
    fn keys_differ_by_project_and_query_and_agree_on_equal_ones() {
        let q = serde_json::json!({"kind": "stats", "metrics": ["visitors"]});
        assert_eq!(Key::new("a", &q), Key::new("a", &q));
        assert_ne!(Key::new("a", &q), Key::new("b", &q));
        let other = serde_json::json!({"kind": "stats", "metrics": ["pageviews"]});
        assert_ne!(Key::new("a", &q), Key::new("a", &other));
    }

    #[test]
    fn the_cache_block_goes_first_in_the_body() {
        let e = Entry {
            body: Bytes::from_static(br#"{"results":[1]}"#),
            reads: Reads::ALL,
            version: 0,
            data_as_of: Utc::now(),
            computed_at: Utc::now(),
        };
        let out = body_with(&e, &serde_json::json!({"hit": true}));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cache": {"hit": true}, "results": [1]})
        );
    }
}
