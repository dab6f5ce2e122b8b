//! Property tests: on random event streams, funnels, retention, lifecycle and visits from
//! the engine (SQL on a real DuckDB) equal a plain Rust reference written here.
//!
//! Streams are small on purpose (a few people, a few event names, minute timestamps over
//! three days) so that ties, window edges, 30-minute visit edges and identity links
//! happen often. Every case gets its own project in one shared store.

mod common;
use common::{now, origin, shared, MINUTE};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tally_model::{Event, EventBatch, EventType};
use tally_query::run;
use tally_store::Store;

const DAY: i64 = 1_440 * MINUTE;
const NAMES: &[&str] = &["a", "b", "c"];

/// A generated event: who (user and/or device), what, when (minutes from the origin).
#[derive(Debug, Clone)]
struct Gen {
    user: Option<u8>,
    device: Option<u8>,
    name: usize,
    minute: i64,
}

fn gen_event() -> impl Strategy<Value = Gen> {
    (
        prop::option::weighted(0.6, 0u8..3),
        prop::option::weighted(0.6, 0u8..3),
        0usize..NAMES.len(),
        // Clustered times: a day (0-2) and a minute within a busy two hours.
        (0i64..3, 0i64..120),
    )
        .prop_map(|(user, device, name, (day, minute))| Gen {
            user: user.or(if device.is_none() { Some(0) } else { None }),
            device,
            name,
            minute: day * 1_440 + 9 * 60 + minute,
        })
}

/// Stored events, and the project they are in.
struct Case {
    project: String,
    events: Vec<Event>,
}

fn load(gens: &[Gen]) -> Case {
    let s = shared();
    let project = format!("p{}", s.next());
    let events: Vec<Event> = gens
        .iter()
        .map(|g| Event {
            uuid: uuid::Uuid::new_v4(),
            kind: EventType::Track,
            event: NAMES[g.name].into(),
            user_id: g.user.map(|u| format!("u{u}")),
            device_id: g.device.map(|d| format!("d{d}")),
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: origin() + g.minute * MINUTE,
            received_at: origin(),
            properties: Map::new(),
            traits: Map::new(),
            context: Map::new(),
        })
        .collect();
    let lsn = s.next();
    let batch = EventBatch {
        project_id: project.clone(),
        events: events.clone(),
    };
    batch
        .as_stored(|b| s.store.insert(std::slice::from_ref(b), lsn))
        .unwrap();
    Case { project, events }
}

impl Case {
    fn q(&self, body: Value) -> Value {
        run(&shared().store, &self.project, &body, now()).unwrap()
    }

    /// The writer's identity rule: a device belongs to the user it was first seen with
    /// (earliest timestamp; the first in the batch on ties).
    fn person_of(&self) -> impl Fn(&Event) -> String {
        let mut links: HashMap<String, (String, i64)> = HashMap::new();
        for e in &self.events {
            if let (Some(u), Some(d)) = (&e.user_id, &e.device_id) {
                let link = links.entry(d.clone()).or_insert((u.clone(), e.timestamp));
                if e.timestamp < link.1 {
                    *link = (u.clone(), e.timestamp);
                }
            }
        }
        move |e: &Event| {
            e.user_id
                .clone()
                .or_else(|| {
                    e.device_id
                        .as_ref()
                        .and_then(|d| links.get(d))
                        .map(|l| l.0.clone())
                })
                .or_else(|| e.device_id.clone())
                .unwrap()
        }
    }

    /// Each person's events in the engine's order: time, then arrival.
    fn by_person(&self) -> BTreeMap<String, Vec<&Event>> {
        let person = self.person_of();
        let mut out: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
        for e in &self.events {
            out.entry(person(e)).or_default().push(e);
        }
        // Ties keep the order of the batch: the engine breaks them by arrival.
        for list in out.values_mut() {
            list.sort_by_key(|e| e.timestamp);
        }
        out
    }
}

/// Ordered funnel, by the book: every step-0 event starts an attempt, each later step is
/// the first matching event after the previous one, within `window` of the start.
fn reference_funnel(case: &Case, steps: &[usize], window: i64) -> Vec<u64> {
    let mut counts = vec![0u64; steps.len()];
    for events in case.by_person().values() {
        let mut best = 0;
        for (i, start) in events.iter().enumerate() {
            if start.event != NAMES[steps[0]] {
                continue;
            }
            let mut level = 1;
            let mut cur = i;
            for step in &steps[1..] {
                match (cur + 1..events.len()).find(|j| events[*j].event == NAMES[*step]) {
                    Some(j) if events[j].timestamp - start.timestamp <= window => {
                        level += 1;
                        cur = j;
                    }
                    _ => break,
                }
            }
            best = best.max(level);
        }
        for c in counts.iter_mut().take(best) {
            *c += 1;
        }
    }
    counts
}

fn day_of(ts: i64) -> i64 {
    (ts - origin()).div_euclid(DAY)
}

/// First-time daily retention: cohort = day of the first `target`; interval i counts
/// the cohort's people with any event on cohort day + i (interval 0 = cohort size).
fn reference_retention(case: &Case, target: usize, days: i64, intervals: i64) -> Vec<Vec<u64>> {
    let mut grid = vec![vec![0u64; intervals as usize]; days as usize];
    for events in case.by_person().values() {
        let Some(first) = events.iter().find(|e| e.event == NAMES[target]) else {
            continue;
        };
        let cohort = day_of(first.timestamp);
        if cohort >= days {
            continue;
        }
        grid[cohort as usize][0] += 1;
        let active: BTreeSet<i64> = events.iter().map(|e| day_of(e.timestamp)).collect();
        for i in 1..intervals {
            if active.contains(&(cohort + i)) {
                grid[cohort as usize][i as usize] += 1;
            }
        }
    }
    grid
}

