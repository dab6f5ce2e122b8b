//! The visits table the DuckDB writer keeps equals the visits cut anew from every stored
//! event, after every batch: on random streams sent in random order and batches (late
//! events that join two visits or split one, sessions, devices linked to a user later,
//! replayed batches), and on the named cases of docs/queries.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tally_model::{Event, EventBatch, EventType};
use tally_store::duckdb::{visits::visits_from_events_sql, DuckConfig, DuckStore};
use tally_store::{Param, Sql, Store};

const MINUTE: i64 = 60_000_000;
/// 2026-11-02T00:00:00Z.
const ORIGIN: i64 = 1_793_577_600_000_000;

struct Shared {
    _dir: tempfile::TempDir,
    store: DuckStore,
    next: AtomicU64,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = DuckStore::open(&dir.path().join("v.duckdb"), DuckConfig::default()).unwrap();
        Shared {
            _dir: dir,
            store,
            next: AtomicU64::new(1),
        }
    })
}

/// A generated event: who, which session, when (minutes from the origin), which page.
#[derive(Debug, Clone)]
struct Gen {
    user: Option<u8>,
    device: Option<u8>,
    session: Option<u8>,
    minute: i64,
    page: Option<u8>,
    kind: EventType,
}

fn event(g: &Gen) -> Event {
    let mut context = Map::new();
    if let Some(p) = g.page {
        context.insert("page".into(), json!({"path": format!("/p{p}")}));
    }
    Event {
        uuid: uuid::Uuid::new_v4(),
        kind: g.kind,
        event: match g.kind {
            EventType::Page => "page_visit".into(),
            EventType::Identify => "$identify".into(),
            _ => "click".into(),
        },
        user_id: g.user.map(|u| format!("u{u}")),
        device_id: g.device.map(|d| format!("d{d}")),
        session_id: g.session.map(|s| format!("s{s}")),
        group_id: None,
        previous_id: None,
        timestamp: ORIGIN + g.minute * MINUTE,
        received_at: ORIGIN,
        properties: Map::new(),
        traits: Map::new(),
        context,
    }
}

fn gen_event() -> impl Strategy<Value = Gen> {
    (
        prop::option::weighted(0.5, 0u8..3),
        prop::option::weighted(0.7, 0u8..3),
        prop::option::weighted(0.2, 0u8..2),
        // Clustered: two days, a busy two hours each, so 30-minute edges happen often.
        (0i64..2, 0i64..120),
        prop::option::weighted(0.6, 0u8..3),
        prop_oneof![
            4 => Just(EventType::Track),
            4 => Just(EventType::Page),
            1 => Just(EventType::Identify),
        ],
    )
        .prop_map(|(user, device, session, (day, minute), page, kind)| Gen {
            user: user.or(if device.is_none() { Some(0) } else { None }),
            device,
            session,
            minute: day * 1_440 + 9 * 60 + minute,
            page,
            kind,
        })
}

fn insert(project: &str, events: &[Event]) {
    let s = shared();
    let batch = EventBatch {
        project_id: project.into(),
        events: events.to_vec(),
    };
    let lsn = s.next.fetch_add(1, Ordering::SeqCst);
    batch
        .as_stored(|b| s.store.insert(std::slice::from_ref(b), lsn))
        .unwrap();
}

fn rows(text: String, project: &str) -> Vec<Vec<Value>> {
    shared()
        .store
        .query(&Sql {
            text,
            params: vec![Param::Text(project.into())],
        })
        .unwrap()
}

const COLUMNS: &str = "session_id, person_id, epoch_us(start_ts), epoch_us(end_ts), events, \
                       pageviews, entry_page, exit_page, pages::VARCHAR";

/// The table's visits of `project`, and the visits cut anew from its events.
fn kept_and_cut(project: &str) -> (Vec<Vec<Value>>, Vec<Vec<Value>>) {
    let kept = rows(
        format!("SELECT {COLUMNS} FROM visits WHERE project_id = ? ORDER BY ALL"),
        project,
    );
    let cut = rows(
        format!(
            "SELECT {COLUMNS} FROM ({}) AS d(project_id, session_id, person_id, start_ts, end_ts, \
             events, pageviews, entry_page, exit_page, pages) WHERE project_id = ? ORDER BY ALL",
            visits_from_events_sql()
        ),
        project,
    );
    (kept, cut)
}

