//! The embedded DuckDB store's own behaviour (the answers its queries give are tested in
//! crates/query's conformance and report tests).

use serde_json::{json, Map};
use tally_model::{Event, EventBatch, EventType};
use tally_store::duckdb::{DuckConfig, DuckStore, ROW_GROUP_ROWS};
use tally_store::{Sql, Store};
use uuid::Uuid;

const T0: i64 = 1_790_000_000_000_000;

fn batch(first: u64, n: u64) -> EventBatch {
    let properties = json!({"plan": "pro", "page_path": "/pricing"});
    let events = (first..first + n)
        .map(|i| Event {
            uuid: Uuid::new_v4(),
            kind: EventType::Track,
            event: "bench_event".into(),
            user_id: Some(format!("u{}", i % 1000)),
            device_id: Some("d1".into()),
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: T0 + i as i64,
            received_at: T0 + i as i64,
            properties: properties.as_object().cloned().unwrap_or_default(),
            traits: Map::new(),
            context: Map::new(),
        })
        .collect();
    EventBatch {
        project_id: "p".into(),
        events,
    }
}

fn count(store: &DuckStore) -> u64 {
    let rows = store
        .query(&Sql {
            text: "SELECT count(*) FROM events".into(),
            params: vec![],
        })
        .unwrap();
    rows[0][0].as_u64().unwrap()
}

/// Inserts `total` events in batches of `per_batch`, from LSN `lsn + 1` on; returns the
/// number of events stored when each checkpoint ran, and the last LSN.
fn insert(store: &DuckStore, total: u64, per_batch: u64, mut lsn: u64) -> (Vec<u64>, u64) {
    let (mut sent, mut checkpoints) = (0, Vec::new());
    while sent < total {
        let n = per_batch.min(total - sent);
        lsn += 1;
        let stats = store.insert(&[batch(sent, n)], lsn).unwrap();
        assert_eq!(stats.events as u64, n);
        sent += n;
        if stats.checkpoint.is_some() {
            checkpoints.push(sent);
        }
    }
    (checkpoints, lsn)
}

/// The store checkpoints after the insert that fills a row group, not whenever DuckDB's
/// log reaches a size, and counts on from the rows it finds when reopened.
#[test]
fn a_checkpoint_follows_each_insert_that_fills_a_row_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.duckdb");
    let store = DuckStore::open(&path, DuckConfig::default()).unwrap();
    let total = 2 * ROW_GROUP_ROWS + 5_000;
    let (checkpoints, lsn) = insert(&store, total, 10_000, 0);
    // The batches that took the table past 122,880 and 245,760 rows, and no other.
    assert_eq!(checkpoints, vec![130_000, 250_000]);
    assert_eq!(count(&store), total);
    let wal = path.with_extension("duckdb.wal");
    let logged = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert!(
        logged < 4 << 20,
        "the log holds only what came after the last checkpoint, not {logged} bytes"
    );

    drop(store);
    let store = DuckStore::open(&path, DuckConfig::default()).unwrap();
    assert_eq!(count(&store), total);
    // 250,000 stored: the third row group fills at 368,640.
    let (checkpoints, last) = insert(&store, ROW_GROUP_ROWS, 20_000, lsn);
    assert_eq!(checkpoints, vec![120_000]);
    assert_eq!(store.committed_lsn().unwrap(), last);
    assert_eq!(count(&store), total + ROW_GROUP_ROWS);
}
