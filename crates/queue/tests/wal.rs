//! Behaviour of the WAL through its public API, against real files.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tally_queue::{FsyncPolicy, Wal, WalConfig, WalError};

#[tokio::test]
async fn append_then_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 1 << 20), 0).unwrap();
    append_n(&wal, 20).await;

    let records = read_all(&wal, 0).await;
    assert_records(&records, 1..=20);
    assert!(records
        .windows(2)
        .all(|w| w[0].appended_at_ms <= w[1].appended_at_ms));
    assert_records(&read_all(&wal, 7).await, 8..=20);
    assert!(read_all(&wal, 20).await.is_empty());

    let stats = wal.stats();
    assert_eq!(
        (stats.last_lsn, stats.committed_lsn, stats.pending_records),
        (20, 0, 20)
    );
}

#[tokio::test]
async fn batches_respect_max_records_and_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 1 << 20), 0).unwrap();
    for _ in 0..10 {
        wal.append(Bytes::from(vec![7; 100]), 1).await.unwrap();
    }
    let mut reader = wal.reader(0);
    let wait = Duration::from_millis(10);
    assert_eq!(
        lsns(&reader.next_batch(3, 1 << 20, wait).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        lsns(&reader.next_batch(100, 250, wait).await.unwrap()),
        [4, 5]
    );
    // A record bigger than max_bytes still comes out, alone.
    assert_eq!(lsns(&reader.next_batch(100, 10, wait).await.unwrap()), [6]);
    assert_eq!(
        lsns(&reader.next_batch(100, 1 << 20, wait).await.unwrap()),
        [7, 8, 9, 10]
    );
    assert!(reader
        .next_batch(100, 1 << 20, wait)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn lsns_continue_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 1 << 20), 0).unwrap();
    append_n(&wal, 5).await;
    wal.close();
    drop(wal);

    let wal = Wal::open(config(dir.path(), 1 << 20), 0).unwrap();
    assert_eq!(wal.stats().last_lsn, 5);
    append_n(&wal, 3).await;
    assert_records(&read_all(&wal, 0).await, 1..=8);
    drop(wal);

    // Dropping without close() is fine too.
    let wal = Wal::open(config(dir.path(), 1 << 20), 0).unwrap();
    append_n(&wal, 1).await;
    assert_records(&read_all(&wal, 0).await, 1..=9);
}

#[tokio::test]
async fn lsns_never_go_behind_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 1 << 20), 41).unwrap();
    assert_eq!(wal.stats().last_lsn, 41);
    assert_eq!(wal.append(payload(42), 2).await.unwrap(), 42);
    wal.close();
    drop(wal);

    // The store is ahead of what the log kept (e.g. lost with fsync=never).
    let wal = Wal::open(config(dir.path(), 1 << 20), 100).unwrap();
    assert_eq!(wal.append(payload(101), 1).await.unwrap(), 101);
    assert_records(&read_all(&wal, 100).await, 101..=101);
    assert_eq!(
        segments(dir.path()),
        [101],
        "the old, committed segment is deleted"
    );
}

#[tokio::test]
async fn reader_starts_mid_log_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 300), 0).unwrap();
    append_n(&wal, 60).await;
    wal.close();
    drop(wal);
    assert!(segments(dir.path()).len() > 5);

    let wal = Wal::open(config(dir.path(), 300), 0).unwrap();
    for after in [23, 24, 0, 59, 60] {
        let records = read_all(&wal, after).await;
        if after < 60 {
            assert_records(&records, after + 1..=60);
        } else {
            assert!(records.is_empty());
        }
    }
    // Start exactly at segment boundaries too.
    for first in segments(dir.path()) {
        assert_records(&read_all(&wal, first - 1).await, first..=60);
    }
}

