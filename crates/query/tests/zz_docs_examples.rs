//! THROWAWAY (docs examples; delete). Every report kind against a small dataset whose answers are worked out by hand in
//! the comments below, on a real DuckDB store.
//!
//! The people (UTC times, week of Monday 2026-11-02):
//! - alice (user): Mon 09:00 page_visit /home, 09:05 signup, 09:10 purchase {amount 30};
//!   Wed 13:00 feature_used; Mon 11-09 10:00 and Mon 11-16 10:00 feature_used.
//! - bob: Mon 10:00 page_visit /home as device d-bob only (anonymous), then Tue 08:00
//!   signup as user bob on device d-bob (this links d-bob to bob); Wed 12:00 purchase
//!   {amount 20}.
//! - carol (user): Tue 08:30 page_visit /home, 09:00 signup; Mon 11-09 11:00 feature_used.
//! - d-anon (device only): Mon 10:20 page_visit /pricing.
//!
//! Accounts: alice and bob in acme {name Acme, plan pro} (group calls Mon 08:00, Tue
//! 08:01), carol in globex {name Globex, plan free} (Tue 08:31).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tally_model::{Event, EventBatch, EventType};
use tally_query::run;
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::Store;

fn at(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

struct E {
    kind: EventType,
    name: &'static str,
    user: Option<&'static str>,
    device: Option<&'static str>,
    group: Option<&'static str>,
    ts: &'static str,
    props: Value,
}

fn ev(name: &'static str, user: &'static str, ts: &'static str) -> E {
    E {
        kind: if name == "page_visit" {
            EventType::Page
        } else {
            EventType::Track
        },
        name,
        user: Some(user),
        device: None,
        group: None,
        ts,
        props: json!({}),
    }
}

fn build(e: E) -> Event {
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let (properties, traits) = match e.kind {
        EventType::Group | EventType::Identify => (Map::new(), obj(e.props)),
        _ => (obj(e.props), Map::new()),
    };
    Event {
        uuid: uuid::Uuid::new_v4(),
        kind: e.kind,
        event: e.name.into(),
        user_id: e.user.map(Into::into),
        device_id: e.device.map(Into::into),
        session_id: None,
        group_id: e.group.map(Into::into),
        previous_id: None,
        timestamp: at(e.ts),
        received_at: at(e.ts),
        properties,
        traits,
        context: Map::new(),
    }
}

fn dataset() -> Vec<Event> {
    let page = |user: Option<&'static str>, device: Option<&'static str>, ts, path: &str| E {
        kind: EventType::Page,
        name: "page_visit",
        user,
        device,
        group: None,
        ts,
        props: json!({ "page_path": path }),
    };
    let group = |user, g, ts, traits: Value| E {
        kind: EventType::Group,
        name: "$group",
        user: Some(user),
        device: None,
        group: Some(g),
        ts,
        props: traits,
    };
    let acme = json!({"name": "Acme", "plan": "pro"});
    let globex = json!({"name": "Globex", "plan": "free"});
    [
        group("alice", "acme", "2026-11-02T08:00:00Z", acme.clone()),
        group("bob", "acme", "2026-11-03T08:01:00Z", acme),
        group("carol", "globex", "2026-11-03T08:31:00Z", globex),
        page(Some("alice"), None, "2026-11-02T09:00:00Z", "/home"),
        ev("signup", "alice", "2026-11-02T09:05:00Z"),
        E {
            props: json!({"amount": 30, "plan": "pro"}),
            ..ev("purchase", "alice", "2026-11-02T09:10:00Z")
        },
        page(None, Some("d-bob"), "2026-11-02T10:00:00Z", "/home"),
        page(None, Some("d-anon"), "2026-11-02T10:20:00Z", "/pricing"),
        E {
            device: Some("d-bob"),
            ..ev("signup", "bob", "2026-11-03T08:00:00Z")
        },
        page(Some("carol"), None, "2026-11-03T08:30:00Z", "/home"),
        ev("signup", "carol", "2026-11-03T09:00:00Z"),
        E {
            props: json!({"amount": 20, "plan": "free"}),
            ..ev("purchase", "bob", "2026-11-04T12:00:00Z")
        },
        ev("feature_used", "alice", "2026-11-04T13:00:00Z"),
        ev("feature_used", "alice", "2026-11-09T10:00:00Z"),
        ev("feature_used", "carol", "2026-11-09T11:00:00Z"),
        ev("feature_used", "alice", "2026-11-16T10:00:00Z"),
    ]
    .into_iter()
    .map(build)
    .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: DuckStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = DuckStore::open(&dir.path().join("t.duckdb"), DuckConfig::default()).unwrap();
    // Two batches: the identity link arrives in a later batch than bob's anonymous visit.
    let events = dataset();
    let (first, second) = events.split_at(7);
    for (i, part) in [first, second].into_iter().enumerate() {
        let batch = EventBatch {
            project_id: "p".into(),
            events: part.to_vec(),
        };
        store.insert(&[batch], i as u64 + 1).unwrap();
    }
    Fixture { _dir: dir, store }
}

impl Fixture {
    fn q(&self, body: Value) -> Value {
        run(&self.store, "p", &body, now()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn err(&self, body: Value) -> String {
        run(&self.store, "p", &body, now()).unwrap_err().to_string()
    }
}

fn show(f: &Fixture, name: &str, body: Value) {
    let r = f.q(body.clone());
    println!("=== {name}\nREQ {}\nRES {}", body, r);
}

#[test]
fn docs_examples() {
    let f = fixture();
    show(
        &f,
        "trends",
        json!({
            "kind": "trends", "date_range": ["2026-11-02", "2026-11-04"], "interval": "day",
            "series": [
                {"event": "signup"},
                {"event": "page_visit", "math": "unique"},
            ],
            "formula": "A / B * 100",
        }),
    );
    show(
        &f,
        "trends_breakdown",
        json!({
            "kind": "trends", "date_range": ["2026-11-02", "2026-11-04"],
            "series": [{"event": "page_visit"}],
            "breakdown": ["event:page"], "breakdown_limit": 1,
        }),
    );
    show(
        &f,
        "trends_wau",
        json!({
            "kind": "trends", "date_range": ["2026-11-08", "2026-11-10"],
            "series": [{"math": "wau"}],
        }),
    );
    show(
        &f,
        "funnel",
        json!({
            "kind": "funnel", "date_range": ["2026-11-02", "2026-11-04"],
            "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "purchase"}],
            "window": {"value": 1, "unit": "day"},
        }),
    );
    show(
        &f,
        "funnel_breakdown",
        json!({
            "kind": "funnel", "date_range": ["2026-11-02", "2026-11-04"], "breakdown": "event:page",
            "steps": [{"event": "page_visit"}, {"event": "signup"}],
        }),
    );
    show(
        &f,
        "retention",
        json!({
            "kind": "retention", "date_range": ["2026-11-02", "2026-11-22"], "period": "week",
            "intervals": 3, "target": {"event": "signup"},
        }),
    );
    show(
        &f,
        "lifecycle",
        json!({"kind": "lifecycle", "date_range": ["2026-11-02", "2026-11-04"], "interval": "day"}),
    );
    show(
        &f,
        "stickiness",
        json!({"kind": "stickiness", "date_range": ["2026-11-02", "2026-11-08"]}),
    );
    show(
        &f,
        "paths",
        json!({
            "kind": "paths", "date_range": ["2026-11-02", "2026-11-22"],
            "start": {"event": "signup"}, "depth": 2,
        }),
    );
    show(
        &f,
        "paths_prev",
        json!({
            "kind": "paths", "date_range": ["2026-11-02", "2026-11-22"],
            "start": {"event": "signup"}, "depth": 1, "direction": "previous",
        }),
    );
    show(
        &f,
        "accounts",
        json!({"kind": "accounts", "date_range": ["2026-11-02", "2026-11-08"]}),
    );
    show(
        &f,
        "accounts_next",
        json!({
            "kind": "accounts", "date_range": ["2026-11-09", "2026-11-15"],
            "health": {"new_days": 0}, "order_by": [["trend", "asc"]],
        }),
    );
    show(
        &f,
        "accounts_users",
        json!({"kind": "accounts", "date_range": ["2026-11-02", "2026-11-08"], "account_id": "acme"}),
    );
    show(
        &f,
        "events",
        json!({"kind": "events", "date_range": ["2026-11-02", "2026-11-02"], "pagination": {"limit": 1}}),
    );
    let events = vec![
        build(ev("feature_used", "alice", "2026-11-20T11:58:10Z")),
        build(ev("feature_used", "alice", "2026-11-20T11:59:00Z")),
        build(E {
            props: json!({"page_path": "/docs"}),
            ..ev("page_visit", "carol", "2026-11-20T11:59:30Z")
        }),
        build(ev("feature_used", "carol", "2026-11-20T11:50:00Z")),
    ];
    f.store
        .insert(
            &[EventBatch {
                project_id: "p".into(),
                events,
            }],
            3,
        )
        .unwrap();
    show(&f, "realtime", json!({"kind": "realtime", "minutes": 5}));
}
