//! The writer: moves batches from the queue into the store.
//!
//! It reads what the WAL holds durably, inserts it in one store transaction together
//! with the position it read up to, and only then tells the WAL the records are done.
//! A crash anywhere in between replays from the store's position: nothing lost, nothing
//! doubled. Store failures are retried with backoff until they succeed or the writer is
//! draining at shutdown (the queue then keeps the rest for the next start); meanwhile
//! `/readyz` says the inserts fail, the queue fills and ingest eventually answers 503 —
//! loud, never silent.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tally_model::StoredBatch;
use tally_queue::{Entry, EntryId, Record, RedisStreams, StreamReader, Wal, WalReader};
use tally_store::Store;

use crate::cache::{Flush, Flushes};
use crate::config::WriterConfig;
use crate::dedup::Dedup;
use crate::l2::L2;
use crate::metrics::{WRITER_BATCH_EVENTS, WRITER_ERRORS, WRITER_FLUSH_SECONDS};

pub(crate) struct Writer {
    pub wal: Wal,
    pub reader: WalReader,
    pub store: Arc<dyn Store>,
    pub config: WriterConfig,
    /// Set once the WAL is closed: an empty read then means everything is written, and
    /// a failing insert is given up (the WAL keeps its records for the next start).
    pub draining: Arc<AtomicBool>,
    /// Set while store inserts fail (`/readyz` reports it).
    pub failing: Arc<AtomicBool>,
    /// Where records that cannot be decoded are kept for an operator to inspect.
    pub dead_letter: PathBuf,
    pub dedup: Dedup,
    /// Told what each insert touched, for the result cache.
    pub flushes: Option<Arc<Flushes>>,
}

impl Writer {
    pub(crate) async fn run(mut self) {
        // Batches fill for `batch_max_wait_ms` (the reader's linger); this is only how often
        // an idle writer wakes to check whether it is draining.
        let wait = Duration::from_secs(1);
        loop {
            let draining = self.draining.load(Ordering::Acquire);
            let records = match self
                .reader
                .next_batch(
                    self.config.batch_max_records,
                    self.config.batch_max_bytes,
                    wait,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "writer cannot read the queue");
                    metrics::counter!(WRITER_ERRORS, "stage" => "read").increment(1);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if records.is_empty() {
                if draining {
                    tracing::info!("writer drained the queue");
                    return;
                }
                // Once the WAL is closed an empty read returns at once, without waiting:
                // give the shutdown a turn to set `draining`, or on a single-threaded
                // runtime this loop would spin forever in its place.
                tokio::task::yield_now().await;
                continue;
            }
            if !self.write(records).await {
                tracing::warn!("writer stopped with inserts failing; the WAL keeps the rest for the next start");
                return;
            }
        }
    }

    /// Stores `records` and marks them done in the WAL; false if given up at shutdown.
    async fn write(&mut self, records: Vec<Record>) -> bool {
        let upto = records.last().expect("non-empty").lsn;
        let payloads = records
            .into_iter()
            .map(|r| (r.lsn.to_string(), r.payload))
            .collect();
        let retries = Retries {
            draining: &self.draining,
            failing: &self.failing,
        };
        let Some(flush) = store_payloads(
            &self.store,
            payloads,
            &self.dead_letter,
            &mut self.dedup,
            upto,
            retries,
        )
        .await
        else {
            return false;
        };
        if let Some(flushes) = &self.flushes {
            flushes.record(flush);
        }
        if let Err(e) = self.wal.commit(upto) {
            tracing::error!(error = %e, upto, "wal commit failed; records will be replayed");
        }
        true
    }
}

