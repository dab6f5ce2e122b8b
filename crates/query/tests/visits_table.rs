//! The visits table (DuckDB) and the answers read from it.
//!
//! - The table the writer keeps equals the visits cut anew from every stored event, after
//!   every batch: on random streams sent in random order and batches (late events that
//!   join two visits or split one, sessions, devices linked to a user later, replayed
//!   batches), and on named cases.
//! - Visit metrics read from it answer as visits cut from the raw events do, over random
//!   ranges whose edges cut visits, for the dashboard's top row and its breakdowns by page,
//!   entry page and exit page. The raw plan is what the engine runs when a filter is
//!   present, so each query is asked twice: as is (the table) and with a filter every
//!   event passes (the raw cut). Named cases check the figures by hand too.

mod common;
use common::{now, origin, shared, MINUTE};

use chrono::DateTime;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tally_model::{Event, EventBatch, EventType};
use tally_query::run;
use tally_store::duckdb::visits::visits_from_events_sql;
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::{Param, Sql, Store, VisitsPath};

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
    let mut properties = Map::new();
    if let Some(p) = g.page {
        properties.insert("path".into(), json!(format!("/p{p}")));
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
        timestamp: origin() + g.minute * MINUTE,
        received_at: origin(),
        properties,
        traits: Map::new(),
        context: Map::new(),
    }
}

fn gen_event() -> impl Strategy<Value = Gen> {
    (
        prop::option::weighted(0.5, 0u8..3),
        prop::option::weighted(0.7, 0u8..3),
        prop::option::weighted(0.2, 0u8..2),
        // Two busy hours around midnight UTC on two days, so ranges and days cut visits.
        (0i64..2, 0i64..150),
        prop::option::weighted(0.7, 0u8..3),
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
            minute: day * 1_440 + 23 * 60 + minute,
            page,
            kind,
        })
}

/// Stores `events` as one writer batch; says how the visits table took it in.
fn insert(project: &str, events: &[Event]) -> VisitsPath {
    let s = shared();
    insert_into(&s.store, s.next(), project, events)
}

fn insert_into(store: &DuckStore, lsn: u64, project: &str, events: &[Event]) -> VisitsPath {
    EventBatch {
        project_id: project.into(),
        events: events.to_vec(),
    }
    .as_stored(|b| store.insert(std::slice::from_ref(b), lsn))
    .unwrap()
    .visits
}

/// Stores `events` in batches of the sizes given (cycled); after each, checks the table.
fn store_in_batches(project: &str, events: &[Event], sizes: &[usize]) {
    let mut rest = events;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at((*sizes.next().unwrap()).min(rest.len()));
        insert(project, batch);
        let (kept, cut) = kept_and_cut(project);
        assert_eq!(kept, cut, "the visits table after a batch of {project}");
        rest = tail;
    }
}

fn rows(store: &DuckStore, text: String, project: &str) -> Vec<Vec<Value>> {
    store
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
    kept_and_cut_in(&shared().store, project)
}

