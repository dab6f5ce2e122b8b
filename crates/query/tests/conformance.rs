//! One suite, two stores: the same events in DuckDB and in ClickHouse (Debian's 18.16,
//! a real server on loopback), the same queries through `tally_query::run`, the same
//! answers. Covers what the ClickHouse compiler supports (see src/clickhouse.rs); the
//! rest must be refused there as unsupported, not answered differently.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::sync::Mutex;
use tally_model::{Event, EventBatch, EventType, StoredBatch};
use tally_query::run;
use tally_store::clickhouse::{inline_params, schema_sql, Rollups, Version};
use tally_store::clickhouse::{ClickHouseConfig, ClickHouseStore};
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::{Dialect, Rows, Sql, Store, StoreError};
use tally_testkit::{chdb, ClickHouse, ClickHouseCluster};

fn at(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// `(name, user, device, time, page)`; a page_visit is a page call.
type Row = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
);

const EVENTS: &[Row] = &[
    // alice, signed in; across the night Europe/Berlin leaves summer time (10-25 01:00 UTC).
    (
        "page_visit",
        Some("alice"),
        Some("d-alice"),
        "2026-10-24T22:30:00Z",
        Some("/home"),
    ),
    (
        "signup",
        Some("alice"),
        Some("d-alice"),
        "2026-10-25T00:30:00Z",
        None,
    ),
    (
        "page_visit",
        Some("alice"),
        Some("d-alice"),
        "2026-10-25T01:30:00Z",
        Some("/pricing"),
    ),
    (
        "purchase",
        Some("alice"),
        None,
        "2026-11-03T09:10:00Z",
        None,
    ),
    // bob: anonymous on d-bob first, signs in two days later (the link joins them).
    (
        "page_visit",
        None,
        Some("d-bob"),
        "2026-11-02T10:00:00Z",
        Some("/Home"),
    ),
    (
        "page_visit",
        None,
        Some("d-bob"),
        "2026-11-02T10:05:00Z",
        Some("/pricing"),
    ),
    (
        "signup",
        Some("bob"),
        Some("d-bob"),
        "2026-11-04T08:00:00Z",
        None,
    ),
    (
        "feature_used",
        Some("bob"),
        None,
        "2026-11-09T12:00:00Z",
        Some("/app"),
    ),
    // carol, signed in; d-anon never signs in.
    (
        "page_visit",
        Some("carol"),
        None,
        "2026-11-03T08:30:00Z",
        Some("/home"),
    ),
    (
        "feature_used",
        Some("carol"),
        None,
        "2026-11-16T11:00:00Z",
        None,
    ),
    (
        "page_visit",
        None,
        Some("d-anon"),
        "2026-11-02T10:20:00Z",
        Some("/pricing"),
    ),
    (
        "page_visit",
        None,
        Some("d-anon"),
        "2026-11-18T23:59:59.000042Z",
        Some("/docs/home"),
    ),
    // In the last 5 minutes before `now()`, for realtime.
    (
        "page_visit",
        None,
        Some("d-live"),
        "2026-11-20T11:57:10Z",
        Some("/live"),
    ),
    (
        "signup",
        Some("dora"),
        Some("d-live"),
        "2026-11-20T11:58:40Z",
        None,
    ),
    (
        "page_visit",
        Some("carol"),
        None,
        "2026-11-20T11:59:59Z",
        Some("/live"),
    ),
];

