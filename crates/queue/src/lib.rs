//! Tally's durable event queue.
//!
//! The embedded implementation is [`wal`]: a segmented write-ahead log with group-commit
//! fsync. Ingest handlers [`Wal::append`] one record per request and answer only once it is
//! durable; the store's writer drains it with a [`WalReader`] and [`Wal::commit`]s the LSN it
//! stored, inside the same database transaction.
//!
//! The scale-out implementation is [`streams`]: a Redis stream with a consumer group, for
//! ingest and writer processes on separate machines.

pub mod streams;
pub mod wal;

pub use streams::{
    Entry, EntryId, RedisStreams, StreamConfig, StreamError, StreamReader, StreamStats,
};
pub use wal::{FsyncPolicy, Lsn, Record, Wal, WalConfig, WalError, WalReader, WalStats};

/// Bytes an unprivileged writer may still use on the volume holding `dir` (statvfs:
/// available blocks times the fragment size).
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}
