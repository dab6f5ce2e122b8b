//! Every report kind against a small dataset whose answers are worked out by hand in
//! the comments below, on a real DuckDB store and on a real ClickHouse (Debian's 18.16
//! on loopback): the same answers from both.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use tally_model::{Event, EventBatch, EventType};
use tally_query::run;
use tally_store::clickhouse::{ClickHouseConfig, ClickHouseStore};
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::Store;
use tally_testkit::ClickHouse;

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

/// The dataset in one store: every test runs on each (DuckDB, and ClickHouse 18.16 on
/// loopback, which scripts/test.sh installs), with the same hand-worked answers.
struct Fixture {
    _dir: tempfile::TempDir,
    name: &'static str,
    store: Box<dyn Store>,
}

fn fixtures() -> Vec<Fixture> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = tempfile::tempdir().unwrap();
    let duck = DuckStore::open(&dir.path().join("t.duckdb"), DuckConfig::default()).unwrap();
    let ch = ClickHouseStore::open(ClickHouseConfig {
        url: ClickHouse::shared().url(),
        database: format!(
            "reports_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        ..ClickHouseConfig::default()
    })
    .unwrap();
    let stores: Vec<(&'static str, Box<dyn Store>)> =
        vec![("duckdb", Box::new(duck)), ("clickhouse", Box::new(ch))];
    // Two batches: the identity link arrives in a later batch than bob's anonymous visit.
    let events = dataset();
    let (first, second) = events.split_at(7);
    let mut out = Vec::new();
    let mut dir = Some(dir);
    for (name, store) in stores {
        for (i, part) in [first, second].into_iter().enumerate() {
            let batch = EventBatch {
                project_id: "p".into(),
                events: part.to_vec(),
            };
            batch
                .as_stored(|b| store.insert(std::slice::from_ref(b), i as u64 + 1))
                .unwrap();
        }
        out.push(Fixture {
            _dir: dir.take().unwrap_or_else(|| tempfile::tempdir().unwrap()),
            name,
            store,
        });
    }
    out
}

impl Fixture {
    /// Stores `events` as one more batch.
    fn add(&self, events: Vec<Event>) {
        let batch = EventBatch {
            project_id: "p".into(),
            events,
        };
        batch
            .as_stored(|b| self.store.insert(std::slice::from_ref(b), 3))
            .unwrap();
    }

    fn q(&self, body: Value) -> Value {
        eprintln!("on {}: {body}", self.name);
        run(self.store.as_ref(), "p", &body, now())
            .unwrap_or_else(|e| panic!("{} {body}: {e}", self.name))
    }

    fn err(&self, body: Value) -> String {
        run(self.store.as_ref(), "p", &body, now())
            .unwrap_err()
            .to_string()
    }
}

const MON_WED: [&str; 2] = ["2026-11-02", "2026-11-04"];

#[test]
fn trends_totals_uniques_sums_and_a_formula() {
    for f in fixtures() {
        let r = f.q(json!({
            "kind": "trends", "date_range": MON_WED, "interval": "day",
            "series": [
                {"event": "signup"},
                {"event": "page_visit", "math": "unique"},
                {"event": "purchase", "math": "sum", "property": "amount"},
            ],
            "formula": "A / B",
        }));
        let res = &r["results"];
        assert_eq!(
            res[0]["labels"],
            json!(["2026-11-02", "2026-11-03", "2026-11-04"])
        );
        assert_eq!(res[0]["data"], json!([1, 2, 0]));
        assert_eq!(res[0]["total"], json!(3));
        // Mon: alice, bob (seen as d-bob, linked later), d-anon. Tue: carol. Unique over
        // the range: 4 people, not 5 devices-and-users.
        assert_eq!(res[1]["data"], json!([3, 1, 0]));
        assert_eq!(res[1]["total"], json!(4));
        assert_eq!(res[2]["data"], json!([30, 0, 20]));
        assert_eq!(res[2]["total"], json!(50));
        let formula = &r["formula"]["results"][0];
        assert_eq!(formula["data"], json!([0.3333, 2, null]));
        assert_eq!(formula["total"], json!(0.75));
        assert_eq!(r["query"]["series"][1]["name"], "B");
    }
}

#[test]
fn trends_breakdown_keeps_the_top_values_and_folds_the_rest() {
    for f in fixtures() {
        let r = f.q(json!({
            "kind": "trends", "date_range": MON_WED,
            "series": [{"event": "page_visit"}],
            "breakdown": ["event:page"], "breakdown_limit": 1,
        }));
        let res = r["results"].as_array().unwrap();
        assert_eq!(res.len(), 2);
        assert_eq!(res[0]["breakdown"], json!(["/home"]));
        assert_eq!(res[0]["data"], json!([2, 1, 0]));
        assert_eq!(res[1]["breakdown"], json!(["$other"]));
        assert_eq!(res[1]["data"], json!([1, 0, 0]));
    }
}

#[test]
fn trends_rolling_weekly_actives() {
    for f in fixtures() {
        let r = f.q(json!({
            "kind": "trends", "date_range": ["2026-11-08", "2026-11-10"],
            "series": [{"math": "wau"}],
        }));
        // 11-08 looks back to 11-02: alice, bob, carol, d-anon = 4. 11-09 (11-03..11-09):
        // bob, carol, alice = 3 (d-anon's only day fell out). 11-10 (11-04..11-10): bob,
        // alice, carol = 3.
        assert_eq!(r["results"][0]["data"], json!([4, 3, 3]));
    }
}

#[test]
fn trends_days_follow_the_local_clock_across_dst() {
    for f in fixtures() {
        let events = vec![
            // 00:30 CEST on 10-25 (still summer time) and 23:30 CET the same local day.
            build(ev("signup", "zed", "2026-10-24T22:30:00Z")),
            build(ev("signup", "zed", "2026-10-25T22:30:00Z")),
        ];
        f.add(events);
        let r = f.q(json!({
            "kind": "trends", "date_range": ["2026-10-24", "2026-10-26"],
            "timezone": "Europe/Berlin", "series": [{"event": "signup"}],
        }));
        assert_eq!(
            r["results"][0]["labels"],
            json!(["2026-10-24", "2026-10-25", "2026-10-26"])
        );
        assert_eq!(r["results"][0]["data"], json!([0, 2, 0]));
    }
}

fn counts(r: &Value, i: usize) -> Vec<u64> {
    r["results"][i]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .collect()
}

#[test]
fn funnel_ordered_joins_the_anonymous_visit_to_the_signup() {
    for f in fixtures() {
        let body = |days: u64| {
            json!({
                "kind": "funnel", "date_range": MON_WED,
                "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "purchase"}],
                "window": {"value": days, "unit": "day"},
            })
        };
        // 1 day: alice 3 steps; bob pv (as d-bob) -> signup 22 h later, purchase 50 h after
        // the pv is outside; carol 2; d-anon 1.
        let r = f.q(body(1));
        assert_eq!(counts(&r, 0), vec![4, 3, 1]);
        let steps = &r["results"][0]["steps"];
        assert_eq!(steps[1]["conversion_rate"], json!(75.0));
        assert_eq!(steps[2]["step_conversion_rate"], json!(33.33));
        // pv -> signup: alice 300 s, bob 79,200 s, carol 1,800 s.
        assert_eq!(steps[1]["median_time_to_convert_s"], json!(1800.0));
        assert_eq!(steps[1]["avg_time_to_convert_s"], json!(27100.0));
        assert_eq!(steps[2]["median_time_to_convert_s"], json!(300.0));
        // 3 days: bob's purchase is in; signup -> purchase 28 h.
        let r = f.q(body(3));
        assert_eq!(counts(&r, 0), vec![4, 3, 2]);
        assert_eq!(
            r["results"][0]["steps"][2]["avg_time_to_convert_s"],
            json!((300.0 + 100_800.0) / 2.0)
        );
    }
}

#[test]
fn funnel_strict_unordered_and_exclusions() {
    for f in fixtures() {
        let steps = json!([{"event": "page_visit"}, {"event": "purchase"}]);
        let ordered = f.q(json!({"kind": "funnel", "date_range": MON_WED, "steps": steps}));
        assert_eq!(counts(&ordered, 0), vec![4, 2]);
        // Strict: a signup always comes between the visit and the purchase.
        let strict = f
            .q(json!({"kind": "funnel", "date_range": MON_WED, "steps": steps, "order": "strict"}));
        assert_eq!(counts(&strict, 0), vec![4, 0]);
        // Excluding signup between the steps voids alice's and bob's conversions; they
        // leave the funnel. carol and d-anon never purchased, so nothing is voided.
        let excluded = f.q(json!({
            "kind": "funnel", "date_range": MON_WED, "steps": steps,
            "exclusions": [{"event": "signup", "from_step": 0, "to_step": 1}],
        }));
        assert_eq!(counts(&excluded, 0), vec![2, 0]);
        // Purchase before signup: ordered finds nobody doing both in that order...
        let reversed = json!([{"event": "purchase"}, {"event": "signup"}]);
        let r = f.q(json!({"kind": "funnel", "date_range": MON_WED, "steps": reversed}));
        assert_eq!(counts(&r, 0), vec![2, 0]);
        // ...unordered counts alice and bob for both, carol for one step.
        let r = f.q(
        json!({"kind": "funnel", "date_range": MON_WED, "steps": reversed, "order": "unordered"}),
    );
        assert_eq!(counts(&r, 0), vec![3, 2]);
    }
}

#[test]
fn funnel_by_account_and_with_a_breakdown() {
    for f in fixtures() {
        let r = f.q(json!({
            "kind": "funnel", "date_range": MON_WED, "count_by": "account",
            "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "purchase"}],
            "window": {"value": 1, "unit": "day"},
        }));
        // acme (alice + bob): all three on Monday; globex (carol): two; d-anon has no account.
        assert_eq!(counts(&r, 0), vec![2, 2, 1]);

        let r = f.q(json!({
            "kind": "funnel", "date_range": MON_WED, "breakdown": "event:page",
            "steps": [{"event": "page_visit"}, {"event": "signup"}],
        }));
        assert_eq!(r["results"][0]["breakdown"], Value::Null);
        assert_eq!(counts(&r, 0), vec![4, 3]);
        assert_eq!(r["results"][1]["breakdown"], "/home");
        assert_eq!(counts(&r, 1), vec![3, 3]);
        assert_eq!(r["results"][2]["breakdown"], "/pricing");
        assert_eq!(counts(&r, 2), vec![1, 0]);
    }
}

#[test]
fn retention_first_time_and_recurring() {
    for f in fixtures() {
        let r = f.q(json!({
            "kind": "retention", "date_range": ["2026-11-02", "2026-11-22"], "period": "week",
            "intervals": 3, "target": {"event": "signup"},
        }));
        let rows = r["results"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        // Week of 11-02: alice, bob, carol signed up. Week +1: alice and carol came back.
        // Week +2: alice.
        assert_eq!(rows[0]["cohort"], "2026-11-02");
        assert_eq!(rows[0]["size"], 3);
        let values: Vec<(u64, f64)> = rows[0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["count"].as_u64().unwrap(),
                    v["percentage"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(values, vec![(3, 100.0), (2, 66.67), (1, 33.33)]);
        // Later cohorts are empty and only list the intervals that have begun.
        assert_eq!(rows[1]["size"], 0);
        assert_eq!(rows[1]["values"].as_array().unwrap().len(), 2);
        assert_eq!(rows[2]["values"].as_array().unwrap().len(), 1);

        let r = f.q(json!({
            "kind": "retention", "date_range": ["2026-11-02", "2026-11-22"], "period": "week",
            "intervals": 3, "type": "recurring",
            "target": {"event": "feature_used"}, "returning": {"event": "feature_used"},
        }));
        let sizes: Vec<u64> = r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["size"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, vec![1, 2, 1]);
        assert_eq!(r["results"][0]["values"][1]["count"], 1);
        assert_eq!(r["results"][0]["values"][2]["count"], 1);
        assert_eq!(r["results"][1]["values"][1]["count"], 1);
    }
}

#[test]
fn lifecycle_new_returning_resurrecting_dormant() {
    for f in fixtures() {
        let r = f.q(json!({"kind": "lifecycle", "date_range": MON_WED, "interval": "day"}));
        let res = &r["results"];
        assert_eq!(res["new"], json!([3, 1, 0]));
        assert_eq!(res["returning"], json!([0, 1, 1]));
        assert_eq!(res["resurrecting"], json!([0, 0, 1]));
        assert_eq!(res["dormant"], json!([0, -2, -1]));
    }
}

#[test]
fn stickiness_counts_active_days() {
    for f in fixtures() {
        let r = f.q(json!({"kind": "stickiness", "date_range": ["2026-11-02", "2026-11-08"]}));
        // alice 2 days, bob 3, carol 1, d-anon 1.
        let counts: Vec<u64> = r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, vec![2, 1, 1, 0, 0, 0, 0]);
        assert_eq!(r["results"][0]["percentage"], json!(50.0));
        assert_eq!(r["periods"], 7);
    }
}

#[test]
fn paths_after_and_before_signup() {
    for f in fixtures() {
        let r = f.q(json!({
            "kind": "paths", "date_range": ["2026-11-02", "2026-11-22"],
            "start": {"event": "signup"}, "depth": 2,
        }));
        let res = &r["results"];
        assert_eq!(res["people"], 3);
        assert_eq!(
            res["steps"][0]["edges"],
            json!([
                {"from": "signup", "to": "purchase", "count": 2},
                {"from": "signup", "to": "feature_used", "count": 1},
            ])
        );
        assert_eq!(
            res["steps"][1]["edges"],
            json!([{"from": "purchase", "to": "feature_used", "count": 1}])
        );
        let r = f.q(json!({
            "kind": "paths", "date_range": ["2026-11-02", "2026-11-22"],
            "start": {"event": "signup"}, "depth": 1, "direction": "previous",
        }));
        assert_eq!(
            r["results"]["steps"][0]["edges"],
            json!([{"from": "signup", "to": "page_visit", "count": 3}])
        );
    }
}

#[test]
fn accounts_health_activity_and_users() {
    for f in fixtures() {
        let week1 = ["2026-11-02", "2026-11-08"];
        let r = f.q(json!({"kind": "accounts", "date_range": week1}));
        let rows = r["results"].as_array().unwrap();
        assert_eq!(r["total_rows"], 2);
        assert_eq!(rows[0]["account_id"], "acme");
        assert_eq!(rows[0]["name"], "Acme");
        // acme: alice 4 events + bob 3 (his anonymous visit included); globex: carol 2.
        assert_eq!(rows[0]["events"], 7);
        assert_eq!(rows[0]["users"], 2);
        assert_eq!(rows[0]["wau"], 2);
        assert_eq!(rows[0]["dau"], 0);
        assert_eq!(rows[0]["health"], "New");
        assert_eq!(rows[1]["events"], 2);

        let r = f.q(json!({
            "kind": "accounts", "date_range": week1,
            "health": {"new_days": 0, "min_stickiness": 0},
            "filters": [["is", "account:props:plan", ["pro"]]],
        }));
        assert_eq!(r["total_rows"], 1);
        assert_eq!(r["results"][0]["health"], "Healthy");

        // The next week against this one: acme 7 -> 1 (-85.71 %), globex 2 -> 1 (-50 %).
        let r = f.q(json!({
            "kind": "accounts", "date_range": ["2026-11-09", "2026-11-15"],
            "health": {"new_days": 0}, "order_by": [["trend", "asc"]],
        }));
        let rows = r["results"].as_array().unwrap();
        assert_eq!(rows[0]["account_id"], "acme");
        assert_eq!(rows[0]["trend"], json!(-85.71));
        assert_eq!(rows[0]["health"], "Critical");
        assert_eq!(rows[1]["trend"], json!(-50.0));
        assert_eq!(rows[1]["health"], "Critical");

        let r = f.q(json!({"kind": "accounts", "date_range": week1, "account_id": "acme"}));
        let users = r["results"].as_array().unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            (users[0]["user_id"].as_str(), users[0]["events"].as_u64()),
            (Some("alice"), Some(4))
        );
        assert_eq!(
            (users[1]["user_id"].as_str(), users[1]["events"].as_u64()),
            (Some("bob"), Some(3))
        );
        assert_eq!(users[1]["days_active"], 3);
    }
}

#[test]
fn accounts_previous_period_is_as_long_as_the_period() {
    // One day, 11-16, against 11-15 only: the scan reads 30 days back (for MAU), but the
    // events of 11-02..11-09 are not the previous period's.
    for f in fixtures() {
        let r = f.q(json!({
            "kind": "accounts", "date_range": ["2026-11-16", "2026-11-16"],
            "health": {"new_days": 0},
        }));
        let rows = r["results"].as_array().unwrap();
        assert_eq!(rows[0]["account_id"], "acme", "{}", f.name);
        assert_eq!(rows[0]["events"], 1, "{}", f.name);
        assert_eq!(rows[0]["previous_events"], 0, "{}", f.name);
        assert_eq!(rows[0]["trend"], Value::Null, "{}", f.name);
        // alice active on the day, alice and bob in the 30 days: 0.5, not a drop.
        assert_eq!(rows[0]["health"], "Healthy", "{}", f.name);
        assert_eq!(rows[1]["account_id"], "globex", "{}", f.name);
        assert_eq!(rows[1]["events"], 0, "{}", f.name);
        assert_eq!(rows[1]["previous_events"], 0, "{}", f.name);
        assert_eq!(rows[1]["health"], "Inactive", "{}", f.name);
    }
}

#[test]
fn realtime_counts_the_last_minutes_only() {
    for f in fixtures() {
        let events = vec![
            build(ev("feature_used", "alice", "2026-11-20T11:59:00Z")),
            build(ev("feature_used", "carol", "2026-11-20T11:50:00Z")),
        ];
        f.add(events);
        let r = f.q(json!({"kind": "realtime", "minutes": 5}));
        assert_eq!(r["results"]["visitors"], 1);
        assert_eq!(r["results"]["events"], 1);
        assert_eq!(r["results"]["top_events"][0]["event"], "feature_used");
    }
}

#[test]
fn bad_report_queries_name_the_field() {
    for f in fixtures() {
        let cases = [
            (json!({"kind": "trends", "date_range": "7d"}), "series"),
            (
                json!({"kind": "trends", "date_range": "7d", "series": [{"math": "sum"}]}),
                "series[0].property",
            ),
            (
                json!({"kind": "trends", "date_range": "7d", "series": [{"event": "a"}], "formula": "A / Q"}),
                "formula",
            ),
            (
                json!({"kind": "trends", "date_range": "7d", "series": [{"math": "wau"}], "interval": "week"}),
                "series[0].math",
            ),
            (
                json!({"kind": "funnel", "date_range": "7d", "steps": [{"event": "a"}]}),
                "steps",
            ),
            (
                json!({"kind": "funnel", "date_range": "7d", "steps": [{"event": "a"}, {"event": 3}]}),
                "steps[1].event",
            ),
            (
                json!({"kind": "funnel", "date_range": "7d", "steps": [{"event": "a"}, {"event": "b"}], "window": {"value": 1, "unit": "year"}}),
                "window.unit",
            ),
            (
                json!({"kind": "funnel", "date_range": "7d", "steps": [{"event": "a"}, {"event": "b"}], "exclusions": [{"event": "x", "from_step": 1, "to_step": 1}]}),
                "exclusions[0].to_step",
            ),
            (
                json!({"kind": "retention", "date_range": "7d", "period": "year"}),
                "period",
            ),
            (json!({"kind": "paths", "date_range": "7d"}), "start"),
            (
                json!({"kind": "accounts", "order_by": [["revenue", "desc"]]}),
                "order_by[0][0]",
            ),
            (json!({"kind": "realtime", "minutes": 0}), "minutes"),
            (
                json!({"kind": "lifecycle", "date_range": "7d", "bogus": 1}),
                "bogus",
            ),
            (json!({"kind": "nope"}), "kind"),
        ];
        for (body, field) in cases {
            let err = f.err(body.clone());
            assert!(
                err.starts_with(&format!("{field}: ")),
                "{body} gave {err:?}, expected the field {field}"
            );
        }
    }
}

fn metrics(r: &Value) -> Value {
    r["results"][0]["metrics"].clone()
}

#[test]
fn stats_counts_people_not_ids_and_cuts_visits() {
    for f in fixtures() {
        let base = json!({"kind": "stats", "date_range": MON_WED});
        let q = |extra: Value| {
            let mut body = base.clone();
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            f.q(body)
        };
        // d-bob and bob are one visitor.
        let r = q(json!({"metrics": ["visitors", "events", "pageviews"]}));
        assert_eq!(metrics(&r), json!([4, 10, 4]));
        // Visits (30 minutes of silence ends one): alice Mon 09:00-09:10 and Wed; bob Mon,
        // Tue, Wed; carol Tue 08:30-09:00 (exactly 30 minutes: still one); d-anon Mon = 7.
        // Bounces (one event, at most one page view): alice Wed, bob x3, d-anon = 5 of 7.
        // Duration: (600 + 1800) / 7 = 342.9 s.
        let r = q(
            json!({"metrics": ["visits", "bounce_rate", "visit_duration", "views_per_visit", "visitors"]}),
        );
        assert_eq!(metrics(&r), json!([7, 71, 343, 0.57, 4]));
        let r = q(json!({"metrics": ["visits"], "dimensions": ["visit:entry_page"]}));
        assert_eq!(
            r["results"],
            json!([
                {"dimensions": ["/home"], "metrics": [3]},
                {"dimensions": ["(none)"], "metrics": [3]},
                {"dimensions": ["/pricing"], "metrics": [1]},
            ])
        );
        // Top pages by page views: the custom events have no page, and a `(none)` row of
        // 0 page views would be noise. Counted with events, the row is there.
        let pages = |metric: &str| {
            let r = q(json!({"metrics": [metric], "dimensions": ["event:page"],
                             "include": {"total_rows": true}}));
            let rows: Vec<(String, u64)> = r["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| {
                    let page = row["dimensions"][0].as_str().unwrap().to_owned();
                    (page, row["metrics"][0].as_u64().unwrap())
                })
                .collect();
            assert_eq!(r["meta"]["total_rows"], json!(rows.len()), "{metric}: {r}");
            rows
        };
        let by_views = pages("pageviews");
        assert!(
            by_views.iter().all(|(page, n)| page != "(none)" && *n > 0),
            "{by_views:?}"
        );
        assert_eq!(by_views.iter().map(|(_, n)| n).sum::<u64>(), 4);
        let by_events = pages("events");
        assert!(
            by_events.iter().any(|(page, n)| page == "(none)" && *n > 0),
            "{by_events:?}"
        );
        assert_eq!(by_events.iter().map(|(_, n)| n).sum::<u64>(), 10);
        assert_eq!(by_views.len() + 1, by_events.len());
    }
}

#[test]
fn stats_filter_trees_and_operators() {
    for f in fixtures() {
        let events = |filters: Value| {
            let r = f.q(json!({"kind": "stats", "date_range": MON_WED, "metrics": ["events"], "filters": filters}));
            metrics(&r)[0].as_u64().unwrap()
        };
        let or = json!([[
            "or",
            [
                ["is", "event:name", ["signup"]],
                ["gt", "event:props:amount", [25]]
            ]
        ]]);
        assert_eq!(events(or), 4);
        assert_eq!(
            events(json!([["not", ["is", "event:name", ["page_visit"]]]])),
            6
        );
        assert_eq!(events(json!([["is_set", "event:props:amount"]])), 2);
        assert_eq!(events(json!([["is_not_set", "event:props:amount"]])), 8);
        assert_eq!(events(json!([["lt", "event:props:amount", ["25"]]])), 1);
        assert_eq!(events(json!([["matches", "event:page", ["^/pr"]]])), 1);
        assert_eq!(events(json!([["contains_not", "event:name", ["SIGN"]]])), 7);
        let nested = json!([[
            "and",
            [
                ["is", "event:page", ["/home"]],
                ["not", ["is", "event:name", ["signup"]]]
            ]
        ]]);
        assert_eq!(events(nested), 3);
    }
}

#[test]
fn stats_person_traits_property_metrics_percentages_and_goals() {
    for f in fixtures() {
        let identify = Event {
            traits: json!({"plan": "pro"}).as_object().unwrap().clone(),
            ..build(E {
                kind: EventType::Identify,
                ..ev("$identify", "alice", "2026-11-02T08:59:00Z")
            })
        };
        f.add(vec![identify]);
        let r = f.q(
            json!({"kind": "stats", "date_range": MON_WED, "metrics": ["events"],
        "filters": [["is", "person:props:plan", ["pro"]]]}),
        );
        assert_eq!(metrics(&r), json!([4]));
        let r = f.q(
            json!({"kind": "stats", "date_range": MON_WED, "metrics": ["visitors"],
        "dimensions": ["person:props:plan"]}),
        );
        assert_eq!(
            r["results"],
            json!([{"dimensions": ["(none)"], "metrics": [3]}, {"dimensions": ["pro"], "metrics": [1]}])
        );
        let r = f.q(json!({"kind": "stats", "date_range": MON_WED,
        "metrics": ["sum:amount", "p50:amount", "max:amount"]}));
        assert_eq!(metrics(&r), json!([50, 25, 30]));
        let r = f.q(
            json!({"kind": "stats", "date_range": MON_WED, "metrics": ["visitors", "percentage"],
        "dimensions": ["event:page"]}),
        );
        assert_eq!(r["results"][0]["dimensions"], json!(["/home"]));
        assert_eq!(r["results"][0]["metrics"], json!([3, 75]));
        // 3 of the 4 people signed up.
        let r = f.q(json!({"kind": "stats", "date_range": MON_WED, "metrics": ["conversion_rate"], "goal": "signup"}));
        assert_eq!(metrics(&r), json!([75]));
    }
}

#[test]
fn stats_time_labels_total_rows_and_comparison() {
    for f in fixtures() {
        let r = f.q(
        json!({"kind": "stats", "date_range": ["2026-11-02", "2026-11-06"], "metrics": ["events"],
        "dimensions": ["time:day"], "include": {"time_labels": true}}),
    );
        let series: Vec<u64> = r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["metrics"][0].as_u64().unwrap())
            .collect();
        assert_eq!(series, vec![5, 3, 2, 0, 0]);
        assert_eq!(r["meta"]["time_labels"].as_array().unwrap().len(), 5);

        let r = f.q(
            json!({"kind": "stats", "date_range": MON_WED, "metrics": ["events"],
        "dimensions": ["event:name"], "pagination": {"limit": 1}, "include": {"total_rows": true}}),
        );
        assert_eq!(
            r["results"],
            json!([{"dimensions": ["page_visit"], "metrics": [4]}])
        );
        assert_eq!(r["meta"]["total_rows"], 4);

        let r = f.q(
        json!({"kind": "stats", "date_range": ["2026-11-09", "2026-11-15"], "metrics": ["events"],
        "compare": "previous_period"}),
    );
        assert_eq!(metrics(&r), json!([2]));
        assert_eq!(r["results"][0]["comparison"]["metrics"], json!([10]));
        assert_eq!(r["results"][0]["comparison"]["change"], json!([-80.0]));
    }
}