fn events() -> Vec<Event> {
    let mut all: Vec<Event> = EVENTS
        .iter()
        .enumerate()
        .map(|(i, (name, user, device, ts, page))| {
            let mut properties = Map::new();
            if let Some(p) = page {
                properties.insert("page_path".into(), json!(p));
            }
            // Strings (one with a quote and a backslash), numbers, a boolean, a null,
            // an object, and keys missing on some events.
            if i % 4 != 3 {
                let plan = ["pro", "free", r#"te"am\"#][i % 3];
                properties.insert("plan".into(), json!(plan));
            }
            if *name != "page_visit" {
                properties.insert("seats".into(), json!(i));
            }
            if i % 5 == 0 {
                properties.insert("beta".into(), json!(true));
                properties.insert("coupon".into(), Value::Null);
                properties.insert("ab".into(), json!({"arm": "b", "n": 2}));
            }
            if *name == "purchase" {
                properties.insert("price".into(), json!(9.5));
            }
            // Where visitors come from and what they use, in the places SDKs put it.
            let mut context = Map::new();
            match i % 3 {
                0 => {
                    context.insert("user_agent".into(), json!("Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36"));
                }
                1 => {
                    context.insert("userAgent".into(), json!("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Safari/604.1"));
                }
                _ => {}
            }
            match i % 4 {
                0 => {
                    properties.insert("referrer".into(), json!("https://www.google.com/search?q=x"));
                }
                1 => {
                    properties.insert("referrer".into(), json!("$direct"));
                    properties.insert("utm_source".into(), json!("newsletter"));
                }
                2 => {
                    context.insert(
                        "page".into(),
                        json!({"referrer": "https://news.ycombinator.com/", "title": "Tom's \"Guide\"",
                               "url": format!("https://docs.example.org{}", page.unwrap_or("/"))}),
                    );
                    context.insert("campaign".into(), json!({"name": "spring", "source": "ads"}));
                }
                _ => {}
            }
            if let Some(p) = page.filter(|_| i % 2 == 0) {
                properties.insert("page_url".into(), json!(format!("https://www.example.com{p}?x=1")));
            }
            if i % 5 == 1 {
                context.insert("location".into(), json!({"city": "Berlin", "country": "DE"}));
            } else if i % 5 == 2 {
                properties.insert("$geoip_country_code".into(), json!("FR"));
            }
            Event {
                uuid: uuid::Uuid::from_u128(i as u128 + 1),
                kind: if *name == "page_visit" {
                    EventType::Page
                } else {
                    EventType::Track
                },
                event: (*name).into(),
                user_id: user.map(Into::into),
                device_id: device.map(Into::into),
                // Some events carry a session id (a visit of its own), the rest are cut
                // into visits by 30 minutes of silence.
                session_id: (i % 4 == 1).then(|| format!("sess-{}", i / 8)),
                group_id: None,
                previous_id: None,
                timestamp: at(ts),
                received_at: at(ts),
                properties,
                traits: Map::new(),
                context,
            }
        })
        .collect();
    // Accounts: carol's feature use names its account; alice and bob join theirs with
    // group calls (bob's after his anonymous visits, which count for globex through his
    // device's link); d-anon has none.
    for e in all.iter_mut() {
        if e.event == "feature_used" && e.user_id.as_deref() == Some("carol") {
            e.group_id = Some("initech".into());
        }
    }
    // People's traits: alice's plan changes (the later call wins), bob's device is
    // anonymous until he signs in; carol has none.
    for (n, (user, traits, ts)) in [
        (
            "alice",
            json!({"plan": "pro", "role": "admin"}),
            "2026-10-24T21:00:00Z",
        ),
        ("alice", json!({"plan": "team"}), "2026-11-10T00:00:00Z"),
        ("bob", json!({"plan": "free"}), "2026-11-04T08:00:00Z"),
        ("dora", json!({"plan": "pro"}), "2026-11-20T11:58:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        all.push(Event {
            uuid: uuid::Uuid::from_u128(2_000 + n as u128),
            kind: EventType::Identify,
            event: "identify".into(),
            user_id: Some(user.into()),
            device_id: None,
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: at(ts),
            received_at: at(ts),
            properties: Map::new(),
            traits: traits.as_object().unwrap().clone(),
            context: Map::new(),
        });
    }
    for (n, (user, group, ts)) in [
        ("alice", "acme", "2026-10-24T22:00:00Z"),
        ("bob", "globex", "2026-11-04T08:01:00Z"),
        ("bob", "acme", "2026-10-01T00:00:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        all.push(Event {
            uuid: uuid::Uuid::from_u128(1_000 + n as u128),
            kind: EventType::Group,
            event: "group".into(),
            user_id: Some(user.into()),
            device_id: None,
            session_id: None,
            group_id: Some(group.into()),
            previous_id: None,
            timestamp: at(ts),
            received_at: at(ts),
            properties: Map::new(),
            traits: if group == "acme" {
                json!({"name": "Acme", "plan": "pro", "seats": 12})
                    .as_object()
                    .unwrap()
                    .clone()
            } else {
                Map::new()
            },
            context: Map::new(),
        });
    }
    all
}

fn stores(name: &str) -> (tempfile::TempDir, DuckStore, ClickHouseStore) {
    stores_with(name, Rollups::Never, true)
}

fn stores_with(
    name: &str,
    rollups: Rollups,
    replay: bool,
) -> (tempfile::TempDir, DuckStore, ClickHouseStore) {
    stores_on(
        ClickHouseConfig {
            url: ClickHouse::shared().url(),
            database: format!("conformance_{name}_{}", std::process::id()),
            rollups,
            ..ClickHouseConfig::default()
        },
        replay,
    )
}

/// A DuckDB and a ClickHouse store holding just `events`.
fn stores_of(name: &str, events: Vec<Event>) -> (tempfile::TempDir, DuckStore, ClickHouseStore) {
    let (dir, duck, ch) = open_both(ClickHouseConfig {
        url: ClickHouse::shared().url(),
        database: format!("conformance_{name}_{}", std::process::id()),
        ..ClickHouseConfig::default()
    });
    insert_both(&duck, &ch, events, 1);
    (dir, duck, ch)
}

/// An empty DuckDB store in a temporary folder, and the ClickHouse store `config` opens.
fn open_both(config: ClickHouseConfig) -> (tempfile::TempDir, DuckStore, ClickHouseStore) {
    let dir = tempfile::tempdir().unwrap();
    let duck = DuckStore::open(&dir.path().join("t.duckdb"), DuckConfig::default()).unwrap();
    let ch = ClickHouseStore::open(config).unwrap();
    (dir, duck, ch)
}

/// `events` as one batch of project "p" at position `lsn`, into both stores.
fn insert_both(duck: &DuckStore, ch: &ClickHouseStore, events: Vec<Event>, lsn: u64) {
    let batch = EventBatch {
        project_id: "p".into(),
        events,
    };
    batch.as_stored(|b| {
        duck.insert(std::slice::from_ref(b), lsn).unwrap();
        ch.insert(std::slice::from_ref(b), lsn).unwrap();
    });
}

/// The two stores with the same events; on ClickHouse (opened with `config`), the
/// second batch sent twice if `replay`.
fn stores_on(
    config: ClickHouseConfig,
    replay: bool,
) -> (tempfile::TempDir, DuckStore, ClickHouseStore) {
    let (dir, duck, ch) = open_both(config);
    // Two batches (the link arrives in the second), and the second sent twice to
    // ClickHouse: a replay must not change any answer.
    let all = events();
    let (first, second) = all.split_at(6);
    for (i, part) in [first, second].iter().enumerate() {
        insert_both(&duck, &ch, part.to_vec(), i as u64 + 1);
    }
    if replay {
        let batch = EventBatch {
            project_id: "p".into(),
            events: second.to_vec(),
        };
        batch
            .as_stored(|b| ch.insert(std::slice::from_ref(b), 2))
            .unwrap();
    }
    (dir, duck, ch)
}

