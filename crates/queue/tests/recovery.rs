//! Crash recovery: damaged tails are cut, damage elsewhere is an error.

mod common;

use std::fs::{self, OpenOptions};
use std::path::Path;

use common::*;
use tally_queue::{Lsn, Wal, WalError};

const SEGMENT_BYTES: u64 = 300;
const RECORDS: u64 = 25;

fn record_len(lsn: Lsn) -> u64 {
    HEADER + payload(lsn).len() as u64
}

/// A closed log of `RECORDS` records spread over several segments.
async fn pristine() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(config(dir.path(), SEGMENT_BYTES), 0).unwrap();
    append_n(&wal, RECORDS).await;
    wal.close();
    dir
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

/// Byte offset of each record of the segment starting at `first`, plus its end.
fn layout(first: Lsn, last: Lsn) -> Vec<u64> {
    let mut offsets = vec![0];
    for lsn in first..=last {
        offsets.push(offsets.last().unwrap() + record_len(lsn));
    }
    offsets
}

/// Reopens the damaged log and checks it holds exactly `1..=survivors` and takes appends.
async fn assert_recovers_to(dir: &Path, survivors: Lsn, what: &str) {
    let wal = Wal::open(config(dir, SEGMENT_BYTES), 0)
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let records = read_all(&wal, 0).await;
    assert_eq!(
        lsns(&records),
        (1..=survivors).collect::<Vec<_>>(),
        "{what}"
    );
    assert_records(&records, 1..=survivors);
    assert_eq!(
        wal.append(payload(survivors + 1), 0).await.unwrap(),
        survivors + 1,
        "{what}"
    );
    let records = read_all(&wal, survivors).await;
    assert_eq!(lsns(&records), [survivors + 1], "{what}");
    assert_eq!(records[0].payload, payload(survivors + 1), "{what}");
}

#[tokio::test]
async fn truncation_at_every_offset_of_the_last_segment() {
    let original = pristine().await;
    let firsts = segments(original.path());
    assert!(firsts.len() >= 3);
    let last_first = *firsts.last().unwrap();
    let offsets = layout(last_first, RECORDS);
    let path = segment_path(original.path(), last_first);
    assert_records_then_zeros(&path, *offsets.last().unwrap());

    for cut in 0..*offsets.last().unwrap() {
        let dir = copy_dir(original.path());
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), last_first));
        file.unwrap().set_len(cut).unwrap();
        // Records ending at or before the cut survive.
        let whole = offsets.iter().skip(1).filter(|&&end| end <= cut).count() as u64;
        assert_recovers_to(dir.path(), last_first - 1 + whole, &format!("cut at {cut}")).await;
        let kept = offsets[whole as usize];
        let len = fs::metadata(segment_path(dir.path(), last_first))
            .unwrap()
            .len();
        assert!(
            len >= kept,
            "the partial record is gone, the complete ones stay"
        );
    }
}

#[tokio::test]
async fn flipped_bytes_in_the_last_segment_cut_from_the_damaged_record() {
    let original = pristine().await;
    let last_first = *segments(original.path()).last().unwrap();
    let offsets = layout(last_first, RECORDS);
    for (index, window) in offsets.windows(2).enumerate() {
        let lsn = last_first + index as u64;
        for at in window[0]..window[1] {
            for mask in [0x01u8, 0xff] {
                let dir = copy_dir(original.path());
                let path = segment_path(dir.path(), last_first);
                let mut bytes = fs::read(&path).unwrap();
                bytes[at as usize] ^= mask;
                fs::write(&path, bytes).unwrap();
                let what = format!("flip {mask:#x} at byte {at} (record {lsn})");
                assert_recovers_to(dir.path(), lsn - 1, &what).await;
            }
        }
    }
}

/// The newest segment at `path` holds `records` bytes of records, then nothing or the
/// zeros written ahead of the next records.
fn assert_records_then_zeros(path: &Path, records: u64) {
    let bytes = fs::read(path).unwrap();
    assert!(bytes.len() as u64 >= records);
    assert!(bytes[records as usize..].iter().all(|&b| b == 0));
}

#[tokio::test]
async fn garbage_after_the_last_record_is_cut() {
    let original = pristine().await;
    let last_first = *segments(original.path()).last().unwrap();
    let end = *layout(last_first, RECORDS).last().unwrap();
    for junk in [b"TWL\x01 not really a record".to_vec(), vec![0xff; 7]] {
        let dir = copy_dir(original.path());
        let path = segment_path(dir.path(), last_first);
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(end as usize);
        bytes.extend_from_slice(&junk);
        bytes.extend_from_slice(&[0; 100]);
        fs::write(&path, bytes).unwrap();
        assert_recovers_to(dir.path(), RECORDS, "junk tail").await;
        assert_next_record_after(&path, end, RECORDS + 1);
    }
}