#[tokio::test]
async fn segments_roll_and_committed_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 256), 0).unwrap();
    append_n(&wal, 40).await;

    let firsts = segments(dir.path());
    assert!(firsts.len() >= 5, "{firsts:?}");
    assert_eq!(wal.stats().segments, firsts.len());
    for first in &firsts[1..] {
        let len = std::fs::metadata(segment_path(dir.path(), *first))
            .unwrap()
            .len();
        assert!(len <= 256, "segment {first} has {len} bytes");
    }

    // Commit the first record of a later segment that holds more (a segment can hold one
    // record, when a spare segment took over after it): the segments before it are done.
    let k = (2..firsts.len() - 1)
        .find(|&k| firsts[k + 1] - firsts[k] >= 2)
        .expect("a segment of two records or more");
    let commit = firsts[k];
    wal.commit(commit).unwrap();
    assert_eq!(segments(dir.path()), firsts[k..].to_vec());
    assert_eq!(wal.stats().segments, firsts.len() - k);
    assert_records(&read_all(&wal, commit).await, commit + 1..=40);

    // Committing everything keeps only the segment being written.
    wal.commit(40).unwrap();
    assert_eq!(segments(dir.path()), [*firsts.last().unwrap()]);
    append_n(&wal, 1).await;
    assert_records(&read_all(&wal, 40).await, 41..=41);

    // A reader behind the store starts at the oldest record left.
    let records = read_all(&wal, 0).await;
    assert_eq!(records.last().unwrap().lsn, 41);
    // (Record 41 may have started a segment of its own, the spare, and the finished one
    // been deleted: all of it was committed.)
    assert_eq!(records[0].lsn, segments(dir.path())[0]);
    assert!(records[0].lsn == *firsts.last().unwrap() || records[0].lsn == 41);
}

#[tokio::test]
async fn open_deletes_segments_the_store_already_has() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 256), 0).unwrap();
    append_n(&wal, 40).await;
    wal.close();
    drop(wal);
    let firsts = segments(dir.path());
    // The store has the first record of a segment holding more than that.
    let k = (2..firsts.len() - 1)
        .find(|&k| firsts[k + 1] - firsts[k] >= 2)
        .expect("a segment of two records or more");
    let committed = firsts[k];

    let wal = Wal::open(config(dir.path(), 256), committed).unwrap();
    assert_eq!(segments(dir.path()), firsts[k..].to_vec());
    let stats = wal.stats();
    assert_eq!(stats.committed_lsn, committed);
    assert_eq!(stats.pending_records, 40 - committed);
    assert_records(&read_all(&wal, committed).await, committed + 1..=40);
}

