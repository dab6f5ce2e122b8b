//! Helpers shared by the WAL integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tally_queue::{FsyncPolicy, Lsn, Record, Wal, WalConfig};

pub const HEADER: u64 = 32;

pub fn config(dir: &Path, segment_bytes: u64) -> WalConfig {
    WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes,
        max_pending_bytes: 1 << 30,
        fsync: FsyncPolicy::Always,
    }
}

pub fn payload(lsn: Lsn) -> Bytes {
    Bytes::from(format!("record {lsn} {}", "x".repeat((lsn % 13) as usize)))
}

/// Appends `n` records whose payloads are `payload(lsn)`, checking the LSNs.
pub async fn append_n(wal: &Wal, n: u64) {
    let first = wal.stats().last_lsn + 1;
    for lsn in first..first + n {
        assert_eq!(
            wal.append(payload(lsn), (lsn % 5) as u32).await.unwrap(),
            lsn
        );
    }
}

/// Everything durable after `after` (appends that returned are readable at once).
pub async fn read_all(wal: &Wal, after: Lsn) -> Vec<Record> {
    let mut reader = wal.reader(after);
    let mut all = Vec::new();
    loop {
        let batch = reader
            .next_batch(1000, 1 << 20, Duration::ZERO)
            .await
            .unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

pub fn lsns(records: &[Record]) -> Vec<Lsn> {
    records.iter().map(|r| r.lsn).collect()
}

/// Asserts that `records` are exactly `range`, written by [`append_n`].
pub fn assert_records(records: &[Record], range: std::ops::RangeInclusive<Lsn>) {
    assert_eq!(lsns(records), range.collect::<Vec<_>>());
    for record in records {
        assert_eq!(
            record.payload,
            payload(record.lsn),
            "payload of {}",
            record.lsn
        );
        assert_eq!(record.events, (record.lsn % 5) as u32);
    }
}

/// Segment files in `dir`, by first LSN, ascending.
pub fn segments(dir: &Path) -> Vec<Lsn> {
    let mut firsts: Vec<Lsn> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".wal").map(|n| n.parse().unwrap())
        })
        .collect();
    firsts.sort_unstable();
    firsts
}

pub fn segment_path(dir: &Path, first: Lsn) -> std::path::PathBuf {
    dir.join(format!("{first:020}.wal"))
}