fn kept_and_cut_in(store: &DuckStore, project: &str) -> (Vec<Vec<Value>>, Vec<Vec<Value>>) {
    let kept = rows(
        store,
        format!("SELECT {COLUMNS} FROM visits WHERE project_id = ? ORDER BY ALL"),
        project,
    );
    let cut = rows(
        store,
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
    format!("p{}", shared().next())
}

fn ask(project: &str, q: &Value) -> Value {
    let mut r = run(&shared().store, project, q, now()).unwrap();
    r.as_object_mut().unwrap().remove("query");
    r
}

/// `q` as the table answers it, and as the raw cut does (a filter every event passes).
fn both(project: &str, q: Value) -> (Value, Value) {
    let table = ask(project, &q);
    let mut raw = q;
    raw["filters"] = json!([["is_not", "event:name", ["-never-"]]]);
    (table, ask(project, &raw))
}

fn instant(minute: i64) -> String {
    DateTime::from_timestamp_micros(origin() + minute * MINUTE)
        .unwrap()
        .to_rfc3339()
}

const TOP_ROW: [&str; 7] = [
    "visitors",
    "visits",
    "pageviews",
    "events",
    "views_per_visit",
    "bounce_rate",
    "visit_duration",
];

fn queries(range: Value, tz: &str) -> Vec<Value> {
    let q = |metrics: Value, dims: Value| {
        json!({"kind": "stats", "date_range": range, "timezone": tz,
               "metrics": metrics, "dimensions": dims})
    };
    vec![
        q(json!(TOP_ROW), json!([])),
        q(
            json!([
                "visitors",
                "visits",
                "bounce_rate",
                "pageviews",
                "percentage"
            ]),
            json!(["event:page"]),
        ),
        q(
            json!(["visits", "bounce_rate", "visit_duration"]),
            json!(["visit:entry_page"]),
        ),
        q(json!(["visits", "visitors"]), json!(["visit:exit_page"])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn kept_visits_equal_visits_cut_anew(
        gens in prop::collection::vec(gen_event(), 1..40).prop_shuffle(),
        sizes in prop::collection::vec(1usize..8, 1..40),
        replay in any::<bool>(),
    ) {
        let project = project();
        let events: Vec<Event> = gens.iter().map(event).collect();
        store_in_batches(&project, &events, &sizes);
        if replay {
            // The last events again (a client that resent them): stored twice, counted
            // twice by the raw cut, and so by the table.
            let last = &events[events.len() - sizes[0].min(events.len())..];
            insert(&project, last);
            let (kept, cut) = kept_and_cut(&project);
            prop_assert_eq!(kept, cut);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn the_table_answers_as_the_raw_cut(
        gens in prop::collection::vec(gen_event(), 1..40).prop_shuffle(),
        sizes in prop::collection::vec(1usize..8, 1..10),
        (from, len) in (1_300i64..1_500, 0i64..1_700),
    ) {
        let project = project();
        let events: Vec<Event> = gens.iter().map(event).collect();
        store_in_batches(&project, &events, &sizes);
        let range = json!([instant(from), instant(from + len)]);
        for tz in ["UTC", "Europe/Berlin"] {
            for q in queries(range.clone(), tz) {
                let (table, raw) = both(&project, q.clone());
                prop_assert_eq!(&table, &raw, "{}", q);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The writer's memory of open visits is read from the table when the store opens,
    /// and bounded by time: streams received as they happen (so older visits leave
    /// memory) into a store reopened at random batches keep the table exact.
    #[test]
    fn kept_visits_stay_exact_across_restarts_and_as_memory_moves_on(
        gens in prop::collection::vec(gen_event(), 1..40).prop_shuffle(),
        sizes in prop::collection::vec(1usize..8, 1..40),
        restarts in prop::collection::vec(any::<bool>(), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.duckdb");
        let open = || DuckStore::open(&path, DuckConfig::default()).unwrap();
        let mut store = open();
        // Few sign-ins (an event with a user and a device), which take the SQL path.
        let events: Vec<Event> = gens
            .iter()
            .enumerate()
            .map(|(i, g)| Gen {
                device: if g.user.is_some() && i % 8 != 0 { None } else { g.device },
                ..g.clone()
            })
            .map(|g| Event { received_at: origin() + g.minute * MINUTE, ..event(&g) })
            .collect();
        let mut paths = [0; 2];
        let (mut rest, mut lsn) = (&events[..], 1);
        let (mut sizes, mut restarts) = (sizes.iter().cycle(), restarts.iter().cycle());
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at((*sizes.next().unwrap()).min(rest.len()));
            paths[usize::from(insert_into(&store, lsn, "p", batch) == VisitsPath::Memory)] += 1;
            lsn += 1;
            let (kept, cut) = kept_and_cut_in(&store, "p");
            prop_assert_eq!(kept, cut);
            if *restarts.next().unwrap() {
                drop(store);
                store = open();
            }
            rest = tail;
        }
        eprintln!("batches by path (sql, memory): {paths:?}");
    }
}

#[test]
fn live_traffic_is_cut_in_memory_and_the_rest_with_sql() {
    let p = project();
    let check = |path: VisitsPath, expected: VisitsPath, what: &str| {
        assert_eq!(path, expected, "{what}");
        let (kept, cut) = kept_and_cut(&p);
        assert_eq!(kept, cut, "{what}");
    };
    let anon = |minute: i64| at(minute, None, Some(3), 1);
    let session = |minute: i64, page: u8| Event {
        session_id: Some(format!("{p}-s1")),
        ..at(minute, Some(2), None, page)
    };
    use VisitsPath::{Memory, Sql};
    check(
        insert(&p, &[at(0, Some(1), None, 0)]),
        Memory,
        "a new person",
    );
    check(
        insert(&p, &[at(50, Some(1), None, 2), at(10, Some(1), None, 1)]),
        Memory,
        "the visit extended, a new one started",
    );
    check(insert(&p, &[anon(60)]), Memory, "a device, looked up");
    check(insert(&p, &[anon(70)]), Memory, "the device again");
    check(insert(&p, &[at(5, Some(1), None, 3)]), Sql, "a late event");
    check(insert(&p, &[at(80, Some(1), None, 0)]), Memory, "after it");
    let no_page = Event {
        properties: Map::new(),
        ..at(80, Some(1), None, 0)
    };
    check(
        insert(&p, &[no_page]),
        Memory,
        "at the visit's end, no page",
    );
    let inside = Event {
        properties: Map::new(),
        ..at(60, Some(1), None, 0)
    };
    check(insert(&p, &[inside]), Memory, "within the visit, no page");
    check(
        insert(&p, &[at(80, Some(1), None, 1)]),
        Sql,
        "at the visit's end, a page (which is the exit?)",
    );
    check(insert(&p, &[session(90, 0)]), Sql, "a session not seen");
    check(insert(&p, &[session(130, 1)]), Memory, "the session again");
    check(
        insert(&p, &[at(100, Some(3), Some(3), 2)]),
        Sql,
        "the device signs in",
    );
    check(
        insert(&p, &[anon(110)]),
        Memory,
        "the device, now the user's",
    );
    let mut all = visits(&p);
    all.sort();
    assert_eq!(
        all,
        [
            ("u1".into(), 0, 10, 3),
            ("u1".into(), 50, 80, 5),
            ("u2".into(), 90, 130, 2),
            ("u3".into(), 60, 110, 4),
        ]
    );
}

fn page_at(minute: i64, user: &str, page: &str) -> Event {
    let mut e = at(minute, None, None, 0);
    e.user_id = Some(user.into());
    e.properties.insert("path".into(), json!(page));
    e
}

fn metrics(r: &Value) -> Vec<Value> {
    r["results"][0]["metrics"].as_array().unwrap().clone()
}

#[test]
fn a_visit_across_midnight_in_berlin_counts_once_for_the_week_and_cut_for_each_day() {
    let p = project();
    // 22:50 and 23:10 UTC on 11-02: 23:50 and 00:10 in Berlin (UTC+1), so the visit
    // crosses local midnight; a second visit at 01:00 UTC is one page of its own.
    store_in_batches(
        &p,
        &[
            page_at(22 * 60 + 50, "u1", "/a"),
            page_at(23 * 60 + 10, "u1", "/b"),
            page_at(25 * 60, "u1", "/c"),
        ],
        &[1, 2],
    );
    let q = |range: Value| {
        json!({"kind": "stats", "date_range": range, "timezone": "Europe/Berlin",
               "metrics": ["visits", "pageviews", "bounce_rate", "visit_duration"]})
    };
    let week = q(json!(["2026-11-02", "2026-11-08"]));
    let (table, raw) = both(&p, week.clone());
    assert_eq!(table, raw);
    // Two visits: one of 20 minutes (not a bounce), one of one page.
    assert_eq!(metrics(&table), [json!(2), json!(3), json!(50), json!(600)]);
    // 11-02 in Berlin holds only the 23:50 page view of the first visit: a bounce.
    let day = q(json!(["2026-11-02", "2026-11-02"]));
    let (table, raw) = both(&p, day);
    assert_eq!(table, raw);
    assert_eq!(metrics(&table), [json!(1), json!(1), json!(100), json!(0)]);
}

#[test]
fn late_events_and_a_sign_in_reshape_the_visits_the_table_answers_with() {
    let p = project();
    let anon = |minute: i64, page: &str| {
        let mut e = page_at(minute, "x", page);
        e.user_id = None;
        e.device_id = Some("dev".into());
        e
    };
    store_in_batches(
        &p,
        &[page_at(600, "u2", "/a"), page_at(650, "u2", "/b")],
        &[2],
    );
    let top = json!({"kind": "stats", "date_range": ["2026-11-02", "2026-11-02"],
                     "metrics": ["visitors", "visits", "bounce_rate"]});
    assert_eq!(metrics(&ask(&p, &top)), [json!(1), json!(2), json!(100)]);
    // A late page view between them joins the two visits.
    store_in_batches(&p, &[page_at(625, "u2", "/c")], &[1]);
    assert_eq!(metrics(&ask(&p, &top)), [json!(1), json!(1), json!(0)]);
    // An anonymous device's visit, then the device signs in as u2: one person, and the
    // device's visit at 670 joins u2's.
    store_in_batches(&p, &[anon(670, "/d")], &[1]);
    assert_eq!(metrics(&ask(&p, &top)), [json!(2), json!(2), json!(50)]);
    let mut signs_in = page_at(690, "u2", "/e");
    signs_in.device_id = Some("dev".into());
    store_in_batches(&p, &[signs_in], &[1]);
    assert_eq!(metrics(&ask(&p, &top)), [json!(1), json!(1), json!(0)]);
    let (table, raw) = both(&p, top);
    assert_eq!(table, raw);
}

/// A page view at `minute` by user `u{user}` and/or device `d{device}` on `/p{page}`.
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
                (r[2].as_i64().unwrap() - origin()) / MINUTE,
                (r[3].as_i64().unwrap() - origin()) / MINUTE,
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