const RANGE: &str = r#"["2026-10-20", "2026-11-19"]"#;

/// A `stats` query over `RANGE` for `metrics`, with `extra`'s keys set (they win).
fn stats_query(metrics: Value, extra: Value) -> Value {
    let mut base = json!({"kind": "stats", "metrics": metrics,
                          "date_range": serde_json::from_str::<Value>(RANGE).unwrap()});
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn queries() -> Vec<Value> {
    let q = |extra: Value| stats_query(json!(["events", "visitors", "pageviews"]), extra);
    vec![
        q(json!({})),
        q(json!({"dimensions": ["event:name"]})),
        q(json!({"dimensions": ["event:page"], "order_by": [["visitors", "desc"]]})),
        q(
            json!({"dimensions": ["event:page"], "pagination": {"limit": 2, "offset": 1},
                 "include": {"total_rows": true}}),
        ),
        q(json!({"dimensions": ["time:day"]})),
        q(json!({"dimensions": ["time:day"], "timezone": "Europe/Berlin"})),
        q(
            json!({"dimensions": ["time:hour"], "timezone": "Europe/Berlin",
                 "date_range": ["2026-10-24", "2026-10-25"]}),
        ),
        q(json!({"dimensions": ["time:week", "event:name"]})),
        q(json!({"dimensions": ["time:month"], "include": {"time_labels": true}})),
        q(json!({"dimensions": ["time:minute"], "date_range": ["2026-11-02", "2026-11-02"]})),
        q(json!({"filters": [["is", "event:page", ["/home", "/pricing"]]]})),
        q(
            json!({"filters": [["is_not", "event:page", ["/pricing"]]], "dimensions": ["event:name"]}),
        ),
        q(json!({"filters": [["contains", "event:page", ["HOME"]]]})),
        q(
            json!({"filters": [["contains_not", "event:page", ["home"]]], "dimensions": ["event:page"]}),
        ),
        q(
            json!({"filters": [["or", [["is", "event:name", ["signup"]], ["not", ["contains", "event:page", ["pric"]]]]]]}),
        ),
        q(
            json!({"date_range": ["2026-11-09", "2026-11-19"], "compare": "previous_period",
                 "dimensions": ["event:name"]}),
        ),
        q(json!({"date_range": "all"})),
        q(json!({"dimensions": ["event:props:plan"]})),
        q(json!({"dimensions": ["event:props:ab", "event:props:beta"]})),
        q(
            json!({"filters": [["is", "event:props:plan", ["pro", "te\"am\\"]]], "dimensions": ["event:name"]}),
        ),
        q(
            json!({"filters": [["gt", "event:props:seats", [5]]], "dimensions": ["event:props:seats"]}),
        ),
        q(json!({"filters": [["lt", "event:props:price", [10]]]})),
        q(
            json!({"filters": [["matches", "event:page", ["^/(home|pricing)$"]]], "dimensions": ["event:page"]}),
        ),
        q(
            json!({"filters": [["matches_not", "event:props:plan", ["^p"]]], "dimensions": ["event:props:plan"]}),
        ),
        q(json!({"filters": [["is_set", "event:props:beta"]], "dimensions": ["event:name"]})),
        q(json!({"filters": [["is_not_set", "event:props:plan"]], "dimensions": ["event:name"]})),
        q(json!({"filters": [["is_set", "event:props:coupon"]]})),
        q(json!({"filters": [["contains", "event:props:plan", ["PR"]]]})),
        q(
            json!({"metrics": ["visits", "bounce_rate", "visit_duration", "views_per_visit", "visitors", "events", "pageviews"]}),
        ),
        q(json!({"metrics": ["visits", "bounce_rate"], "dimensions": ["visit:entry_page"]})),
        q(
            json!({"metrics": ["visits", "visitors"], "dimensions": ["visit:exit_page", "time:week"],
                 "filters": [["is_not", "event:name", ["signup"]]]}),
        ),
        q(
            json!({"metrics": ["visits", "percentage"], "dimensions": ["visit:source"],
                 "filters": [["contains", "visit:entry_page", ["home"]]]}),
        ),
        q(
            json!({"metrics": ["visitors", "conversion_rate"], "goal": "signup", "dimensions": ["visit:browser"]}),
        ),
        q(json!({"metrics": ["visits", "conversion_rate"], "goal": "purchase"})),
        q(json!({"metrics": ["visitors", "percentage"], "dimensions": ["event:page"]})),
        q(
            json!({"metrics": ["sum:seats", "avg:seats", "min:seats", "max:price", "p50:seats", "p90:seats", "p99:price"]}),
        ),
        q(json!({"metrics": ["p50:seats", "events"], "dimensions": ["event:name"]})),
        q(json!({"dimensions": ["visit:browser", "visit:os"]})),
        q(json!({"dimensions": ["person:props:plan"]})),
        q(
            json!({"filters": [["is", "person:props:plan", ["team"]]], "dimensions": ["event:name"]}),
        ),
        q(
            json!({"metrics": ["visits", "visitors"], "dimensions": ["person:props:role"],
                 "filters": [["is_set", "person:props:plan"]]}),
        ),
        q(
            json!({"dimensions": ["visit:device"], "filters": [["is_not", "visit:browser", ["Chrome"]]]}),
        ),
        q(json!({"dimensions": ["visit:source"]})),
        q(json!({"dimensions": ["visit:referrer"]})),
        q(json!({"dimensions": ["event:hostname", "visit:country"]})),
        q(json!({"dimensions": ["visit:utm_source", "visit:utm_campaign"]})),
        q(
            json!({"filters": [["matches", "visit:source", ["^(Direct|google)"]]], "dimensions": ["event:name"]}),
        ),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "day", "series": [{"event": "page_visit", "math": "total"},
                                             {"event": "$any", "math": "unique"}]}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "week", "week_start": "sunday", "timezone": "Europe/Berlin",
               "series": [{"event": "page_visit", "math": "dau",
                           "filters": [["contains", "event:page", ["home"]]]},
                          {"event": "signup", "math": "total"}],
               "formula": "A / B"}),
        json!({"kind": "trends", "date_range": ["2026-10-24", "2026-10-25"], "interval": "hour",
               "timezone": "Europe/Berlin", "series": [{"math": "total"}],
               "filters": [["is_not", "event:name", ["signup"]]]}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "month", "series": [{"event": "feature_used", "math": "unique"}]}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "week", "series": [{"math": "total"}, {"math": "unique"}],
               "breakdown": ["event:page"], "breakdown_limit": 2}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "day", "series": [{"event": "page_visit", "math": "dau"}],
               "breakdown": ["event:name", "event:page"], "breakdown_limit": 3}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "day", "series": [{"math": "total"}, {"event": "page_visit", "math": "unique"}],
               "breakdown": ["event:props:plan"], "breakdown_limit": 2}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "day", "timezone": "Europe/Berlin",
               "series": [{"math": "wau"}, {"event": "page_visit", "math": "mau"}]}),
        json!({"kind": "trends", "date_range": ["2026-11-01", "2026-11-19"], "interval": "day",
               "series": [{"math": "wau", "filters": [["is_set", "event:props:plan"]]}]}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "week", "series": [{"math": "sum", "property": "seats"},
                                              {"math": "avg", "property": "seats"},
                                              {"event": "purchase", "math": "max", "property": "price"},
                                              {"math": "min", "property": "plan"}]}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "month", "series": [{"math": "avg", "property": "seats"}],
               "breakdown": ["event:name"]}),
        json!({"kind": "trends", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "week", "series": [{"math": "unique"}], "breakdown": ["person:props:plan"]}),
        json!({"kind": "funnel", "date_range": "all", "steps": [{"event": "page_visit"}, {"event": "signup"}],
               "breakdown": "person:props:plan"}),
        json!({"kind": "retention", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "period": "week", "intervals": 3,
               "target": {"event": "$any", "filters": [["is_not", "person:props:plan", ["free"]]]}}),
        json!({"kind": "stickiness", "date_range": serde_json::from_str::<Value>(RANGE).unwrap()}),
        json!({"kind": "stickiness", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "count_by": "account"}),
        json!({"kind": "retention", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "period": "week", "intervals": 4, "count_by": "account"}),
        json!({"kind": "lifecycle", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "week", "count_by": "account"}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "steps": [{"event": "page_visit"}, {"event": "signup"}],
               "window": {"value": 14, "unit": "day"}, "count_by": "account"}),
        json!({"kind": "stickiness", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "week", "week_start": "sunday", "timezone": "Europe/Berlin",
               "target": {"event": "page_visit", "filters": [["is_not", "event:page", ["/pricing"]]]}}),
        json!({"kind": "lifecycle", "date_range": serde_json::from_str::<Value>(RANGE).unwrap()}),
        json!({"kind": "lifecycle", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "interval": "week", "timezone": "Europe/Berlin"}),
        json!({"kind": "lifecycle", "date_range": ["2026-09-01", "2026-11-19"], "interval": "month",
               "target": {"event": "page_visit"}}),
        json!({"kind": "lifecycle", "date_range": ["2026-11-02", "2026-11-03"], "interval": "hour"}),
        json!({"kind": "retention", "date_range": serde_json::from_str::<Value>(RANGE).unwrap()}),
        json!({"kind": "retention", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "period": "day", "intervals": 20, "type": "recurring",
               "target": {"event": "page_visit"}, "returning": {"event": "$any"}}),
        json!({"kind": "retention", "date_range": ["2026-09-01", "2026-11-19"], "period": "month",
               "intervals": 3, "timezone": "Europe/Berlin", "week_start": "sunday",
               "target": {"event": "signup"},
               "returning": {"event": "page_visit", "filters": [["is_not", "event:page", ["/pricing"]]]}}),
        json!({"kind": "paths", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "start": {"event": "page_visit"}, "depth": 3}),
        json!({"kind": "paths", "date_range": "all", "direction": "previous", "item": "page",
               "start": {"event": "page_visit", "filters": [["is", "event:page", ["/pricing"]]]},
               "depth": 2, "limit": 2}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "purchase"}],
               "window": {"value": 14, "unit": "day"}}),
        json!({"kind": "funnel", "date_range": "all",
               "steps": [{"event": "page_visit"}, {"event": "signup"}],
               "window": {"value": 1, "unit": "day"}}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "steps": [{"event": "page_visit", "filters": [["contains", "event:page", ["pric"]]]},
                         {"event": "$any"}, {"event": "feature_used"}],
               "window": {"value": 30, "unit": "day"}}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "order": "strict", "steps": [{"event": "page_visit"}, {"event": "page_visit"}],
               "window": {"value": 1, "unit": "day"}}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "order": "strict", "steps": [{"event": "page_visit"}, {"event": "signup"}]}),
        json!({"kind": "funnel", "date_range": "all", "order": "unordered",
               "steps": [{"event": "signup"}, {"event": "page_visit"}, {"event": "purchase"}],
               "window": {"value": 30, "unit": "day"}}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "$any"}],
               "exclusions": [{"event": "page_visit", "filters": [["is", "event:page", ["/pricing"]]],
                               "from_step": 0, "to_step": 1}]}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "order": "strict", "steps": [{"event": "page_visit"}, {"event": "signup"}],
               "exclusions": [{"event": "purchase"}]}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "steps": [{"event": "page_visit"}, {"event": "$any"}],
               "breakdown": "event:page", "breakdown_limit": 2}),
        json!({"kind": "funnel", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "purchase"}],
               "breakdown": "event:props:plan", "breakdown_attribution": "last_touch"}),
        json!({"kind": "funnel", "date_range": "all",
               "steps": [{"event": "page_visit"}, {"event": "$any"}, {"event": "feature_used"}],
               "breakdown": "event:page", "breakdown_attribution": {"step": 1},
               "window": {"value": 2, "unit": "day"}}),
        json!({"kind": "funnel", "date_range": "all", "order": "unordered",
               "steps": [{"event": "page_visit"}, {"event": "signup"}],
               "breakdown": "event:props:plan", "count_by": "account"}),
        json!({"kind": "accounts", "date_range": serde_json::from_str::<Value>(RANGE).unwrap()}),
        json!({"kind": "accounts", "date_range": ["2026-11-01", "2026-11-19"],
               "order_by": [["users", "desc"], ["last_active", "asc"]],
               "health": {"new_days": 3, "critical_drop": 80, "at_risk_drop": 10, "min_stickiness": 0.5}}),
        json!({"kind": "accounts", "date_range": ["2026-11-01", "2026-11-19"],
               "filters": [["is", "account:props:plan", ["pro"]], ["contains", "account:id", ["AC"]]]}),
        json!({"kind": "accounts", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "filters": [["is_not", "account:health", ["Healthy"]]], "order_by": [["name", "asc"]],
               "pagination": {"limit": 1, "offset": 1}}),
        json!({"kind": "accounts", "date_range": serde_json::from_str::<Value>(RANGE).unwrap(),
               "account_id": "acme"}),
        json!({"kind": "accounts", "date_range": ["2026-11-01", "2026-11-19"], "account_id": "globex",
               "timezone": "Europe/Berlin"}),
        json!({"kind": "realtime"}),
        json!({"kind": "events", "date_range": serde_json::from_str::<Value>(RANGE).unwrap()}),
        json!({"kind": "events", "date_range": "all", "pagination": {"limit": 3, "offset": 2},
               "filters": [["contains", "event:page", ["home"]]]}),
        json!({"kind": "realtime", "minutes": 2}),
        // bob's anonymous visits count through his device's link; his traits and accounts.
        json!({"kind": "person", "person_id": "bob", "date_range": serde_json::from_str::<Value>(RANGE).unwrap()}),
        json!({"kind": "person", "person_id": "alice", "date_range": "all",
               "pagination": {"limit": 2, "offset": 1}, "timezone": "Europe/Berlin"}),
        json!({"kind": "person", "person_id": "d-anon", "date_range": "all"}),
    ]
}

