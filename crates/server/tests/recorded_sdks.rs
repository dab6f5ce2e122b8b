//! Requests recorded from the real SDKs (tests/fixtures/recorded, made by
//! tests/sdk/record.mjs) replayed byte for byte through the real server: same method,
//! path and query, content-type, content-encoding, authorization and body (gzip stays
//! gzip). The recordings carry the placeholder write key [`REC_WRITE_KEY`], which each
//! test adds to its server's project.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{event_names, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_server::meta::Projects;

/// The write key the recordings were made with (see fixtures/recorded/README.md).
const REC_WRITE_KEY: &str = "REC_WRITE_KEY_0000000000000000000000000000000";

const USER: &str = "rec_user_1";
const ANON: &str = "rec_anon_1";
const GROUP: &str = "rec_group_1";
const EVENT: &str = "recorded_event";

/// One recorded HTTP request.
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn recording(sdk: &str) -> Vec<Recorded> {
    let path = format!(
        "{}/tests/fixtures/recorded/{sdk}.json",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let items: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(!items.is_empty(), "{path} holds no requests");
    items
        .iter()
        .map(|item| Recorded {
            method: item["method"].as_str().unwrap().to_owned(),
            path: item["path"].as_str().unwrap().to_owned(),
            headers: item["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            body: base64::engine::general_purpose::STANDARD
                .decode(item["body_base64"].as_str().unwrap())
                .unwrap(),
        })
        .collect()
}

/// A server whose project also accepts [`REC_WRITE_KEY`]. The server reloads
/// projects.json when its mtime changes (checked every second); a probe that names the
/// key but holds no valid event answers 401 until then, and 400 after.
async fn server_with_recorded_key() -> TestServer {
    let s = TestServer::start().await;
    let mut projects = Projects::load(&s.data_dir).unwrap();
    projects.projects[0]
        .write_keys
        .push(REC_WRITE_KEY.to_owned());
    projects.save(&s.data_dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{REC_WRITE_KEY}:"));
    let started = Instant::now();
    let mut saved = Instant::now();
    loop {
        let r = s
            .client
            .post(format!("{}/v1/track", s.base))
            .header("authorization", format!("Basic {auth}"))
            .header("content-type", "application/json")
            .body(r#"{"event": "key_probe"}"#)
            .send()
            .await
            .unwrap();
        let status = r.status();
        if status != StatusCode::UNAUTHORIZED {
            let body = r.text().await.unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "key probe: {body}");
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not pick up the recorded write key"
        );
        // Should the rewrite have kept the mtime (a coarse clock), write it again.
        if saved.elapsed() > Duration::from_secs(2) {
            projects.save(&s.data_dir).unwrap();
            saved = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends each recorded request as it was recorded; each must get a 2xx with the
/// format's success body.
async fn replay(s: &TestServer, sdk: &str) -> usize {
    let requests = recording(sdk);
    for req in &requests {
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap();
        let mut builder = s
            .client
            .request(method, format!("{}{}", s.base, req.path))
            .body(req.body.clone());
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let r = builder.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(
            status.is_success(),
            "{sdk}: {} {} answered {status}: {text}",
            req.method,
            req.path
        );
        let answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{sdk}: {} answered {text:?}", req.path));
        if req.path.starts_with("/v1/") {
            assert_eq!(answer, json!({"success": true}), "{sdk}: {}", req.path);
        } else {
            assert_eq!(answer, json!({"status": 1}), "{sdk}: {}", req.path);
        }
    }
    requests.len()
}

fn one<'a>(rows: &'a [Value], event: &str) -> &'a Value {
    let hits: Vec<&Value> = rows.iter().filter(|r| r["event"] == event).collect();
    assert_eq!(hits.len(), 1, "expected one {event} row: {rows:#?}");
    hits[0]
}

fn micros(ts: &Value) -> i64 {
    let text = ts
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {ts}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp_micros()
}

/// The recordings were made long before the replay, but every one carries a send time
/// (`sentAt` / `sent_at`), so the stored time is the receive time less the SDK's own
/// queueing delay: now, not the recording date.
fn assert_times_are_replay_times(rows: &[Value]) {
    let now = chrono::Utc::now().timestamp_micros();
    for r in rows {
        let (ts, received) = (micros(&r["timestamp"]), micros(&r["received_at"]));
        assert!(
            (now - received).abs() < 60_000_000,
            "{}: received_at {}",
            r["event"],
            r["received_at"]
        );
        let lag = received - ts;
        assert!(
            (0..=5_000_000).contains(&lag),
            "{}: timestamp {} vs received_at {}",
            r["event"],
            r["timestamp"],
            r["received_at"]
        );
    }
}

/// The process-wide count of events dropped as duplicates.
async fn deduplicated(s: &TestServer) -> f64 {
    s.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("tally_events_deduplicated_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn segment_node_recording_is_stored_once_even_when_replayed_twice() {
    let s = server_with_recorded_key().await;
    let requests = recording("segment-node");
    assert!(requests
        .iter()
        .all(|r| r.method == "POST" && r.path == "/v1/batch"));
    replay(&s, "segment-node").await;
    let rows = s.event_rows(5).await;
    assert_eq!(
        event_names(&rows),
        vec!["$alias", "$group", "$identify", "Pricing", EVENT]
    );
    assert_times_are_replay_times(&rows);

    let track = one(&rows, EVENT);
    assert_eq!(track["type"], "track");
    assert_eq!(track["user_id"], USER);
    assert!(track["device_id"].is_null(), "{track}");
    assert_eq!(track["uuid"], "3f1e6a52-7c0d-4b8e-9a61-5d2c8e4f0a01");
    assert_eq!(track["properties"]["plan"], "pro");
    assert_eq!(track["properties"]["revenue"], 42.5);
    assert_eq!(track["properties"]["seats"], 3);
    assert_eq!(track["properties"]["nested"], json!({"tags": ["a", "b"]}));
    assert_eq!(
        track["context"]["library"]["name"],
        "@segment/analytics-node"
    );

    let identify = one(&rows, "$identify");
    assert_eq!(identify["type"], "identify");
    assert_eq!(identify["user_id"], USER);
    assert_eq!(identify["device_id"], ANON);
    assert_eq!(
        identify["traits"],
        json!({"email": "rec_user_1@example.com", "name": "Ada", "plan": "pro"})
    );

    let page = one(&rows, "Pricing");
    assert_eq!(page["type"], "page");
    assert_eq!(page["user_id"], USER);
    assert_eq!(page["properties"]["path"], "/pricing");
    assert_eq!(page["properties"]["url"], "https://example.com/pricing");
    assert_eq!(page["properties"]["category"], "Docs");

    let group = one(&rows, "$group");
    assert_eq!(group["type"], "group");
    assert_eq!(group["user_id"], USER);
    assert_eq!(group["group_id"], GROUP);
    assert_eq!(group["traits"], json!({"name": "Acme", "employees": 50}));

    let alias = one(&rows, "$alias");
    assert_eq!(alias["type"], "alias");
    assert_eq!(alias["user_id"], USER);

    // The SDK's own messageIds ("node-next-<ms>-<uuid>") are not UUIDs; the server
    // derives stable ids from them, so a retried batch is dropped whole. (This is the
    // only test in this file that makes duplicates: the counter is process-wide.)
    let before = deduplicated(&s).await;
    replay(&s, "segment-node").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while deduplicated(&s).await < before + 5.0 {
        assert!(
            Instant::now() < deadline,
            "the writer did not report the 5 duplicates"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let again = s.event_rows(5).await;
    let ids = |rows: &[Value]| {
        let mut v: Vec<String> = rows.iter().map(|r| r["uuid"].to_string()).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(ids(&again), ids(&rows));
}

#[tokio::test]
async fn posthog_node_gzip_recording_is_stored() {
    let s = server_with_recorded_key().await;
    let requests = recording("posthog-node");
    // posthog-node gzips its batches: the recording must still be gzip.
    for r in &requests {
        assert!(r.body.starts_with(&[0x1f, 0x8b]), "{} is not gzip", r.path);
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| k == "content-encoding" && v == "gzip"),
            "{} has no content-encoding: gzip",
            r.path
        );
    }
    replay(&s, "posthog-node").await;
    let rows = s.event_rows(4).await;
    assert_eq!(
        event_names(&rows),
        vec!["$create_alias", "$groupidentify", "$identify", EVENT]
    );
    assert_times_are_replay_times(&rows);

    assert_posthog_rows(
        &rows,
        "posthog-node",
        "3f1e6a52-7c0d-4b8e-9a61-5d2c8e4f0a02",
        "$identify",
    );
}

#[tokio::test]
async fn posthog_python_recording_is_stored() {
    let s = server_with_recorded_key().await;
    replay(&s, "posthog-python").await;
    let rows = s.event_rows(4).await;
    assert_eq!(
        event_names(&rows),
        vec!["$create_alias", "$groupidentify", "$set", EVENT]
    );
    assert_times_are_replay_times(&rows);

    // posthog-python's set() puts `$set` at the top level of the event, not in its
    // properties; it still becomes the person's traits.
    assert_posthog_rows(
        &rows,
        "posthog-python",
        "3f1e6a52-7c0d-4b8e-9a61-5d2c8e4f0a03",
        "$set",
    );
}

/// What both PostHog SDKs' recordings must become: the capture with its uuid, group and
/// properties; the person update (`person_event`) with traits; the group; the alias.
fn assert_posthog_rows(rows: &[Value], lib: &str, uuid: &str, person_event: &str) {
    let capture = one(rows, EVENT);
    assert_eq!(capture["type"], "track");
    assert_eq!(capture["user_id"], USER);
    assert!(capture["device_id"].is_null(), "{capture}");
    assert_eq!(capture["uuid"], uuid);
    assert_eq!(capture["group_id"], GROUP, "$groups gives the group");
    assert_eq!(capture["properties"]["plan"], "pro");
    assert_eq!(capture["properties"]["amount"], 9.99);
    assert_eq!(capture["properties"]["nested"], json!({"tags": ["a", "b"]}));
    assert_eq!(capture["properties"]["$lib"], lib);

    let person = one(rows, person_event);
    assert_eq!(person["type"], "identify");
    assert_eq!(person["user_id"], USER);
    assert_eq!(
        person["traits"],
        json!({"email": "rec_user_1@example.com", "name": "Ada"})
    );

    let group = one(rows, "$groupidentify");
    assert_eq!(group["type"], "group");
    assert_eq!(group["user_id"], USER);
    assert_eq!(group["group_id"], GROUP);
    assert_eq!(
        group["traits"],
        json!({"name": "Acme", "employees": 50, "group_type": "company"})
    );

    let alias = one(rows, "$create_alias");
    assert_eq!(alias["type"], "alias");
    assert_eq!(alias["user_id"], USER);
}

#[tokio::test]
async fn segment_python_recording_is_stored() {
    let s = server_with_recorded_key().await;
    replay(&s, "segment-python").await;
    let rows = s.event_rows(5).await;
    assert_eq!(
        event_names(&rows),
        vec!["$alias", "$group", "$identify", "Pricing", EVENT]
    );
    assert_times_are_replay_times(&rows);

    // analytics-python sends `"anonymousId": null` on calls without one.
    let track = one(&rows, EVENT);
    assert_eq!(track["type"], "track");
    assert_eq!(track["user_id"], USER);
    assert!(track["device_id"].is_null(), "{track}");
    assert_eq!(track["uuid"], "3f1e6a52-7c0d-4b8e-9a61-5d2c8e4f0a04");
    assert_eq!(track["properties"]["plan"], "pro");
    assert_eq!(track["properties"]["revenue"], 42.5);
    assert_eq!(track["properties"]["nested"], json!({"tags": ["a", "b"]}));
    assert_eq!(track["context"]["library"]["name"], "analytics-python");

    let identify = one(&rows, "$identify");
    assert_eq!(identify["type"], "identify");
    assert_eq!(identify["user_id"], USER);
    assert_eq!(identify["device_id"], ANON);
    assert_eq!(
        identify["traits"],
        json!({"email": "rec_user_1@example.com", "name": "Ada"})
    );

    let page = one(&rows, "Pricing");
    assert_eq!(page["type"], "page");
    assert_eq!(page["user_id"], USER);
    assert_eq!(page["properties"]["path"], "/pricing");
    // `category` travels beside the properties; the server copies it in.
    assert_eq!(page["properties"]["category"], "Docs");

    let group = one(&rows, "$group");
    assert_eq!(group["type"], "group");
    assert_eq!(group["user_id"], USER);
    assert_eq!(group["group_id"], GROUP);
    assert_eq!(group["traits"], json!({"name": "Acme", "employees": 50}));

    let alias = one(&rows, "$alias");
    assert_eq!(alias["type"], "alias");
    assert_eq!(alias["user_id"], USER);
}