/// Decodes queue payloads (`(position, bytes)`), drops the events already stored and
/// inserts the rest, on one blocking thread. On an async worker, a batch of thousands of
/// records (milliseconds of CPU) would hold up the HTTP requests queued behind it. The
/// events are read in place ([`StoredBatch`]), so they cost no allocations to build and
/// free. A failed insert is retried with backoff (up to 5 s apart), decoding the
/// payloads again, until it succeeds or the writer is draining (shutdown): meanwhile
/// the queue fills and ingest eventually answers 503. What the stored events touched
/// (for the result cache), or `None` if they were not stored.
async fn store_payloads(
    store: &Arc<dyn Store>,
    payloads: Vec<(String, Bytes)>,
    dead_letter: &Path,
    dedup: &mut Dedup,
    upto: u64,
    retries: Retries<'_>,
) -> Option<Flush> {
    let mut pending = Pending {
        payloads,
        keep: None,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let store = store.clone();
        let dead_letter = dead_letter.to_owned();
        // The dedup sets go to the blocking thread and come back; an empty one holds the
        // place.
        let mut owned = std::mem::replace(dedup, Dedup::new(0, 0));
        let (owned, back, stored) = tokio::task::spawn_blocking(move || {
            let stored = attempt(
                &*store,
                &mut pending,
                &mut owned,
                &dead_letter,
                upto,
                backoff,
            );
            (owned, pending, stored)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        *dedup = owned;
        retries.failing.store(stored.is_none(), Ordering::Release);
        if stored.is_some() {
            return stored;
        }
        if retries.draining.load(Ordering::Acquire) {
            return None;
        }
        pending = back;
        metrics::counter!(WRITER_ERRORS, "stage" => "insert").increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// What a writer's insert retries watch (shutdown) and report (failing inserts).
#[derive(Clone, Copy)]
struct Retries<'a> {
    draining: &'a AtomicBool,
    failing: &'a AtomicBool,
}

/// Payloads on their way to the store, kept for the next attempt if an insert fails.
struct Pending {
    payloads: Vec<(String, Bytes)>,
    /// Once the first attempt has asked the dedup window (which records every id it lets
    /// through, so it is not asked again): per event of the payloads that decode, in
    /// order, false for the duplicates dropped.
    keep: Option<Vec<bool>>,
}

/// One attempt at storing `pending`: decodes it, drops the duplicates (the first time:
/// asks `dedup` and keeps a dead letter of what does not decode; later: as then) and
/// inserts the rest. What they touched, if they are stored.
fn attempt(
    store: &dyn Store,
    pending: &mut Pending,
    dedup: &mut Dedup,
    dead_letter: &Path,
    upto: u64,
    retry_in: Duration,
) -> Option<Flush> {
    let first = pending.keep.is_none();
    let mut batches = decode_all(&pending.payloads, first.then_some(dead_letter));
    match &pending.keep {
        Some(keep) => retain_kept(&mut batches, keep),
        None => pending.keep = Some(drop_duplicates(dedup, &mut batches)),
    }
    insert_once(store, &batches, upto, retry_in)
}

/// One insert of `batches`: what they touched, if they are stored. A panic in the store
/// is caught and counts as a failure, so the batch is retried rather than lost.
fn insert_once(
    store: &dyn Store,
    batches: &[StoredBatch<'_>],
    upto: u64,
    retry_in: Duration,
) -> Option<Flush> {
    let events: usize = batches.iter().map(|b| b.events.len()).sum();
    let start = Instant::now();
    let retry_in_ms = retry_in.as_millis() as u64;
    match std::panic::catch_unwind(AssertUnwindSafe(|| store.insert(batches, upto))) {
        Ok(Ok(stats)) => {
            metrics::histogram!(WRITER_FLUSH_SECONDS).record(start.elapsed().as_secs_f64());
            metrics::histogram!(WRITER_BATCH_EVENTS).record(events as f64);
            metrics::counter!("tally_writer_events_total").increment(events as u64);
            if stats.visits != tally_store::VisitsPath::None {
                metrics::counter!("tally_writer_visit_batches_total", "path" => stats.visits.as_str())
                    .increment(1);
            }
            return Some(Flush::of(batches, &stats));
        }
        Ok(Err(e)) => tracing::error!(error = %e, upto, retry_in_ms, "store insert failed"),
        Err(_) => tracing::error!(upto, retry_in_ms, "store insert panicked"),
    }
    None
}

/// Drops the events already stored within the dedup window; returns which were kept.
fn drop_duplicates(dedup: &mut Dedup, batches: &mut [StoredBatch<'_>]) -> Vec<bool> {
    let keep: Vec<bool> = batches
        .iter()
        .flat_map(|b| &b.events)
        .map(|e| !dedup.is_duplicate(&e.uuid, e.received_at))
        .collect();
    let duplicates = keep.iter().filter(|k| !**k).count() as u64;
    if duplicates > 0 {
        retain_kept(batches, &keep);
        metrics::counter!("tally_events_deduplicated_total").increment(duplicates);
    }
    let now = chrono::Utc::now().timestamp_micros();
    metrics::gauge!("tally_dedup_ids").set(dedup.len() as f64);
    metrics::gauge!("tally_dedup_window_seconds").set(dedup.window_secs(now) as f64);
    keep
}

/// Keeps the events whose entry in `keep` (one per event, in order) is true.
fn retain_kept(batches: &mut [StoredBatch<'_>], keep: &[bool]) {
    let mut kept = keep.iter().copied();
    for batch in batches {
        batch.events.retain(|_| kept.next().unwrap_or(true));
    }
}

/// The writer of the scale-out mode: reads the Redis stream through the writers'
/// consumer group, inserts into the store, and acknowledges only after the insert
/// returned. A writer killed in between leaves its entries pending: they are read again
/// by it after a restart, or taken over by another writer after `redis.claim_idle_ms`.
/// The store (ClickHouse) removes the copies such a replay makes, by event uuid.
pub(crate) struct StreamWriter {
    pub streams: RedisStreams,
    pub reader: StreamReader,
    pub store: Arc<dyn Store>,
    pub config: WriterConfig,
    /// Set on shutdown: the writer finishes the batch in hand and stops.
    pub draining: Arc<AtomicBool>,
    /// Set while store inserts fail (`/readyz` reports it).
    pub failing: Arc<AtomicBool>,
    pub dead_letter: PathBuf,
    pub dedup: Dedup,
    /// Where each insert's flush is published for the query processes' caches.
    pub flushes: Arc<L2>,
}

impl StreamWriter {
    pub(crate) async fn run(mut self) {
        let mut last_trim = Instant::now();
        while !self.draining.load(Ordering::Acquire) {
            let block = Duration::from_millis(self.config.batch_max_wait_ms.max(100));
            let entries = match self.reader.read(self.config.batch_max_records, block).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "writer cannot read the redis stream; reconnecting");
                    metrics::counter!(WRITER_ERRORS, "stage" => "read").increment(1);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // The blocking reader has its own connection, which does not come
                    // back by itself after Redis restarts: open a new one. It first
                    // re-reads this writer's unacknowledged entries, which is safe.
                    match self.streams.reader().await {
                        Ok(reader) => self.reader = reader,
                        Err(e) => tracing::warn!(error = %e, "redis still unreachable"),
                    }
                    continue;
                }
            };
            if !entries.is_empty() {
                let ids: Vec<EntryId> = entries.iter().map(|e: &Entry| e.id).collect();
                let payloads = entries
                    .into_iter()
                    .map(|e| (e.id.to_string(), e.payload))
                    .collect();
                // 0: not a WAL position (the stream's ids are acknowledged instead).
                let retries = Retries {
                    draining: &self.draining,
                    failing: &self.failing,
                };
                let Some(flush) = store_payloads(
                    &self.store,
                    payloads,
                    &self.dead_letter,
                    &mut self.dedup,
                    0,
                    retries,
                )
                .await
                else {
                    // Unacknowledged entries are delivered again after a restart.
                    tracing::warn!(
                        "writer stopped with inserts failing; the stream keeps the rest"
                    );
                    return;
                };
                // Published before the entries are acknowledged: a writer that dies
                // in between leaves them to be inserted (deduplicated) and published
                // again, so no query process misses what they touched.
                if !self.publish(&flush).await {
                    tracing::warn!(
                        "writer stopped before its flush was published; the stream keeps the batch"
                    );
                    return;
                }
                let mut backoff = Duration::from_millis(100);
                while let Err(e) = self.streams.ack(&ids).await {
                    // Unacknowledged entries are delivered again (and deduplicated by
                    // the store), so retrying is safe; giving up would only cost time.
                    tracing::error!(error = %e, "cannot acknowledge stream entries; retrying");
                    metrics::counter!(WRITER_ERRORS, "stage" => "ack").increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if self.draining.load(Ordering::Acquire) {
                        break;
                    }
                }
            }
            if last_trim.elapsed() > Duration::from_secs(5) {
                last_trim = Instant::now();
                match self.streams.trim().await {
                    Ok(n) if n > 0 => tracing::debug!(entries = n, "trimmed the redis stream"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot trim the redis stream"),
                }
            }
        }
        tracing::info!("stream writer stopped");
    }

    /// Publishes `flush` to the query processes, retrying until Redis takes it; false
    /// if the writer is draining first.
    async fn publish(&self, flush: &Flush) -> bool {
        if flush
            .projects
            .values()
            .all(|t| t.hours.is_empty() && !t.everything)
        {
            return true;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.flushes.publish(flush).await {
                Ok(_) => return true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot publish a flush; retrying");
                    metrics::counter!(WRITER_ERRORS, "stage" => "publish").increment(1);
                }
            }
            if self.draining.load(Ordering::Acquire) {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Decodes queue payloads (`(position, bytes)`); one that does not decode is skipped and,
/// given a `dead_letter` file, kept there.
fn decode_all<'a>(
    payloads: &'a [(String, Bytes)],
    dead_letter: Option<&Path>,
) -> Vec<StoredBatch<'a>> {
    let mut out = Vec::with_capacity(payloads.len());
    for (at, payload) in payloads {
        match StoredBatch::decode(payload) {
            Ok(b) => out.push(b),
            Err(e) => {
                let Some(dead_letter) = dead_letter else {
                    continue;
                };
                // Only a bug or a foreign writer could do this: keep the bytes, say so
                // loudly, and move on so the queue is not stuck.
                tracing::error!(position = %at, error = %e, path = %dead_letter.display(), "undecodable queue record moved to dead letter file");
                metrics::counter!(WRITER_ERRORS, "stage" => "decode").increment(1);
                let _ = append_dead_letter(dead_letter, at, payload);
            }
        }
    }
    out
}

fn append_dead_letter(path: &Path, at: &str, payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{at}\t{}", String::from_utf8_lossy(payload))?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use tally_model::{Event, EventBatch, EventType};
    use tally_store::{InsertStats, Lsn, Rows, Sql, StoreError};
    use uuid::Uuid;

    /// Fails its first insert with an error and its second with a panic, then keeps what
    /// it is given: `(project, uuid, event name)`.
    #[derive(Default)]
    struct Flaky {
        calls: Mutex<u32>,
        stored: Mutex<Vec<(String, Uuid, String)>>,
    }

    impl Store for Flaky {
        fn committed_lsn(&self) -> Result<Lsn, StoreError> {
            Ok(0)
        }

        fn insert(&self, batches: &[StoredBatch<'_>], _: Lsn) -> Result<InsertStats, StoreError> {
            let call = {
                let mut calls = self.calls.lock();
                *calls += 1;
                *calls
            };
            match call {
                1 => return Err(StoreError::Io(std::io::Error::other("disk gone"))),
                2 => panic!("a bug in the store"),
                _ => {}
            }
            let mut stored = self.stored.lock();
            for b in batches {
                for e in &b.events {
                    stored.push((b.project_id.to_string(), e.uuid, e.event.to_string()));
                }
            }
            Ok(InsertStats::default())
        }

        fn query(&self, _: &Sql) -> Result<Rows, StoreError> {
            unreachable!("the writer does not read")
        }
    }

    fn record(project: &str, events: &[(Uuid, &str)]) -> Bytes {
        let batch = EventBatch {
            project_id: project.into(),
            events: events
                .iter()
                .map(|(uuid, name)| Event {
                    uuid: *uuid,
                    user_id: Some("u1".into()),
                    timestamp: 1,
                    received_at: 2,
                    ..Event::new(EventType::Track, *name)
                })
                .collect(),
        };
        Bytes::from(batch.encode())
    }

    /// Duplicates are dropped once, an undecodable record goes to the dead letter file
    /// once, and a failed or panicking insert is retried with the same events until one
    /// goes through.
    #[tokio::test]
    async fn a_failing_insert_is_retried_with_the_same_events() {
        let dir = tempfile::tempdir().unwrap();
        let dead_letter = dir.path().join("dead-letter.tsv");
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let payloads = vec![
            (
                "1".to_owned(),
                record("p", &[(a, "first"), (b, "with \"quotes\"")]),
            ),
            ("2".to_owned(), Bytes::from_static(b"{not json")),
            // `b` again (a client's retry), next to a new event.
            ("3".to_owned(), record("q", &[(b, "again"), (c, "third")])),
        ];
        let flaky = Arc::new(Flaky::default());
        let store: Arc<dyn Store> = flaky.clone();
        let mut dedup = Dedup::new(24, 1_000);
        let (draining, failing) = (AtomicBool::new(false), AtomicBool::new(false));
        let retries = Retries {
            draining: &draining,
            failing: &failing,
        };
        assert!(
            store_payloads(&store, payloads, &dead_letter, &mut dedup, 3, retries)
                .await
                .is_some()
        );
        assert!(
            !failing.load(Ordering::Acquire),
            "the last insert succeeded"
        );

        assert_eq!(*flaky.calls.lock(), 3);
        assert_eq!(
            *flaky.stored.lock(),
            vec![
                ("p".to_owned(), a, "first".to_owned()),
                ("p".to_owned(), b, "with \"quotes\"".to_owned()),
                ("q".to_owned(), c, "third".to_owned()),
            ]
        );
        let kept = std::fs::read_to_string(&dead_letter).unwrap();
        assert_eq!(kept, "2\t{not json\n");
    }
}