/// `stats` queries of event and page-view counts, which the rollup answers where the
/// zone's hours are whole (all but the Kolkata and minute ones).
fn rollup_queries() -> Vec<Value> {
    let q = |extra: Value| stats_query(json!(["events", "pageviews"]), extra);
    vec![
        q(json!({})),
        q(json!({"dimensions": ["event:name"]})),
        q(json!({"dimensions": ["event:page"], "order_by": [["pageviews", "desc"]]})),
        q(json!({"dimensions": ["time:day"], "timezone": "Europe/Berlin"})),
        q(
            json!({"dimensions": ["time:hour"], "timezone": "Europe/Berlin",
                 "date_range": ["2026-10-24", "2026-10-25"]}),
        ),
        q(json!({"dimensions": ["time:week", "event:name"], "timezone": "America/New_York"})),
        q(json!({"dimensions": ["time:month"], "include": {"time_labels": true}})),
        q(
            json!({"filters": [["or", [["is", "event:name", ["signup"]], ["not", ["contains", "event:page", ["pric"]]]]]],
                 "dimensions": ["event:page"]}),
        ),
        q(json!({"filters": [["is_not", "event:page", ["/pricing"]]], "dimensions": ["time:day"]})),
        q(
            json!({"date_range": ["2026-11-09", "2026-11-19"], "compare": "previous_period",
                 "dimensions": ["event:name"]}),
        ),
        q(json!({"dimensions": ["time:day"], "timezone": "Asia/Kolkata"})),
        q(json!({"dimensions": ["time:minute"], "date_range": ["2026-11-02", "2026-11-02"]})),
    ]
}

