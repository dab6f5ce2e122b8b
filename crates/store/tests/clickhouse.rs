//! The ClickHouse store against real servers: Debian's `clickhouse-server` (18.16) on
//! loopback, started once for this test binary in a temporary directory, and a current
//! release through chDB (PyPI's `chdb`) for the schema. scripts/test.sh installs both.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tally_model::{Event, EventBatch, EventType};
use tally_store::clickhouse::{
    events_insert_settings, schema_sql, ClickHouseConfig, ClickHouseStore, Version,
};
use tally_store::{Param, Sql, Store, StoreError};
use tally_testkit::{chdb, free_port, ClickHouse};
use uuid::Uuid;

fn open(database: &str) -> ClickHouseStore {
    ClickHouseStore::open(ClickHouseConfig {
        url: ClickHouse::shared().url(),
        database: database.into(),
        retries: 1,
        backoff: Duration::from_millis(50),
        ..ClickHouseConfig::default()
    })
    .unwrap()
}

const T0: i64 = 1_790_000_000_000_000;

fn event(kind: EventType, name: &str, user: Option<&str>, device: Option<&str>, at: i64) -> Event {
    Event {
        uuid: Uuid::new_v4(),
        kind,
        event: name.into(),
        user_id: user.map(Into::into),
        device_id: device.map(Into::into),
        session_id: None,
        group_id: None,
        previous_id: None,
        timestamp: at,
        received_at: at,
        properties: Map::new(),
        traits: Map::new(),
        context: Map::new(),
    }
}

fn traits(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn one(store: &ClickHouseStore, sql: &str) -> Value {
    store
        .query(&Sql {
            text: sql.into(),
            params: vec![],
        })
        .unwrap()[0][0]
        .clone()
}

#[test]
fn opens_on_debians_server_and_migrates_once() {
    let store = open("t_migrate");
    assert_eq!(
        store.version(),
        Version(18, 16, 1),
        "the server Debian packages"
    );
    let tables = store
        .query(&Sql {
            text: "SELECT name FROM system.tables WHERE database = ? ORDER BY name".into(),
            params: vec![Param::Text("t_migrate".into())],
        })
        .unwrap();
    let names: Vec<&str> = tables.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "events",
            "events_hourly",
            "events_hourly_mv",
            "group_members",
            "groups",
            "identities",
            "persons",
            "queue_offsets",
            "tally_migrations"
        ]
    );
    drop(store);
    let again = open("t_migrate");
    assert_eq!(
        one(&again, "SELECT count() FROM t_migrate.tally_migrations"),
        json!(2)
    );
    assert_eq!(again.committed_lsn().unwrap(), 0);
}

#[test]
fn a_batch_is_stored_whole_and_a_replayed_batch_is_not_counted_twice() {
    let store = open("t_insert");
    let mut page = event(EventType::Page, "page_visit", None, Some("d1"), T0);
    page.properties = traits(json!({"page_path": "/pricing"}));
    let mut signup = event(
        EventType::Track,
        "signup",
        Some("u1"),
        Some("d1"),
        T0 + 1_000,
    );
    signup.properties = traits(json!({"plan": "pro", "quote": "it's \\ fine"}));
    let mut group = event(EventType::Group, "$group", Some("u1"), None, T0 + 2_000);
    group.group_id = Some("acme".into());
    group.traits = traits(json!({"name": "Acme"}));
    let batch = EventBatch {
        project_id: "p1".into(),
        events: vec![page, signup, group],
    };

    let stats = batch
        .as_stored(|b| store.insert(std::slice::from_ref(b), 7))
        .unwrap();
    assert_eq!((stats.events, stats.groups), (3, 1));
    assert_eq!(store.committed_lsn().unwrap(), 7);
    let rows = store
        .query(&Sql {
            text: "SELECT event, visitor_id, page, visitParamExtractString(properties, 'quote') FROM t_insert.events \
                   WHERE project_id = $1 ORDER BY ts"
                .into(),
            params: vec![Param::Text("p1".into())],
        })
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![
                json!("page_visit"),
                json!("d1"),
                json!("/pricing"),
                json!("")
            ],
            vec![
                json!("signup"),
                json!("u1"),
                Value::Null,
                json!("it's \\ fine")
            ],
            vec![json!("$group"), json!("u1"), Value::Null, json!("")],
        ]
    );
    assert_eq!(
        one(
            &store,
            "SELECT argMin(user_id, linked_at) FROM t_insert.identities WHERE device_id = 'd1'"
        ),
        json!("u1"),
        "the device is linked to the user who signed in on it"
    );
    assert_eq!(
        one(
            &store,
            "SELECT count() FROM t_insert.group_members WHERE group_id = 'acme'"
        ),
        json!(1)
    );

    // The writer crashed before its queue position was saved and sends the batch again.
    batch
        .as_stored(|b| store.insert(std::slice::from_ref(b), 7))
        .unwrap();
    assert_eq!(
        one(&store, "SELECT count() FROM t_insert.events FINAL"),
        json!(3),
        "reads with FINAL see each event once"
    );
    store
        .query(&Sql {
            text: "OPTIMIZE TABLE t_insert.events FINAL".into(),
            params: vec![],
        })
        .ok();
    assert_eq!(
        one(&store, "SELECT count() FROM t_insert.events"),
        json!(3),
        "and merges remove the copy"
    );
}