#[test]
fn stats_reads_hosts_sources_and_user_agents_from_every_format() {
    for f in fixtures() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let posthog_like = Event {
            properties: obj(
                json!({"page_url": "https://shop.example.com/a?x=1", "utm_source": "news"}),
            ),
            context: obj(
                json!({"user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"}),
            ),
            ..build(ev("page_visit", "zed", "2026-11-05T10:00:00Z"))
        };
        let segment_like = Event {
            context: obj(json!({
                "page": {"url": "https://www.example.org/b", "referrer": "https://www.google.com/search?q=x"},
                "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            })),
            ..build(ev("page_visit", "yan", "2026-11-05T11:00:00Z"))
        };
        f.add(vec![posthog_like, segment_like]);
        let r = f.q(
        json!({"kind": "stats", "date_range": ["2026-11-05", "2026-11-05"], "metrics": ["events"],
        "dimensions": ["event:hostname", "visit:source", "visit:browser", "visit:os"]}),
    );
        assert_eq!(
            r["results"],
            json!([
                {"dimensions": ["shop.example.com", "news", "Safari", "iOS"], "metrics": [1]},
                {"dimensions": ["www.example.org", "google.com", "Chrome", "Windows"], "metrics": [1]},
            ])
        );
        let r = f.q(
        json!({"kind": "stats", "date_range": ["2026-11-05", "2026-11-05"], "metrics": ["events"],
        "dimensions": ["visit:device", "visit:utm_source", "visit:referrer"]}),
    );
        assert_eq!(
            r["results"],
            json!([
                {"dimensions": ["Desktop", "(none)", "https://www.google.com/search?q=x"], "metrics": [1]},
                {"dimensions": ["Mobile", "news", "(none)"], "metrics": [1]},
            ])
        );
    }
}