/// With rollups read, counts of events and page views come from `events_hourly` and
/// still equal DuckDB's. (Rollups are read here on 18.16, which keeps a replayed insert,
/// so these stores get no replay; on 22.2 and later the dedup token covers it, as the
/// store's chDB test shows.)
#[test]
fn counts_from_the_rollup_equal_counts_from_the_events() {
    let (_dir, duck, ch) = stores_with("rollup", Rollups::Always, false);
    assert!(ch.rollups());
    for query in rollup_queries() {
        let d = run(&duck, "p", &query, now()).unwrap_or_else(|e| panic!("duckdb {query}: {e}"));
        let c = run(&ch, "p", &query, now()).unwrap_or_else(|e| panic!("clickhouse {query}: {e}"));
        assert_eq!(d, c, "the rollup differs from the events on {query}");
        assert!(
            some_count(&d["results"]),
            "the query {query} should count something"
        );
    }
    // Which of them read the rollup: all but the zone with half hours and the minutes.
    let recorder = Recorder {
        rollups: true,
        ..Recorder::default()
    };
    for query in rollup_queries() {
        run(&recorder, "p", &query, now()).unwrap();
    }
    let statements = recorder.statements.into_inner().unwrap();
    let from_rollup = statements
        .iter()
        .filter(|s| s.contains("events_hourly"))
        .count();
    // One statement per query, two for the one with a comparison.
    assert_eq!(statements.len(), rollup_queries().len() + 1);
    assert_eq!(from_rollup, statements.len() - 2, "{statements:#?}");
    // A rollup the store may not read is never read.
    let (_dir2, _, ch_auto) = stores_with("rollup_auto", Rollups::Auto, false);
    assert!(
        !ch_auto.rollups(),
        "18.16 keeps replays: not read by default"
    );
}