#[test]
fn traits_merge_across_batches_with_the_later_call_winning() {
    let insert_p1 = |store: &ClickHouseStore, events: Vec<Event>, lsn: u64| {
        let batch = EventBatch {
            project_id: "p1".into(),
            events,
        };
        batch
            .as_stored(|b| store.insert(std::slice::from_ref(b), lsn))
            .unwrap();
    };
    let store = open("t_traits");
    let mut first = event(EventType::Identify, "$identify", Some("u1"), None, T0);
    first.traits = traits(json!({"plan": "free", "company": "Acme"}));
    insert_p1(&store, vec![first], 1);
    let mut later = event(
        EventType::Identify,
        "$identify",
        Some("u1"),
        None,
        T0 + 10_000,
    );
    later.traits = traits(json!({"plan": "pro"}));
    // A call from before both that arrives last only fills gaps.
    let mut stale = event(
        EventType::Identify,
        "$identify",
        Some("u1"),
        None,
        T0 - 10_000,
    );
    stale.traits = traits(json!({"plan": "trial", "country": "DE"}));
    insert_p1(&store, vec![later], 2);
    insert_p1(&store, vec![stale], 3);
    let current = one(
        &store,
        "SELECT argMax(traits, written_at) FROM t_traits.persons WHERE user_id = 'u1'",
    );
    let current: Value = serde_json::from_str(current.as_str().unwrap()).unwrap();
    assert_eq!(
        current,
        json!({"plan": "pro", "company": "Acme", "country": "DE"})
    );
    assert_eq!(store.committed_lsn().unwrap(), 3);
}

#[test]
fn a_bad_statement_fails_at_once_as_permanent() {
    let store = open("t_errors");
    let started = Instant::now();
    match store.query(&Sql {
        text: "SELEC 1".into(),
        params: vec![],
    }) {
        Err(
            e @ StoreError::ClickHouse {
                code: Some(62),
                transient: false,
                ..
            },
        ) => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("Syntax error"), "{e}");
        }
        other => panic!("expected a permanent syntax error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
    match store.query(&Sql {
        text: "SELECT * FROM t_errors.nope".into(),
        params: vec![],
    }) {
        Err(StoreError::ClickHouse {
            code: Some(60),
            transient: false,
            ..
        }) => {}
        other => panic!("expected unknown table (60), got {other:?}"),
    }
}

#[test]
fn an_unreachable_server_is_retried_with_backoff_then_reported() {
    let port = free_port();
    let started = Instant::now();
    let result = ClickHouseStore::open(ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        retries: 2,
        backoff: Duration::from_millis(100),
        ..ClickHouseConfig::default()
    });
    match result {
        Err(e @ StoreError::Unavailable { attempts: 3, .. }) => assert!(e.is_transient()),
        Err(other) => panic!("expected Unavailable after 3 attempts, got {other:?}"),
        Ok(_) => panic!("nothing listens on port {port}"),
    }
    // 100 ms, then 200 ms between the three attempts.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// The schema for a current release, run in chDB (an embedded current ClickHouse), with a
