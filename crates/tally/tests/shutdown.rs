//! SIGTERM: readiness goes first. With `http.unready_delay_ms`, `/readyz` answers 503
//! ("stopping") while ingest is still served, then the process drains and exits 0 with
//! every acknowledged event stored.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_testkit::free_port;

use common::{create_project, sigterm, stored, wait_ready, BIN};

#[tokio::test]
async fn readiness_goes_503_before_the_server_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let key = create_project(data, "p").write_key;
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["--data-dir", data.to_str().unwrap(), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("TALLY_HTTP_UNREADY_DELAY_MS", "2000")
        .env("TALLY_WRITER_BATCH_MAX_WAIT_MS", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    wait_ready(&client, &base).await;
    let track = |n: u32| {
        client
            .post(format!("{base}/api/track"))
            .header("x-api-key", &key)
            .json(&json!([{"event_name": "e", "user_id": "u", "properties": {"n": n}}]))
            .send()
    };
    assert_eq!(track(0).await.unwrap().status(), 200);

    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(body["why"].to_string().contains("stopping"), "{body}");
    // Still served while the balancer takes it out of rotation.
    assert_eq!(track(1).await.unwrap().status(), 200);

    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit {status}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it served on for the delay"
    );
    let rows = stored(data, "SELECT count(*) FROM events");
    assert_eq!(rows[0][0], json!(2), "both acknowledged events are stored");
}