/// A two-shard cluster (ZooKeeper and two servers on loopback): the schema created ON
/// CLUSTER as replicated tables behind Distributed ones answers every query as DuckDB
/// does, the rollup included, with the replayed batch dropped by the replicated tables
/// (so the rollup is read by default there, on 18.16 too).
#[test]
fn a_two_shard_cluster_answers_as_duckdb_does() {
    let cluster = ClickHouseCluster::start(2);
    let config = |shard: usize| ClickHouseConfig {
        url: cluster.shards[shard].url(),
        database: "conformance_cluster".into(),
        cluster: Some(ClickHouseCluster::NAME.into()),
        ..ClickHouseConfig::default()
    };
    let (_dir, duck, ch) = stores_on(config(0), true);
    assert!(ch.rollups(), "replicated tables drop replays: rollups read");
    for query in queries().into_iter().chain(rollup_queries()) {
        let d = run(&duck, "p", &query, now()).unwrap_or_else(|e| panic!("duckdb {query}: {e}"));
        let c = run(&ch, "p", &query, now()).unwrap_or_else(|e| panic!("cluster {query}: {e}"));
        assert_eq!(d, c, "the cluster differs from DuckDB on {query}");
    }
    // Both shards hold part of the events, each once, and the rollup counts them once.
    let count = |store: &ClickHouseStore, sql: &str| {
        store
            .query(&Sql {
                text: sql.into(),
                params: vec![],
            })
            .unwrap()[0][0]
            .as_u64()
            .unwrap()
    };
    let other = ClickHouseStore::open(config(1)).unwrap();
    let local: Vec<u64> = [&ch, &other]
        .iter()
        .map(|s| count(s, "SELECT count() FROM events_local"))
        .collect();
    let total = events().len() as u64;
    assert!(
        local.iter().all(|&n| n > 0),
        "both shards hold events: {local:?}"
    );
    assert_eq!(
        local.iter().sum::<u64>(),
        total,
        "the replayed batch was dropped"
    );
    assert_eq!(count(&other, "SELECT count() FROM events"), total);
    let analytics = count(
        &ch,
        "SELECT count() FROM events WHERE type NOT IN ('identify', 'group', 'alias')",
    );
    assert_eq!(
        count(&ch, "SELECT sum(events) FROM events_hourly"),
        analytics
    );
}

/// Whether a result object holds a count other than zero anywhere.
fn some_count(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::Array(items) => items.iter().any(some_count),
        Value::Object(map) => map.values().any(some_count),
        _ => false,
    }
}

#[test]
fn duckdb_and_clickhouse_answer_the_same() {
    let (_dir, duck, ch) = stores("same");
    // Worked by hand, so agreement is not agreement on nothing: 12 events in range,
    // 4 people (alice, bob with his anonymous visits, carol, d-anon), 7 page views.
    let base = run(&ch, "p", &queries()[0], now()).unwrap();
    assert_eq!(
        base["results"],
        json!([{"dimensions": [], "metrics": [12, 4, 7]}])
    );
    for query in queries() {
        let d = run(&duck, "p", &query, now()).unwrap_or_else(|e| panic!("duckdb {query}: {e}"));
        let c = run(&ch, "p", &query, now()).unwrap_or_else(|e| panic!("clickhouse {query}: {e}"));
        assert_eq!(d, c, "the two stores differ on {query}");
        if std::env::var_os("TALLY_PRINT").is_some() {
            println!("{query}\n  -> {}", d["results"]);
        }
        let found = match &d["results"] {
            Value::Array(rows) => !rows.is_empty(),
            other => some_count(other),
        };
        assert!(
            found,
            "the query {query} should find something, or it proves little"
        );
    }
}