#[tokio::test]
async fn full_at_the_bound_until_commit_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let record = HEADER + 10;
    let config = WalConfig {
        max_pending_bytes: 3 * record,
        ..config(dir.path(), 1 << 20)
    };
    let wal = Wal::open(config, 0).unwrap();
    let ten = || Bytes::from_static(b"0123456789");
    for lsn in 1..=3 {
        assert_eq!(wal.append(ten(), 1).await.unwrap(), lsn);
    }
    match wal.append(Bytes::from_static(b"x"), 1).await {
        Err(WalError::Full { pending, limit }) => {
            assert_eq!((pending, limit), (3 * record, 3 * record))
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(wal.stats().last_lsn, 3, "a refused append writes nothing");

    wal.commit(1).unwrap();
    assert_eq!(wal.stats().pending_bytes, 2 * record);
    assert_eq!(wal.append(ten(), 1).await.unwrap(), 4);
    assert!(matches!(
        wal.append(ten(), 1).await,
        Err(WalError::Full { .. })
    ));
    // Record 1 is committed: its segment may be gone (when a spare segment took over
    // after it).
    assert_eq!(lsns(&read_all(&wal, 1).await), [2, 3, 4]);
}

#[tokio::test]
async fn close_flushes_queued_appends_and_refuses_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    // With a long interval nothing is fsynced until close.
    let config = WalConfig {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..config(dir.path(), 4096)
    };
    let wal = Wal::open(config.clone(), 0).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let wal = wal.clone();
            tokio::spawn(async move { wal.append(Bytes::from(format!("r{i}")), 1).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let closer = wal.clone();
    tokio::task::spawn_blocking(move || closer.close())
        .await
        .unwrap();

    let mut acked = HashSet::new();
    // An append queued before close must be written, never dropped; one that reached the
    // log after close is refused with Closed (which tasks won that race depends on
    // scheduling, so both outcomes are allowed, but every Ok must be readable below).
    for task in tasks {
        match task.await.unwrap() {
            Ok(lsn) => assert!(acked.insert(lsn)),
            Err(WalError::Closed) => {}
            Err(e) => panic!("unexpected append error: {e}"),
        }
    }
    assert!(!acked.is_empty(), "no append was queued before close");
    assert!(matches!(
        wal.append(Bytes::new(), 0).await,
        Err(WalError::Closed)
    ));

    // A reader of a closed log drains it, then returns at once instead of waiting.
    let mut reader = wal.reader(0);
    let mut read = HashSet::new();
    loop {
        let started = Instant::now();
        let batch = reader
            .next_batch(50, 1 << 20, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        if batch.is_empty() {
            break;
        }
        read.extend(batch.iter().map(|r| r.lsn));
    }
    assert_eq!(read, acked);
    drop(wal);

    let wal = Wal::open(config, 0).unwrap();
    let recovered: HashSet<_> = read_all(&wal, 0).await.iter().map(|r| r.lsn).collect();
    assert_eq!(recovered, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_distinct_lsns_and_are_read_once() {
    const TASKS: u64 = 32;
    const PER_TASK: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 2048), 0).unwrap();

    // Read while appending, across segment rolls.
    let reading = {
        let mut reader = wal.reader(0);
        tokio::spawn(async move {
            let mut records = Vec::new();
            while records.len() < (TASKS * PER_TASK) as usize {
                let batch = reader
                    .next_batch(64, 1 << 20, Duration::from_secs(10))
                    .await
                    .unwrap();
                assert!(!batch.is_empty(), "reader starved");
                records.extend(batch);
            }
            records
        })
    };
    let appending: Vec<_> = (0..TASKS)
        .map(|task| {
            let wal = wal.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..PER_TASK {
                    let body = Bytes::from(format!("{task}/{i}"));
                    acked.push((wal.append(body.clone(), 1).await.unwrap(), body));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in appending {
        acked.extend(task.await.unwrap());
    }
    acked.sort();
    let expected: Vec<_> = (1..=TASKS * PER_TASK).collect();
    assert_eq!(
        acked.iter().map(|(lsn, _)| *lsn).collect::<Vec<_>>(),
        expected
    );

    let records = reading.await.unwrap();
    assert_eq!(lsns(&records), expected, "read in order, each exactly once");
    for (record, (_, body)) in records.iter().zip(&acked) {
        assert_eq!(&record.payload, body);
    }
    assert!(wal.stats().segments > 1);
}

#[tokio::test]
async fn reader_wakes_on_append_and_times_out_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 1 << 20), 0).unwrap();
    let mut reader = wal.reader(0);

    let started = Instant::now();
    let batch = reader
        .next_batch(10, 1 << 20, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(batch.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(100));

    let writer = wal.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        writer.append(payload(1), 1).await.unwrap();
    });
    let started = Instant::now();
    let batch = reader
        .next_batch(10, 1 << 20, Duration::from_secs(30))
        .await
        .unwrap();
    assert_records(&batch, 1..=1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn linger_fills_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 1 << 20), 0).unwrap();
    let mut reader = wal.reader(0).with_linger(Duration::from_secs(10));
    let writer = wal.clone();
    tokio::spawn(async move {
        for lsn in 1..=5 {
            writer.append(payload(lsn), 1).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Linger ends as soon as the batch is full.
    let started = Instant::now();
    let batch = reader
        .next_batch(5, 1 << 20, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lsns(&batch), [1, 2, 3, 4, 5]);
    assert!(started.elapsed() < Duration::from_secs(5));

    // And when it elapses the partial batch comes out.
    wal.append(payload(6), 1).await.unwrap();
    let mut reader = wal.reader(5).with_linger(Duration::from_millis(50));
    let batch = reader
        .next_batch(5, 1 << 20, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lsns(&batch), [6]);
}

#[tokio::test]
async fn oversized_payload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 1 << 20), 0).unwrap();
    let err = wal
        .append(Bytes::from(vec![0; 64 * 1024 * 1024 + 1]), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, WalError::Io(ref e) if e.kind() == std::io::ErrorKind::InvalidInput));
    assert_eq!(wal.append(payload(1), 1).await.unwrap(), 1);
}

