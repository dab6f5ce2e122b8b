//! Slow and silent clients against the built binary, started with a soft open-file limit
//! of 1,024 (a common service default): 1,000 of them at once must not stop a normal
//! client from being served, and each is cut off within the documented bound
//! (`http.header_read_timeout_ms`, `http.body_read_timeout_ms`).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tally_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{create_project, BIN};

const HEADER_TIMEOUT_MS: u64 = 1_000;
const BODY_TIMEOUT_MS: u64 = 1_000;

/// Reads until the server closes the connection; what it sent before closing.
async fn until_closed(mut stream: TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_clients_are_cut_off_and_a_normal_one_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let write_key = create_project(dir.path(), "p").write_key;

    let port = free_port();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 1024 && exec {BIN} --data-dir {data} serve --listen 127.0.0.1:{port}"
        ))
        .env(
            "TALLY_HTTP_HEADER_READ_TIMEOUT_MS",
            HEADER_TIMEOUT_MS.to_string(),
        )
        .env(
            "TALLY_HTTP_BODY_READ_TIMEOUT_MS",
            BODY_TIMEOUT_MS.to_string(),
        )
        .env("TALLY_HTTP_SHUTDOWN_GRACE_MS", "3000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://{addr}");
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tally did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 500 half request lines, 300 bodies that stop short, 200 silent connections.
    let mut slow = Vec::new();
    for i in 0..1_000 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        match i % 10 {
            0..=4 => stream
                .write_all(b"POST /api/track HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap(),
            5..=7 => {
                let head = format!(
                    "POST /api/track HTTP/1.1\r\nHost: x\r\nx-api-key: {write_key}\r\n\
                     content-type: application/json\r\ncontent-length: 100\r\n\r\n[{{\"ev"
                );
                stream.write_all(head.as_bytes()).await.unwrap()
            }
            _ => {}
        }
        slow.push((i % 10, Instant::now(), stream));
    }

    // A normal client is served meanwhile, every time.
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let sent = Instant::now();
        let r = client
            .post(format!("{base}/api/track"))
            .header("x-api-key", &write_key)
            .json(&json!([{"event_name": "normal", "user_id": format!("u{i}")}]))
            .send()
            .await
            .expect("a normal client is served beside 1,000 slow ones");
        assert_eq!(r.status(), 200);
        worst = worst.max(sent.elapsed());
    }

    // Every slow connection is closed within its timeout plus slack; the short bodies
    // are answered 408 first.
    let bound = Duration::from_millis(HEADER_TIMEOUT_MS.max(BODY_TIMEOUT_MS) + 3_000);
    let waits = slow.into_iter().map(|(kind, opened, stream)| async move {
        let got = until_closed(stream, bound + Duration::from_secs(2)).await;
        (kind, opened.elapsed(), got)
    });
    let results = futures_join_all(waits).await;
    let mut latest = Duration::ZERO;
    for (kind, open_for, got) in &results {
        let got = got
            .as_ref()
            .unwrap_or_else(|| panic!("a kind-{kind} client was never cut off"));
        latest = latest.max(*open_for);
        if (5..=7).contains(kind) {
            let text = String::from_utf8_lossy(got);
            assert!(
                text.starts_with("HTTP/1.1 408"),
                "short body answered: {text:?}"
            );
        }
    }
    assert!(
        latest <= bound,
        "slowest cut-off after {latest:?}, bound {bound:?}"
    );
    println!("normal client worst latency {worst:?}; all 1,000 slow clients cut off by {latest:?}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exited = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        exited.elapsed() < Duration::from_secs(5),
        "SIGTERM waited {:?}",
        exited.elapsed()
    );
}

async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