/// Daily lifecycle over `days` days: (new, returning, resurrecting, dormant) per day.
fn reference_lifecycle(case: &Case, days: i64) -> Vec<[i64; 4]> {
    let mut out = vec![[0i64; 4]; days as usize];
    for events in case.by_person().values() {
        let active: BTreeSet<i64> = events.iter().map(|e| day_of(e.timestamp)).collect();
        let first = *active.iter().next().unwrap();
        for d in 0..days {
            let row = &mut out[d as usize];
            if active.contains(&d) {
                if d == first {
                    row[0] += 1;
                } else if active.contains(&(d - 1)) {
                    row[1] += 1;
                } else {
                    row[2] += 1;
                }
            } else if active.contains(&(d - 1)) {
                row[3] -= 1;
            }
        }
    }
    out
}

/// Visits: a new one after more than 30 minutes without an event. Returns (visits,
/// bounce rate %, mean duration s), rounded as the engine rounds.
fn reference_visits(case: &Case) -> (u64, i64, i64) {
    let (mut visits, mut bounces, mut duration) = (0u64, 0u64, 0i64);
    for events in case.by_person().values() {
        let mut start = 0;
        for i in 1..=events.len() {
            let ends =
                i == events.len() || events[i].timestamp - events[i - 1].timestamp > 30 * MINUTE;
            if ends {
                visits += 1;
                if i - start == 1 {
                    bounces += 1;
                }
                duration += (events[i - 1].timestamp - events[start].timestamp) / 1_000_000;
                start = i;
            }
        }
    }
    let v = visits as f64;
    (
        visits,
        (100.0 * bounces as f64 / v).round() as i64,
        (duration as f64 / v).round() as i64,
    )
}

const RANGE: [&str; 2] = ["2026-11-02", "2026-11-04"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn funnels_match_the_reference(
        gens in prop::collection::vec(gen_event(), 1..40),
        steps in prop::collection::vec(0usize..3, 2..4),
        window_minutes in prop_oneof![1i64..30, Just(1_440), Just(4_320)],
    ) {
        let case = load(&gens);
        let r = case.q(json!({
            "kind": "funnel", "date_range": RANGE,
            "steps": steps.iter().map(|s| json!({"event": NAMES[*s]})).collect::<Vec<_>>(),
            "window": {"value": window_minutes, "unit": "minute"},
        }));
        let got: Vec<u64> = r["results"][0]["steps"].as_array().unwrap()
            .iter().map(|s| s["count"].as_u64().unwrap()).collect();
        prop_assert_eq!(got, reference_funnel(&case, &steps, window_minutes * MINUTE));
    }

    #[test]
    fn retention_matches_the_reference(
        gens in prop::collection::vec(gen_event(), 1..40),
        target in 0usize..3,
    ) {
        let case = load(&gens);
        let r = case.q(json!({
            "kind": "retention", "date_range": RANGE, "period": "day", "intervals": 3,
            "target": {"event": NAMES[target]},
        }));
        let got: Vec<Vec<u64>> = r["results"].as_array().unwrap().iter()
            .map(|c| {
                let mut row: Vec<u64> = c["values"].as_array().unwrap().iter()
                    .map(|v| v["count"].as_u64().unwrap()).collect();
                row.resize(3, 0);
                row
            })
            .collect();
        prop_assert_eq!(got, reference_retention(&case, target, 3, 3));
    }

    #[test]
    fn lifecycle_matches_the_reference(gens in prop::collection::vec(gen_event(), 1..40)) {
        let case = load(&gens);
        let r = case.q(json!({"kind": "lifecycle", "date_range": RANGE, "interval": "day"}));
        let col = |k: &str| -> Vec<i64> {
            r["results"][k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
        };
        let (new, returning, resurrecting, dormant) =
            (col("new"), col("returning"), col("resurrecting"), col("dormant"));
        let got: Vec<[i64; 4]> = (0..3).map(|d| [new[d], returning[d], resurrecting[d], dormant[d]]).collect();
        prop_assert_eq!(got, reference_lifecycle(&case, 3));
    }

    #[test]
    fn rolling_weekly_actives_match_the_reference(gens in prop::collection::vec(gen_event(), 1..40)) {
        let case = load(&gens);
        let r = case.q(json!({
            "kind": "trends", "date_range": RANGE, "series": [{"math": "wau"}],
        }));
        let got: Vec<u64> = r["results"][0]["data"].as_array().unwrap()
            .iter().map(|v| v.as_u64().unwrap()).collect();
        // Day d: people with an event on days d-6..=d.
        let want: Vec<u64> = (0..3)
            .map(|d| {
                case.by_person().values()
                    .filter(|events| events.iter().any(|e| (d - 6..=d).contains(&day_of(e.timestamp))))
                    .count() as u64
            })
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn visits_match_the_reference(gens in prop::collection::vec(gen_event(), 1..40)) {
        let case = load(&gens);
        let r = case.q(json!({
            "kind": "stats", "date_range": RANGE,
            "metrics": ["visits", "bounce_rate", "visit_duration"],
        }));
        let m = &r["results"][0]["metrics"];
        let got = (m[0].as_u64().unwrap(), m[1].as_i64().unwrap(), m[2].as_i64().unwrap());
        prop_assert_eq!(got, reference_visits(&case));
    }
}