/// Which attempt a funnel counts, and which event gives its breakdown value, worked by
/// hand (the case of issue 18.3). With a 70-minute window:
/// - u1: page_visit 09:00 (google), page_visit 10:00, signed_up 10:05 (app). Both starts
///   reach signed_up; the earliest wins the tie: google, 3,900 s.
/// - u2: page_visit 08:00 (ads), page_visit 09:00 (bing), signed_up 09:30. Only the 09:00
///   start is within the window of signed_up: bing, 1,800 s.
/// - u3: page_visit 07:00 (google) and nothing else.
#[test]
fn a_funnel_counts_the_best_attempt_and_attributes_it_as_asked() {
    let event = |n: u128, name: &str, user: &str, ts: &str, utm: Option<&str>| {
        let mut properties = Map::new();
        if let Some(u) = utm {
            properties.insert("utm_source".into(), json!(u));
        }
        Event {
            uuid: uuid::Uuid::from_u128(n),
            kind: EventType::Track,
            event: name.into(),
            user_id: Some(user.into()),
            device_id: None,
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: at(ts),
            received_at: at(ts),
            properties,
            traits: Map::new(),
            context: Map::new(),
        }
    };
    let events = vec![
        event(
            1,
            "page_visit",
            "u1",
            "2026-11-02T09:00:00Z",
            Some("google"),
        ),
        event(2, "page_visit", "u1", "2026-11-02T10:00:00Z", None),
        event(3, "signed_up", "u1", "2026-11-02T10:05:00Z", Some("app")),
        event(4, "page_visit", "u2", "2026-11-02T08:00:00Z", Some("ads")),
        event(5, "page_visit", "u2", "2026-11-02T09:00:00Z", Some("bing")),
        event(6, "signed_up", "u2", "2026-11-02T09:30:00Z", None),
        event(
            7,
            "page_visit",
            "u3",
            "2026-11-02T07:00:00Z",
            Some("google"),
        ),
    ];
    let (_dir, duck, ch) = stores_of("attribution", events);
    let funnel = |extra: Value| {
        let mut q = json!({"kind": "funnel", "date_range": ["2026-11-02", "2026-11-02"],
            "steps": [{"event": "page_visit"}, {"event": "signed_up"}],
            "window": {"value": 70, "unit": "minute"},
            "breakdown": "event:props:utm_source"});
        for (k, v) in extra.as_object().unwrap() {
            q[k] = v.clone();
        }
        q
    };
    // (breakdown, people at step 0, at step 1, median seconds to convert)
    let rows = |answer: &Value| -> Vec<(Value, u64, u64, Value)> {
        answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let s = &r["steps"];
                (
                    r["breakdown"].clone(),
                    s[0]["count"].as_u64().unwrap(),
                    s[1]["count"].as_u64().unwrap(),
                    s[1]["median_time_to_convert_s"].clone(),
                )
            })
            .collect()
    };
    let cases = [
        (
            json!({}),
            vec![
                (Value::Null, 3, 2, json!(2850.0)),
                (json!("google"), 2, 1, json!(3900.0)),
                (json!("bing"), 1, 1, json!(1800.0)),
            ],
        ),
        (
            json!({"breakdown_attribution": "last_touch"}),
            vec![
                (Value::Null, 3, 2, json!(2850.0)),
                (json!("(none)"), 1, 1, json!(1800.0)),
                (json!("app"), 1, 1, json!(3900.0)),
                (json!("google"), 1, 0, Value::Null),
            ],
        ),
        (
            json!({"breakdown_attribution": {"step": 1}}),
            vec![
                (Value::Null, 3, 2, json!(2850.0)),
                (json!("(none)"), 2, 1, json!(1800.0)),
                (json!("app"), 1, 1, json!(3900.0)),
            ],
        ),
        // An exclusion that never happens takes the plan that follows every start: the
        // same answer.
        (
            json!({"exclusions": [{"event": "never"}]}),
            vec![
                (Value::Null, 3, 2, json!(2850.0)),
                (json!("google"), 2, 1, json!(3900.0)),
                (json!("bing"), 1, 1, json!(1800.0)),
            ],
        ),
    ];
    for (extra, expected) in cases {
        let q = funnel(extra);
        let d = run(&duck, "p", &q, now()).unwrap_or_else(|e| panic!("duckdb {q}: {e}"));
        assert_eq!(rows(&d), expected, "duckdb: {q}");
        let c = run(&ch, "p", &q, now()).unwrap_or_else(|e| panic!("clickhouse {q}: {e}"));
        assert_eq!(rows(&c), expected, "clickhouse: {q}");
    }
    // Unordered funnels have no step order to attribute by.
    let q = funnel(json!({"order": "unordered", "breakdown_attribution": "last_touch"}));
    let err = run(&duck, "p", &q, now()).unwrap_err();
    assert!(err.to_string().contains("breakdown_attribution"), "{err}");
}

/// A "ClickHouse" that only records the SQL it is sent (and answers with no rows).
#[derive(Default)]
struct Recorder {
    statements: Mutex<Vec<String>>,
    rollups: bool,
}