/// row inserted twice under one dedup token.
#[test]
fn the_schema_for_current_releases_runs_in_chdb() {
    let version = Version::parse(&chdb::version()).unwrap();
    assert!(
        version >= Version(22, 2, 0),
        "chDB runs a current release, got {version}"
    );
    let mut statements = vec!["CREATE DATABASE IF NOT EXISTS `tally`".to_owned()];
    statements.extend(schema_sql(version, "tally", None));
    let row = r#"{"project_id":"p","uuid":"u-1","type":"track","event":"e","user_id":null,"device_id":"d","session_id":null,"group_id":null,"visitor_id":"d","ts":1790000000000000,"received_at":1790000000000000,"page":null,"properties":"{}","traits":"{}","context":"{}","lsn":1}"#;
    // The settings the store sends with a batch.
    let settings: Vec<String> = events_insert_settings(version, "batch-1")
        .into_iter()
        .map(|(k, v)| format!("{k} = '{v}'"))
        .collect();
    assert_eq!(settings.len(), 2);
    for _ in 0..2 {
        statements.push(format!(
            "INSERT INTO tally.events SETTINGS {} FORMAT JSONEachRow {row}",
            settings.join(", ")
        ));
    }
    statements.push(
        "SELECT (SELECT count() FROM tally.events), (SELECT sum(events) FROM tally.events_hourly)"
            .to_owned(),
    );
    let counted = chdb::run(&statements).unwrap_or_else(|e| panic!("chdb refused the schema: {e}"));
    assert_eq!(
        counted, "1,1",
        "the second insert with the same token is dropped at insert time, and not rolled up"
    );
}

/// The rollup's migration fills it from the events stored before it existed, and its
/// view keeps it up to date after: its counts are the events' counts.
#[test]
fn the_rollup_counts_events_stored_before_and_after_it() {
    let db = "t_rollup";
    let store = open(db);
    let hour = 3_600_000_000;
    let batch = |at: i64| EventBatch {
        project_id: "p1".into(),
        events: vec![
            event(EventType::Page, "page_visit", None, Some("d1"), at),
            event(
                EventType::Track,
                "signup",
                Some("u1"),
                Some("d1"),
                at + hour,
            ),
            event(EventType::Identify, "identify", Some("u1"), None, at + hour),
        ],
    };
    batch(T0)
        .as_stored(|b| store.insert(std::slice::from_ref(b), 1))
        .unwrap();
    // Back to the schema before the rollup, with one batch stored.
    for sql in [
        format!("DROP TABLE {db}.events_hourly_mv"),
        format!("DROP TABLE {db}.events_hourly"),
        format!("ALTER TABLE {db}.tally_migrations DELETE WHERE version = 2"),
    ] {
        let answer = reqwest::blocking::Client::new()
            .post(ClickHouse::shared().url())
            .body(sql.clone())
            .send()
            .unwrap();
        assert!(answer.status().is_success(), "{sql}: {answer:?}");
    }
    // Mutations apply in the background.
    let deadline = Instant::now() + Duration::from_secs(20);
    while one(
        &store,
        &format!("SELECT count() FROM {db}.tally_migrations"),
    ) != json!(1)
    {
        assert!(
            Instant::now() < deadline,
            "the migration row was not deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(store);
    let store = open(db);
    batch(T0 + 24 * hour)
        .as_stored(|b| store.insert(std::slice::from_ref(b), 2))
        .unwrap();
    let rolled = store
        .query(&Sql {
            text: format!(
                "SELECT hour, event, sum(events), sum(pageviews) FROM {db}.events_hourly \
                 GROUP BY hour, event ORDER BY hour, event"
            ),
            params: vec![],
        })
        .unwrap();
    let raw = store
        .query(&Sql {
            text: format!(
                "SELECT intDiv(ts, 3600000000) * 3600000000 AS h, event, count(), countIf(type = 'page') \
                 FROM {db}.events FINAL WHERE type != 'identify' GROUP BY h, event ORDER BY h, event"
            ),
            params: vec![],
        })
        .unwrap();
    assert_eq!(rolled.len(), 4, "two hours of each batch: {rolled:?}");
    assert_eq!(rolled, raw);
}
