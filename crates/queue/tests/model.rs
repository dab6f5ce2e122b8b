//! Model test: random appends, commits, reads, reopens and crashes (with torn or cut tails)
//! against a plain `Vec` of what should be in the log.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{config, segment_path, segments, HEADER};
use proptest::prelude::*;
use tally_queue::{Lsn, Record, Wal, WalConfig, WalError};

const SEGMENT_BYTES: u64 = 200;
const MAX_PENDING: u64 = 700;

#[derive(Debug, Clone)]
enum Op {
    Append {
        len: usize,
        events: u32,
    },
    /// Commit `committed + pick % (pending + 1)`.
    Commit {
        pick: u64,
    },
    /// Read everything after `pick % (last + 1)`.
    Read {
        pick: u64,
    },
    Reopen,
    /// Drop without close, then reopen.
    Crash,
    /// Crash with a partial write after the last record of the newest segment (where the
    /// next write would have gone: into the zeros written ahead, or at the file's end).
    CrashTorn {
        junk: Vec<u8>,
        looks_like_header: bool,
    },
    /// Crash and lose the newest segment's bytes after `pick % (len + 1)`: what a machine
    /// crash does with fsync=never, or to unacknowledged writes with fsync=always. Lost
    /// bytes read as zeros where they overwrote zeros written ahead (odd `pick`), else
    /// the file is cut there.
    CrashCut {
        pick: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..90, 0u32..10).prop_map(|(len, events)| Op::Append { len, events }),
        2 => any::<u64>().prop_map(|pick| Op::Commit { pick }),
        1 => any::<u64>().prop_map(|pick| Op::Read { pick }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => (prop::collection::vec(any::<u8>(), 1..60), any::<bool>())
            .prop_map(|(junk, looks_like_header)| Op::CrashTorn { junk, looks_like_header }),
        1 => any::<u64>().prop_map(|pick| Op::CrashCut { pick }),
    ]
}

/// What the log should hold.
#[derive(Debug, Default)]
struct Model {
    /// Every record appended and not lost to a cut, committed ones included.
    records: Vec<(Lsn, Bytes, u32)>,
    committed: Lsn,
    next_lsn: Lsn,
}

impl Model {
    fn pending(&self) -> impl Iterator<Item = &(Lsn, Bytes, u32)> {
        self.records.iter().filter(|r| r.0 > self.committed)
    }

    fn pending_bytes(&self) -> u64 {
        self.pending().map(|r| HEADER + r.1.len() as u64).sum()
    }
}

fn record_payload(lsn: Lsn, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (lsn as usize * 31 + i) as u8)
            .collect::<Vec<_>>(),
    )
}