impl Store for Recorder {
    fn dialect(&self) -> Dialect {
        Dialect::ClickHouse
    }
    fn rollups(&self) -> bool {
        self.rollups
    }
    fn committed_lsn(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn insert(
        &self,
        _: &[StoredBatch<'_>],
        _: u64,
    ) -> Result<tally_store::InsertStats, StoreError> {
        unreachable!("reads only")
    }
    fn query(&self, sql: &Sql) -> Result<Rows, StoreError> {
        self.statements
            .lock()
            .unwrap()
            .push(inline_params(&sql.text, &sql.params)?);
        Ok(Vec::new())
    }
}

/// Every statement the conformance queries compile to also runs on a current
/// ClickHouse (chDB, from PyPI), on the schema the store creates for that version.
#[test]
fn the_generated_sql_runs_on_a_current_release_in_chdb() {
    let recorder = Recorder {
        rollups: true,
        ..Recorder::default()
    };
    for query in queries().into_iter().chain(rollup_queries()) {
        run(&recorder, "p", &query, now()).unwrap();
    }
    let statements = recorder.statements.into_inner().unwrap();
    assert!(statements.len() >= queries().len());
    let version = Version::parse(&chdb::version()).unwrap();
    let mut setup = vec!["CREATE DATABASE IF NOT EXISTS `tally`".to_owned()];
    setup.extend(schema_sql(version, "tally", None));
    let mut all = setup;
    all.push("USE tally".to_owned());
    all.extend(statements.iter().cloned());
    if let Err(e) = chdb::run(&all) {
        panic!("chdb {version} refused a statement: {e}");
    }
}

/// bob's profile, worked by hand from `events()`: his two anonymous page views on d-bob
/// (linked when he signed up), the sign-up and a feature use are his 4 events in the
/// range, newest first; the identify and group calls are not in the timeline but give his
/// traits and accounts. Both stores answer it (the test above compares them).
#[test]
fn a_persons_profile_worked_by_hand() {
    let (_dir, duck, ch) = stores("person");
    let q =
        json!({"kind": "person", "person_id": "bob", "date_range": ["2026-10-20", "2026-11-19"]});
    for store in [&duck as &dyn tally_store::Store, &ch] {
        let r = run(store, "p", &q, now()).unwrap();
        let p = &r["results"];
        assert_eq!(p["events"], 4, "{r}");
        assert_eq!(r["total_rows"], 4);
        assert_eq!(p["traits"], json!({"plan": "free"}));
        assert_eq!(
            p["devices"],
            json!([{"device_id": "d-bob", "linked_at": "2026-11-04T08:00:00.000000Z"}])
        );
        let accounts: Vec<&str> = p["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["account_id"].as_str().unwrap())
            .collect();
        assert_eq!(accounts, ["acme", "globex"], "in the order he joined them");
        assert_eq!(p["first_seen"], "2026-11-02T10:00:00.000000Z");
        assert_eq!(p["last_seen"], "2026-11-09T12:00:00.000000Z");
        let timeline: Vec<(&str, Option<&str>)> = p["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["event"].as_str().unwrap(), e["user_id"].as_str()))
            .collect();
        assert_eq!(
            timeline,
            [
                ("feature_used", Some("bob")),
                ("signup", Some("bob")),
                ("page_visit", None),
                ("page_visit", None),
            ]
        );
        // carol's account is named by her feature use, not by a group call.
        let carol = json!({"kind": "person", "person_id": "carol", "date_range": "all"});
        let c = run(store, "p", &carol, now()).unwrap();
        assert_eq!(c["results"]["accounts"][0]["account_id"], "initech", "{c}");
        assert_eq!(
            c["results"]["accounts"][0]["first_seen"],
            "2026-11-16T11:00:00.000000Z"
        );
        // His device's id opens him.
        let by_device = json!({"kind": "person", "person_id": "d-bob",
                               "date_range": ["2026-10-20", "2026-11-19"]});
        let d = run(store, "p", &by_device, now()).unwrap();
        assert_eq!(d["results"]["person_id"], "bob");
        assert_eq!(d["results"]["asked_for"], "d-bob");
        assert_eq!(d["results"]["timeline"], p["timeline"]);
        // Someone who never came: nothing, and no error.
        let r = run(
            store,
            "p",
            &json!({"kind": "person", "person_id": "nobody", "date_range": "all"}),
            now(),
        )
        .unwrap();
        assert_eq!(r["results"]["events"], 0);
        assert!(r["results"]["first_seen"].is_null(), "{r}");
        assert_eq!(r["results"]["timeline"], json!([]));
    }
    // No person named: a 400 naming the field.
    let e = run(
        &duck,
        "p",
        &json!({"kind": "person", "date_range": "all"}),
        now(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("person_id"), "{e}");
}

/// acme's activity by day, worked by hand: alice is its member (bob's last group call
/// named globex, so his events count there), and her four events fall on three UTC days
/// of the range: 10-24 (the visit at 22:30), 10-25 (sign-up and a visit), 11-03 (the
/// purchase); every other day is there with 0.
#[test]
fn an_accounts_activity_by_day_worked_by_hand() {
    let (_dir, duck, ch) = stores("activity");
    let q = json!({"kind": "accounts", "account_id": "acme", "date_range": ["2026-10-20", "2026-11-19"]});
    for store in [&duck as &dyn tally_store::Store, &ch] {
        let r = run(store, "p", &q, now()).unwrap();
        let days = r["activity"].as_array().unwrap();
        assert_eq!(days.len(), 31, "every day of the range: {r}");
        assert_eq!(days[0]["day"], "2026-10-20");
        assert_eq!(days[30]["day"], "2026-11-19");
        let busy: Vec<(&str, u64, u64)> = days
            .iter()
            .filter(|d| d["events"].as_u64().unwrap() > 0)
            .map(|d| {
                (
                    d["day"].as_str().unwrap(),
                    d["events"].as_u64().unwrap(),
                    d["people"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            busy,
            [
                ("2026-10-24", 1, 1),
                ("2026-10-25", 2, 1),
                ("2026-11-03", 1, 1)
            ]
        );
    }
}
