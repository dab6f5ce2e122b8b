//! The writer: moves batches from the queue into the store.
//!
//! It reads what the WAL holds durably, inserts it in one store transaction together
//! with the position it read up to, and only then tells the WAL the records are done.
//! A crash anywhere in between replays from the store's position: nothing lost, nothing
//! doubled. Store failures are retried with backoff for as long as it takes; meanwhile
//! the queue fills and ingest eventually answers 503 — loud, never silent.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_model::EventBatch;
use tally_queue::{Entry, EntryId, Record, RedisStreams, StreamReader, Wal, WalReader};
use tally_store::Store;

use crate::config::WriterConfig;
use crate::dedup::Dedup;
use crate::metrics::{WRITER_BATCH_EVENTS, WRITER_ERRORS, WRITER_FLUSH_SECONDS};

pub(crate) struct Writer {
    pub wal: Wal,
    pub reader: WalReader,
    pub store: Arc<dyn Store>,
    pub config: WriterConfig,
    /// Set once the WAL is closed: an empty read then means everything is written.
    pub draining: Arc<AtomicBool>,
    /// Where records that cannot be decoded are kept for an operator to inspect.
    pub dead_letter: PathBuf,
    pub dedup: Dedup,
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
                continue;
            }
            self.write(records).await;
        }
    }

    async fn write(&mut self, records: Vec<Record>) {
        let upto = records.last().expect("non-empty").lsn;
        let payloads = records
            .into_iter()
            .map(|r| (r.lsn.to_string(), r.payload))
            .collect();
        store_payloads(
            &self.store,
            payloads,
            &self.dead_letter,
            &mut self.dedup,
            upto,
        )
        .await;
        if let Err(e) = self.wal.commit(upto) {
            tracing::error!(error = %e, upto, "wal commit failed; records will be replayed");
        }
    }
}

/// Decodes queue payloads (`(position, bytes)`), drops the events already stored and
/// inserts the rest, on one blocking thread. On an async worker, a batch of thousands of
/// records (milliseconds of CPU) would hold up the HTTP requests queued behind it; on one
/// thread, the events are freed by the thread that allocated them. A failed insert is
/// retried with backoff (up to 5 s apart) for as long as it takes: meanwhile the queue
/// fills and ingest eventually answers 503.
async fn store_payloads(
    store: &Arc<dyn Store>,
    payloads: Vec<(String, bytes::Bytes)>,
    dead_letter: &Path,
    dedup: &mut Dedup,
    upto: u64,
) {
    let dead_letter = dead_letter.to_owned();
    let mut backoff = Duration::from_millis(100);
    // The dedup sets go to the blocking thread and come back; an empty one holds the place.
    let mut owned = std::mem::replace(dedup, Dedup::new(0, 0));
    let first_store = store.clone();
    let (owned, mut failed) = tokio::task::spawn_blocking(move || {
        let mut batches = decode_all(payloads, &dead_letter);
        drop_duplicates(&mut owned, &mut batches);
        let failed = insert_once(&*first_store, batches, upto, backoff);
        (owned, failed)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    *dedup = owned;
    while let Some(batches) = failed {
        metrics::counter!(WRITER_ERRORS, "stage" => "insert").increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        let store = store.clone();
        failed = tokio::task::spawn_blocking(move || insert_once(&*store, batches, upto, backoff))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }
}

/// One insert of `batches`: `None` when they are stored (and freed), else the batches back
/// for another attempt after `retry_in`.
fn insert_once(
    store: &dyn Store,
    batches: Vec<EventBatch>,
    upto: u64,
    retry_in: Duration,
) -> Option<Vec<EventBatch>> {
    let events: usize = batches.iter().map(|b| b.events.len()).sum();
    let start = Instant::now();
    let retry_in_ms = retry_in.as_millis() as u64;
    match std::panic::catch_unwind(AssertUnwindSafe(|| store.insert(&batches, upto))) {
        Ok(Ok(_stats)) => {
            metrics::histogram!(WRITER_FLUSH_SECONDS).record(start.elapsed().as_secs_f64());
            metrics::histogram!(WRITER_BATCH_EVENTS).record(events as f64);
            metrics::counter!("tally_writer_events_total").increment(events as u64);
            return None;
        }
        Ok(Err(e)) => tracing::error!(error = %e, upto, retry_in_ms, "store insert failed"),
        Err(_) => tracing::error!(upto, retry_in_ms, "store insert panicked"),
    }
    Some(batches)
}

/// Drops the events already stored within the dedup window.
fn drop_duplicates(dedup: &mut Dedup, batches: &mut [EventBatch]) {
    let mut duplicates = 0u64;
    for batch in batches.iter_mut() {
        batch.events.retain(|e| {
            let dup = dedup.is_duplicate(&e.uuid, e.received_at);
            duplicates += u64::from(dup);
            !dup
        });
    }
    if duplicates > 0 {
        metrics::counter!("tally_events_deduplicated_total").increment(duplicates);
    }
    let now = chrono::Utc::now().timestamp_micros();
    metrics::gauge!("tally_dedup_ids").set(dedup.len() as f64);
    metrics::gauge!("tally_dedup_window_seconds").set(dedup.window_secs(now) as f64);
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
    pub dead_letter: PathBuf,
    pub dedup: Dedup,
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
                store_payloads(&self.store, payloads, &self.dead_letter, &mut self.dedup, 0).await;
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
}

/// Decodes queue payloads (`(position, bytes)`); one that does not decode goes to the
/// dead letter file.
fn decode_all(payloads: Vec<(String, bytes::Bytes)>, dead_letter: &Path) -> Vec<EventBatch> {
    let mut out = Vec::new();
    for (at, payload) in payloads {
        match EventBatch::decode(&payload) {
            Ok(b) => out.push(b),
            Err(e) => {
                // Only a bug or a foreign writer could do this: keep the bytes, say so
                // loudly, and move on so the queue is not stuck.
                tracing::error!(position = %at, error = %e, path = %dead_letter.display(), "undecodable queue record moved to dead letter file");
                metrics::counter!(WRITER_ERRORS, "stage" => "decode").increment(1);
                let _ = append_dead_letter(dead_letter, &at, &payload);
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