fn project() -> String {
    format!("p{}", shared().next.fetch_add(1, Ordering::SeqCst))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn kept_visits_equal_visits_cut_anew(
        gens in prop::collection::vec(gen_event(), 1..40)
            .prop_shuffle(),
        sizes in prop::collection::vec(1usize..8, 1..40),
        replay in any::<bool>(),
    ) {
        let project = project();
        let events: Vec<Event> = gens.iter().map(event).collect();
        let mut rest = &events[..];
        let mut sizes = sizes.iter().cycle();
        let mut last: &[Event] = &[];
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            let (batch, tail) = rest.split_at(n);
            insert(&project, batch);
            let (kept, cut) = kept_and_cut(&project);
            prop_assert_eq!(kept, cut);
            last = batch;
            rest = tail;
        }
        if replay {
            // The same events again (a client that resent them): stored twice, counted
            // twice by the raw cut, and so by the table.
            insert(&project, last);
            let (kept, cut) = kept_and_cut(&project);
            prop_assert_eq!(kept, cut);
        }
    }
}

fn at(minute: i64, user: Option<u8>, device: Option<u8>, page: u8) -> Event {
    event(&Gen {
        user,
        device,
        session: None,
        minute,
        page: Some(page),
        kind: EventType::Page,
    })
}

/// `(start minute, end minute, events)` of each visit of `project`, and checks them
/// against the visits cut anew.
fn visits(project: &str) -> Vec<(String, i64, i64, i64)> {
    let (kept, cut) = kept_and_cut(project);
    assert_eq!(kept, cut);
    kept.iter()
        .map(|r| {
            (
                r[1].as_str().unwrap().to_owned(),
                (r[2].as_i64().unwrap() - ORIGIN) / MINUTE,
                (r[3].as_i64().unwrap() - ORIGIN) / MINUTE,
                r[4].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_late_event_joins_two_visits_and_another_splits_none() {
    let p = project();
    insert(&p, &[at(0, Some(1), None, 0), at(50, Some(1), None, 1)]);
    assert_eq!(
        visits(&p),
        [("u1".into(), 0, 0, 1), ("u1".into(), 50, 50, 1)]
    );
    // 25 minutes after the first and before the second: one visit of three events.
    insert(&p, &[at(25, Some(1), None, 2)]);
    assert_eq!(visits(&p), [("u1".into(), 0, 50, 3)]);
}

#[test]
fn an_event_before_a_visit_extends_it_and_a_far_one_is_a_visit_of_its_own() {
    let p = project();
    insert(&p, &[at(100, Some(1), None, 0), at(110, Some(1), None, 0)]);
    insert(&p, &[at(80, Some(1), None, 1), at(10, Some(1), None, 1)]);
    assert_eq!(
        visits(&p),
        [("u1".into(), 10, 10, 1), ("u1".into(), 80, 110, 3)]
    );
}

#[test]
fn signing_in_merges_the_devices_visits_into_the_persons() {
    let p = project();
    // An anonymous device at 0 and 20, the user (another device) at 40.
    insert(&p, &[at(0, None, Some(7), 0), at(20, None, Some(7), 1)]);
    insert(&p, &[at(40, Some(7), Some(8), 2)]);
    assert_eq!(
        visits(&p),
        [("d7".into(), 0, 20, 2), ("u7".into(), 40, 40, 1)]
    );
    // The device signs in as u7 at 45: its visit becomes u7's, and joins u7's.
    insert(&p, &[at(45, Some(7), Some(7), 2)]);
    assert_eq!(visits(&p), [("u7".into(), 0, 45, 4)]);
}

#[test]
fn a_replayed_batch_is_counted_as_the_raw_events_count_it() {
    let p = project();
    let batch = [at(0, Some(1), None, 0), at(5, Some(1), None, 1)];
    insert(&p, &batch);
    insert(&p, &batch);
    assert_eq!(visits(&p), [("u1".into(), 0, 5, 4)]);
}

#[test]
fn a_store_from_before_the_table_gets_it_built_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.duckdb");
    let events = vec![
        at(0, Some(1), None, 0),
        at(90, Some(1), None, 1),
        at(95, None, Some(2), 1),
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
