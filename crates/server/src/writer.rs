//! The writer: moves batches from the queue into the store.
//!
//! It reads what the WAL holds durably, inserts it in one store transaction together
//! with the position it read up to, and only then tells the WAL the records are done.
//! A crash anywhere in between replays from the store's position: nothing lost, nothing
//! doubled. Store failures are retried with backoff for as long as it takes; meanwhile
//! the queue fills and ingest eventually answers 503 — loud, never silent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_model::EventBatch;
use tally_queue::{Record, Wal, WalReader};
use tally_store::duckdb::DuckStore;
use tally_store::Store;

use crate::config::WriterConfig;
use crate::dedup::Dedup;
use crate::metrics::{WRITER_BATCH_EVENTS, WRITER_ERRORS, WRITER_FLUSH_SECONDS};

pub(crate) struct Writer {
    pub wal: Wal,
    pub reader: WalReader,
    pub store: Arc<DuckStore>,
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
        let mut batches = self.decode(records);
        let mut duplicates = 0u64;
        for batch in &mut batches {
            batch.events.retain(|e| {
                let dup = self.dedup.is_duplicate(&e.uuid, e.received_at);
                duplicates += u64::from(dup);
                !dup
            });
        }
        if duplicates > 0 {
            metrics::counter!("tally_events_deduplicated_total").increment(duplicates);
        }
        let now = chrono::Utc::now().timestamp_micros();
        metrics::gauge!("tally_dedup_ids").set(self.dedup.len() as f64);
        metrics::gauge!("tally_dedup_window_seconds").set(self.dedup.window_secs(now) as f64);
        let events: usize = batches.iter().map(|b| b.events.len()).sum();
        let batches = Arc::new(batches);
        let mut backoff = Duration::from_millis(100);
        loop {
            let store = self.store.clone();
            let b = batches.clone();
            let start = Instant::now();
            let result = tokio::task::spawn_blocking(move || store.insert(&b, upto)).await;
            match result {
                Ok(Ok(_stats)) => {
                    metrics::histogram!(WRITER_FLUSH_SECONDS).record(start.elapsed().as_secs_f64());
                    metrics::histogram!(WRITER_BATCH_EVENTS).record(events as f64);
                    metrics::counter!("tally_writer_events_total").increment(events as u64);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, upto, retry_in_ms = backoff.as_millis() as u64, "store insert failed");
                }
                Err(e) => tracing::error!(error = %e, upto, "store insert panicked"),
            }
            metrics::counter!(WRITER_ERRORS, "stage" => "insert").increment(1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        if let Err(e) = self.wal.commit(upto) {
            tracing::error!(error = %e, upto, "wal commit failed; records will be replayed");
        }
    }

    fn decode(&self, records: Vec<Record>) -> Vec<EventBatch> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            match EventBatch::decode(&r.payload) {
                Ok(b) => out.push(b),
                Err(e) => {
                    // Only a bug or a foreign file could do this (records are checksummed):
                    // keep the bytes, say so loudly, and move on so the queue is not stuck.
                    tracing::error!(lsn = r.lsn, error = %e, path = %self.dead_letter.display(), "undecodable queue record moved to dead letter file");
                    metrics::counter!(WRITER_ERRORS, "stage" => "decode").increment(1);
                    let _ = append_dead_letter(&self.dead_letter, r.lsn, &r.payload);
                }
            }
        }
        out
    }
}

fn append_dead_letter(path: &PathBuf, lsn: u64, payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{lsn}\t{}", String::from_utf8_lossy(payload))?;
    f.sync_all()
}