/// After recovery and one append, the segment at `path` holds its `kept` bytes of
/// records, then either nothing (the append rolled to a new segment, cutting this one to
/// its records) or the record `lsn` followed by nothing or zeros.
fn assert_next_record_after(path: &Path, kept: u64, lsn: Lsn) {
    let bytes = fs::read(path).unwrap();
    if bytes.len() as u64 == kept {
        return;
    }
    let end = (kept + record_len(lsn)) as usize;
    assert!(bytes.len() >= end, "record {lsn} follows the kept ones");
    assert_eq!(&bytes[kept as usize + 32..end], &payload(lsn)[..]);
    assert!(bytes[end..].iter().all(|&b| b == 0), "only zeros after it");
}

/// Zeros after the last record are space written ahead (a torn write into it leaves
/// zeros too): nothing is cut, and the next record goes where they start.
#[tokio::test]
async fn zeros_after_the_last_record_are_kept_and_written_over() {
    let original = pristine().await;
    let last_first = *segments(original.path()).last().unwrap();
    let offsets = layout(last_first, RECORDS);
    let end = *offsets.last().unwrap();
    // Zeros where the last record was (its write never reached the disk), or after it.
    for zero_from in [offsets[offsets.len() - 2], end] {
        let dir = copy_dir(original.path());
        let path = segment_path(dir.path(), last_first);
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(zero_from as usize);
        bytes.resize(end as usize + 4096, 0);
        fs::write(&path, bytes).unwrap();
        let survivors = if zero_from == end {
            RECORDS
        } else {
            RECORDS - 1
        };
        let what = format!("zeros from byte {zero_from}");
        // Opening is not damage: nothing cut.
        drop(Wal::open(config(dir.path(), SEGMENT_BYTES), 0).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().len(), end + 4096, "{what}");
        assert_recovers_to(dir.path(), survivors, &what).await;
        let kept = offsets[(survivors - last_first + 1) as usize];
        assert_next_record_after(&path, kept, survivors + 1);
    }
}

#[tokio::test]
async fn damage_in_an_older_segment_is_an_error() {
    let original = pristine().await;
    let firsts = segments(original.path());
    // An older segment of two records or more (one can hold a single record, when a
    // spare segment took over after it).
    let k = (0..firsts.len() - 1)
        .find(|&k| firsts[k + 1] - firsts[k] >= 2)
        .expect("an older segment of two records or more");
    let second = firsts[k];
    let offsets = layout(second, firsts[k + 1] - 1);

    // A flipped byte in the middle of the segment.
    let dir = copy_dir(original.path());
    let path = segment_path(dir.path(), second);
    let mut bytes = fs::read(&path).unwrap();
    let at = offsets[1] + 20;
    bytes[at as usize] ^= 0x40;
    fs::write(&path, bytes).unwrap();
    match Wal::open(config(dir.path(), SEGMENT_BYTES), 0) {
        Err(WalError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, format!("{second:020}.wal"));
            assert_eq!(offset, offsets[1]);
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, got a log"),
    }
    assert_eq!(segments(dir.path()), firsts, "nothing deleted");

    // A torn tail is not a crash artefact there either: the next segment exists.
    let dir = copy_dir(original.path());
    let file = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), second))
        .unwrap();
    file.set_len(offsets.last().unwrap() - 3).unwrap();
    assert!(matches!(
        Wal::open(config(dir.path(), SEGMENT_BYTES), 0),
        Err(WalError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn damage_in_an_older_committed_segment_is_still_reported() {
    // Recovery verifies everything before deleting anything, so a bad disk is noticed.
    let original = pristine().await;
    let first = segments(original.path())[0];
    let path = segment_path(original.path(), first);
    let mut bytes = fs::read(&path).unwrap();
    bytes[40] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(matches!(
        Wal::open(config(original.path(), SEGMENT_BYTES), 0),
        Err(WalError::Corrupt { .. })
    ));
}

/// A finished segment is cut to its records before the next one starts; if a crash kept
/// that cut from the disk, its zeros are still there, and readers go on to the next
/// segment at them as at its end.
#[tokio::test]
async fn zeros_after_an_older_segments_records_are_its_end() {
    let original = pristine().await;
    let firsts = segments(original.path());
    for &older in &firsts[..firsts.len() - 1] {
        let dir = copy_dir(original.path());
        let path = segment_path(dir.path(), older);
        let mut bytes = fs::read(&path).unwrap();
        bytes.resize(bytes.len() + 4096, 0);
        fs::write(&path, bytes).unwrap();
        assert_recovers_to(dir.path(), RECORDS, &format!("zeros after segment {older}")).await;
    }
}