#[tokio::test]
async fn every_fsync_policy_round_trips() {
    for fsync in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            fsync,
            ..config(dir.path(), 200)
        };
        let wal = Wal::open(config.clone(), 0).unwrap();
        append_n(&wal, 10).await;
        assert_records(&read_all(&wal, 0).await, 1..=10);
        tokio::time::sleep(Duration::from_millis(20)).await;
        append_n(&wal, 10).await;
        wal.close();
        drop(wal);
        let wal = Wal::open(config, 0).unwrap();
        assert_records(&read_all(&wal, 0).await, 1..=20);
    }
}

/// A reader that keeps up with the writer reads each record once, in order, although its
/// buffer holds the zeros written ahead of the newest segment's records when it reads:
/// the writer then overwrites them, and the reader must read those bytes again.
#[tokio::test]
async fn a_reader_keeping_up_reads_records_written_over_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 64 * 1024), 0).unwrap();
    let mut reader = wal.reader(0);
    let mut read = Vec::new();
    for lsn in 1..=2_000u64 {
        assert_eq!(
            wal.append(payload(lsn), (lsn % 5) as u32).await.unwrap(),
            lsn
        );
        if lsn == 1 {
            // Time for the spare segment to be ready: the next append moves to it.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let batch = reader
            .next_batch(1000, 1 << 20, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(lsns(&batch), [lsn], "each record read once, when written");
        read.extend(batch);
    }
    assert_records(&read, 1..=2_000);
    let files = segments(dir.path());
    assert!(files.len() >= 3, "the records span segments: {files:?}");
    // The newest segment is longer than its records: the zeros written ahead.
    let newest = std::fs::metadata(segment_path(dir.path(), *files.last().unwrap()))
        .unwrap()
        .len();
    assert_eq!(newest, 64 * 1024);
}

/// Commits that keep up with appends walk records the writer wrote over zeros that the
/// commit's own reading had buffered; the counters stay exact.
#[tokio::test]
async fn commits_keeping_up_count_records_written_over_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), 64 * 1024), 0).unwrap();
    append_n(&wal, 1).await;
    // Time for the spare segment to be ready: the next append moves to it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for lsn in 2..=1_000u64 {
        append_n(&wal, 1).await;
        wal.commit(lsn - 1).unwrap();
        let stats = wal.stats();
        assert_eq!(
            (stats.committed_lsn, stats.pending_records),
            (lsn - 1, 1),
            "after committing {}",
            lsn - 1
        );
        assert_eq!(stats.pending_bytes, HEADER + payload(lsn).len() as u64);
    }
}

/// A small volume (a 48 MiB tmpfs, mounted by the test: it runs as root in CI) with
/// 64 MiB segments: no spare is made, appends still work, and nothing is left behind.
#[tokio::test]
async fn no_spare_segment_without_room_for_it_and_none_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "this test mounts a tmpfs and needs root");
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let wal_dir = dir.path().join("wal");
    {
        let wal = Wal::open(config(&wal_dir, 64 << 20), 0).unwrap();
        append_n(&wal, 50).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !wal_dir.join("spare-segment.tmp").exists(),
            "a 64 MiB spare on a 48 MiB volume"
        );
        assert_records(&read_all(&wal, 0).await, 1..=50);
        wal.close();
    }
    // With room, a spare is made; closing removes it.
    let big = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(big.path(), 1 << 20), 0).unwrap();
    append_n(&wal, 5).await;
    let spare = big.path().join("spare-segment.tmp");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !spare.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(spare.exists(), "a spare is prepared when there is room");
    wal.close();
    assert!(!spare.exists(), "closing leaves no spare behind");
}
