//! Tally's durable event queue.
//!
//! The embedded implementation is [`wal`]: a segmented write-ahead log with group-commit
//! fsync. Ingest handlers [`Wal::append`] one record per request and answer only once it is
//! durable; the store's writer drains it with a [`WalReader`] and [`Wal::commit`]s the LSN it
//! stored, inside the same database transaction.

pub mod wal;

pub use wal::{FsyncPolicy, Lsn, Record, Wal, WalConfig, WalError, WalReader, WalStats};