async fn read_after(wal: &Wal, after: Lsn) -> Vec<Record> {
    let mut reader = wal.reader(after);
    let mut all = Vec::new();
    loop {
        let batch = reader.next_batch(7, 150, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn wal_config(dir: &Path) -> WalConfig {
    WalConfig {
        max_pending_bytes: MAX_PENDING,
        ..config(dir, SEGMENT_BYTES)
    }
}

async fn check(wal: &Wal, model: &Model, dir: &Path) {
    let stats = wal.stats();
    assert_eq!(stats.last_lsn, model.next_lsn - 1, "last lsn");
    assert_eq!(stats.committed_lsn, model.committed, "committed lsn");
    assert_eq!(
        stats.pending_records,
        model.pending().count() as u64,
        "pending records"
    );
    assert_eq!(stats.pending_bytes, model.pending_bytes(), "pending bytes");
    let events: u64 = model.pending().map(|r| u64::from(r.2)).sum();
    assert_eq!(stats.pending_events, events, "pending events");
    assert_eq!(
        stats.oldest_pending_age.is_some(),
        stats.pending_records > 0
    );

    let files = segments(dir);
    assert_eq!(stats.segments, files.len(), "segment count");
    // Every segment but the newest still holds an uncommitted record.
    for pair in files.windows(2) {
        assert!(
            pair[1] - 1 > model.committed,
            "segment {} should be deleted",
            pair[0]
        );
    }

    let records = read_after(wal, model.committed).await;
    let expected: Vec<_> = model.pending().cloned().collect();
    let actual: Vec<_> = records
        .iter()
        .map(|r| (r.lsn, r.payload.clone(), r.events))
        .collect();
    assert_eq!(actual, expected, "records after the committed lsn");
}

/// The newest segment's first LSN and the on-disk layout the model predicts for it:
/// its records, then nothing or zeros written ahead. Every older segment ends with its
/// last record.
fn newest_segment(dir: &Path, model: &Model) -> (Lsn, Vec<u64>) {
    let files = segments(dir);
    let first = *files.last().expect("a segment");
    let mut ends = vec![0];
    for (lsn, payload, _) in &model.records {
        if *lsn >= first {
            ends.push(ends.last().unwrap() + HEADER + payload.len() as u64);
        }
    }
    let bytes = fs::read(segment_path(dir, first)).unwrap();
    let end = *ends.last().unwrap() as usize;
    assert!(
        bytes.len() >= end,
        "newest segment shorter than its records"
    );
    assert!(
        bytes[end..].iter().all(|&b| b == 0),
        "newest segment: only zeros after the records"
    );
    for pair in files.windows(2) {
        let len = fs::metadata(segment_path(dir, pair[0])).unwrap().len();
        let records: u64 = model
            .records
            .iter()
            .filter(|r| (pair[0]..pair[1]).contains(&r.0))
            .map(|r| HEADER + r.1.len() as u64)
            .sum();
        assert_eq!(
            len, records,
            "older segment {} ends with its records",
            pair[0]
        );
    }
    (first, ends)
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut model = Model {
        next_lsn: 1,
        ..Model::default()
    };
    let mut wal = Wal::open(wal_config(dir), 0).unwrap();
    for op in ops {
        match op {
            Op::Append { len, events } => {
                let payload = record_payload(model.next_lsn, len);
                let pending = model.pending_bytes();
                let result = wal.append(payload.clone(), events).await;
                if pending + HEADER + len as u64 > MAX_PENDING {
                    match result {
                        Err(WalError::Full { pending: p, limit }) => {
                            assert_eq!((p, limit), (pending, MAX_PENDING))
                        }
                        other => panic!("expected Full, got {other:?}"),
                    }
                } else {
                    assert_eq!(result.unwrap(), model.next_lsn);
                    model.records.push((model.next_lsn, payload, events));
                    model.next_lsn += 1;
                }
            }
            Op::Commit { pick } => {
                let last = model.next_lsn - 1;
                let lsn = model.committed + pick % (last - model.committed + 1);
                wal.commit(lsn).unwrap();
                model.committed = lsn;
            }
            Op::Read { pick } => {
                let after = pick % model.next_lsn;
                let records = read_after(&wal, after).await;
                assert!(records
                    .windows(2)
                    .all(|w| w[1].lsn == w[0].lsn + 1 || w[0].lsn <= model.committed));
                for record in &records {
                    assert!(record.lsn > after);
                    let expected = model.records.iter().find(|r| r.0 == record.lsn).unwrap();
                    assert_eq!((&record.payload, record.events), (&expected.1, expected.2));
                }
                let tail: Vec<_> = records
                    .iter()
                    .map(|r| r.lsn)
                    .filter(|&l| l > model.committed)
                    .collect();
                let expected: Vec<_> = model
                    .pending()
                    .map(|r| r.0)
                    .filter(|&l| l > after)
                    .collect();
                assert_eq!(tail, expected);
            }
            Op::Reopen => {
                wal.close();
                drop(wal);
                wal = Wal::open(wal_config(dir), model.committed).unwrap();
            }
            Op::Crash => {
                drop(wal);
                wal = Wal::open(wal_config(dir), model.committed).unwrap();
            }
            Op::CrashTorn {
                mut junk,
                looks_like_header,
            } => {
                drop(wal);
                let (first, ends) = newest_segment(dir, &model);
                if looks_like_header {
                    junk.splice(0..0, *b"TWL\x01");
                }
                let file = OpenOptions::new()
                    .write(true)
                    .open(segment_path(dir, first))
                    .unwrap();
                file.write_all_at(&junk, *ends.last().unwrap()).unwrap();
                drop(file);
                wal = Wal::open(wal_config(dir), model.committed).unwrap();
                newest_segment(dir, &model);
            }
            Op::CrashCut { pick } => {
                drop(wal);
                let (first, ends) = newest_segment(dir, &model);
                let cut = pick % (ends.last().unwrap() + 1);
                let file = OpenOptions::new()
                    .write(true)
                    .open(segment_path(dir, first))
                    .unwrap();
                let end = *ends.last().unwrap();
                let before = fs::read(segment_path(dir, first)).unwrap();
                let zeroed = pick % 2 == 1 && before.len() as u64 > end;
                if zeroed {
                    file.write_all_at(&vec![0; (end - cut) as usize], cut)
                        .unwrap();
                } else {
                    file.set_len(cut).unwrap();
                }
                drop(file);
                // A record survives whole if it ends before the cut or, when the lost
                // bytes read as zeros, if those of its bytes were zeros already.
                let survivors = ends
                    .windows(2)
                    .take_while(|r| {
                        let (start, end) = (r[0].max(cut) as usize, r[1] as usize);
                        r[1] <= cut || (zeroed && before[start..end].iter().all(|&b| b == 0))
                    })
                    .count() as u64;
                model.records.retain(|r| r.0 < first + survivors);
                model.next_lsn = (first + survivors).max(model.committed + 1);
                wal = Wal::open(wal_config(dir), model.committed).unwrap();
            }
        }
        check(&wal, &model, dir).await;
    }
    wal.close();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model(ops in prop::collection::vec(op(), 1..50)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(ops));
    }
}
