//! A DuckDB store from before the visits table gets it built from its events when opened,
//! once. (That the table the writer keeps equals the visits cut anew, batch after batch,
//! is checked with the engine's answers in crates/query/tests/visits_table.rs.)

use serde_json::{json, Map};
use tally_model::{Event, EventBatch, EventType};
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::{Sql, Store};

const MINUTE: i64 = 60_000_000;
/// 2026-11-02T00:00:00Z.
const ORIGIN: i64 = 1_793_577_600_000_000;

fn at(minute: i64, user: Option<&str>, device: Option<&str>) -> Event {
    Event {
        uuid: uuid::Uuid::new_v4(),
        kind: EventType::Page,
        event: "page_visit".into(),
        user_id: user.map(Into::into),
        device_id: device.map(Into::into),
        session_id: None,
        group_id: None,
        previous_id: None,
        timestamp: ORIGIN + minute * MINUTE,
        received_at: ORIGIN,
        properties: Map::new(),
        traits: Map::new(),
        context: Map::new(),
    }
}

#[test]
fn a_store_from_before_the_table_gets_it_built_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.duckdb");
    let events = vec![
        at(0, Some("u1"), None),
        at(90, Some("u1"), None),
        at(95, None, Some("d2")),
    ];
    {
        let store = DuckStore::open(&path, DuckConfig::default()).unwrap();
        let batch = EventBatch {
            project_id: "p".into(),
            events,
        };
        batch
            .as_stored(|b| store.insert(std::slice::from_ref(b), 1))
            .unwrap();
        store.checkpoint().unwrap();
    }
    // Back to the schema of the version before: no visits table.
    {
        let conn = duckdb::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE visits; DROP TABLE visits_backfill; \
             DELETE FROM schema_migrations WHERE version = 3; CHECKPOINT;",
        )
        .unwrap();
    }
    let count = |store: &DuckStore| {
        store
            .query(&Sql {
                text: "SELECT count(*), sum(events) FROM visits".into(),
                params: vec![],
            })
            .unwrap()
    };
    let store = DuckStore::open(&path, DuckConfig::default()).unwrap();
    assert_eq!(count(&store), vec![vec![json!(3), json!(3)]]);
    drop(store);
    // Opened again: built once, not again (nor twice).
    let store = DuckStore::open(&path, DuckConfig::default()).unwrap();
    assert_eq!(count(&store), vec![vec![json!(3), json!(3)]]);
}
