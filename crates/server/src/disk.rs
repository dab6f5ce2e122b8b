//! The free space of the data volume, and the reserve ingest leaves for the store.
//!
//! The WAL would otherwise take every byte the volume has: DuckDB's own commits and
//! checkpoints then fail for lack of space and the store never catches up. So the
//! embedded server reads the volume's free space (statvfs, every 250 ms, off the request
//! path) and ingest answers 503 `disk_full` with `Retry-After` while it is below
//! `queue.min_free_bytes`; `/readyz` says so. Ingest resumes by itself once space is
//! freed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The last reading of the data volume's free space.
pub(crate) struct Disk {
    dir: PathBuf,
    reserve: u64,
    free: AtomicU64,
}

impl Disk {
    /// Reads `dir`'s volume once now; [`Disk::watch`] keeps the reading fresh.
    pub(crate) fn new(dir: PathBuf, reserve: u64) -> Self {
        let disk = Self {
            dir,
            reserve,
            free: AtomicU64::new(u64::MAX),
        };
        disk.read();
        disk
    }

    fn read(&self) {
        match tally_queue::free_bytes(&self.dir) {
            Ok(free) => {
                self.free.store(free, Ordering::Release);
                metrics::gauge!("tally_disk_free_bytes").set(free as f64);
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot read the volume's free space")
            }
        }
    }

    /// Re-reads the free space every 250 ms until the task is aborted.
    pub(crate) fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let disk = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let reading = disk.clone();
                let _ = tokio::task::spawn_blocking(move || reading.read()).await;
            }
        })
    }

    /// Bytes free on the volume at the last reading.
    pub(crate) fn free(&self) -> u64 {
        self.free.load(Ordering::Acquire)
    }

    pub(crate) fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Whether the volume has less free than the reserve: ingest refuses.
    pub(crate) fn low(&self) -> bool {
        self.free() < self.reserve
    }
}
