//! Visit metrics read from the visits table (DuckDB) answer as visits cut from the raw
//! events do: on random streams stored in random batches and order, over random ranges
//! whose edges cut visits, for the dashboard's top row and its breakdowns by page, entry
//! page and exit page. The raw plan is what the engine runs when a filter is present, so
//! each query is asked twice: as is (the table) and with a filter every event passes
//! (the raw cut). Named cases check the figures by hand too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tally_model::{Event, EventBatch, EventType};
use tally_query::run;
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::Store;

const MINUTE: i64 = 60_000_000;

fn origin() -> i64 {
    DateTime::parse_from_rfc3339("2026-11-02T00:00:00Z")
        .unwrap()
        .timestamp_micros()
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct Shared {
    _dir: tempfile::TempDir,
    store: DuckStore,
    next: AtomicU64,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = DuckStore::open(&dir.path().join("t.duckdb"), DuckConfig::default()).unwrap();
        Shared {
            _dir: dir,
            store,
            next: AtomicU64::new(1),
        }
    })
}

#[derive(Debug, Clone)]
struct Gen {
    user: Option<u8>,
    device: Option<u8>,
    session: Option<u8>,
    minute: i64,
    page: Option<u8>,
    pageview: bool,
}

fn event(g: &Gen) -> Event {
    let mut properties = Map::new();
    if let Some(p) = g.page {
        properties.insert("path".into(), json!(format!("/p{p}")));
    }
    Event {
        uuid: uuid::Uuid::new_v4(),
        kind: if g.pageview {
            EventType::Page
        } else {
            EventType::Track
        },
        event: if g.pageview { "page_visit" } else { "click" }.into(),
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
        any::<bool>(),
    )
        .prop_map(
            |(user, device, session, (day, minute), page, pageview)| Gen {
                user: user.or(if device.is_none() { Some(0) } else { None }),
                device,
                session,
                minute: day * 1_440 + 23 * 60 + minute,
                page,
                pageview,
            },
        )
}

fn store_in_batches(project: &str, events: &[Event], sizes: &[usize]) {
    let s = shared();
    let mut rest = events;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at((*sizes.next().unwrap()).min(rest.len()));
        let lsn = s.next.fetch_add(1, Ordering::SeqCst);
        EventBatch {
            project_id: project.into(),
            events: batch.to_vec(),
        }
        .as_stored(|b| s.store.insert(std::slice::from_ref(b), lsn))
        .unwrap();
        rest = tail;
    }
}

fn project() -> String {
    format!("p{}", shared().next.fetch_add(1, Ordering::SeqCst))
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

fn page_at(minute: i64, user: &str, page: &str) -> Event {
    let mut e = event(&Gen {
        user: None,
        device: None,
        session: None,
        minute,
        page: None,
        pageview: true,
    });
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
