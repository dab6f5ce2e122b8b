//! Start-up with a large dedup window to load: the port answers at once (`/healthz` 200,
//! `/readyz` 503 with why until the writer runs), ingest is acknowledged meanwhile, and
//! the writer then stores the new events with the whole window in force.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_model::{Event, EventBatch, EventType};
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::{Sql, Store};
use tally_testkit::free_port;

use common::{create_project, BIN};

#[tokio::test]
async fn the_port_answers_while_the_dedup_window_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let write_key = create_project(data, "p").write_key;

    // 600,000 recent events: their ids make the dedup window the writer loads first.
    let now = chrono::Utc::now().timestamp_micros();
    let retried = uuid::Uuid::now_v7();
    {
        let store = DuckStore::open(&data.join("tally.duckdb"), DuckConfig::default()).unwrap();
        for chunk in 0..30 {
            let events = (0..20_000)
                .map(|i| {
                    let mut e = Event::new(EventType::Track, "old");
                    e.user_id = Some(format!("u{i}"));
                    e.timestamp = now - 60_000_000;
                    e.received_at = now - 60_000_000;
                    if chunk == 0 && i == 0 {
                        e.uuid = retried;
                    }
                    e
                })
                .collect();
            let batch = EventBatch {
                project_id: "p".into(),
                events,
            };
            batch
                .as_stored(|b| store.insert(std::slice::from_ref(b), 0))
                .unwrap();
        }
        store.checkpoint().unwrap();
    }

    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["--data-dir", data.to_str().unwrap(), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("TALLY_WRITER_BATCH_MAX_WAIT_MS", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut first_answer = None;
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            assert!(r.status().is_success());
            first_answer = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_answer = first_answer.expect("/healthz never answered");

    // Ingest right away, while the window may still be loading: acknowledged, no hang.
    let sent = Instant::now();
    let r = client
        .post(format!("{base}/api/track"))
        .header("x-api-key", &write_key)
        .json(&json!([
            {"event_name": "new", "user_id": "u1"},
            {"event_name": "old", "user_id": "u0", "message_id": retried.to_string()}
        ]))
        .send()
        .await
        .expect("ingest answers while the writer starts");
    assert_eq!(r.status(), 200);
    let ack = sent.elapsed();

    // /readyz: 503 with why while loading, then 200.
    let mut saw_loading = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        if status == 200 {
            assert_eq!(body["ready"], true);
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["writer"]["ok"], false, "{body}");
        assert!(body["why"][0].as_str().unwrap().contains("dedup"), "{body}");
        saw_loading.get_or_insert(body);
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_after = started.elapsed();
    // Loading 600,000 ids takes about a second here; the port answered long before.
    assert!(
        saw_loading.is_some(),
        "not ready was never seen: the port answered only once loading was done \
         (healthz after {first_answer:?}, ready after {ready_after:?})"
    );
    println!(
        "healthz after {first_answer:?}, ingest acked in {ack:?}, ready after {ready_after:?}, \
         loading seen: {}",
        saw_loading.is_some()
    );

    // Stop gracefully (the writer drains), then count: the new event stored, the retry
    // of a stored id dropped by the window.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}");
    let store = DuckStore::open(&data.join("tally.duckdb"), DuckConfig::default()).unwrap();
    let rows = store
        .query(&Sql {
            text: "SELECT event, count(*) FROM events GROUP BY event ORDER BY event".into(),
            params: vec![],
        })
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![json!("new"), json!(1)],
            vec![json!("old"), json!(600_000)]
        ]
    );
}
