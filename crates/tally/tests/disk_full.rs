//! A full data volume (a 96 MiB tmpfs, mounted by the test: it runs as root in CI).
//! Below the free-space reserve ingest answers 503 `disk_full` and `/readyz` says why;
//! freeing space brings both back by themselves. With the volume filled to the last byte
//! under the writer, SIGTERM still exits within its grace period, and a restart with
//! space stores every acknowledged event exactly once.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_testkit::free_port;

use common::{create_project, sigterm, stored, wait_ready, BIN};

const RESERVE: u64 = 16 << 20;

fn start(data: &Path, port: u16, linger_ms: &str) -> Child {
    Command::new(BIN)
        .args(["--data-dir", data.to_str().unwrap(), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("TALLY_QUEUE_MIN_FREE_BYTES", RESERVE.to_string())
        .env("TALLY_QUEUE_SEGMENT_BYTES", (4 << 20).to_string())
        .env("TALLY_STORE_MEMORY_LIMIT", "256MB")
        .env("TALLY_WRITER_BATCH_MAX_WAIT_MS", linger_ms)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Bytes free on `dir`'s volume, as `df` says.
fn avail(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Takes all but `leave` bytes of the volume with a file at `path`.
fn fill(path: &Path, leave: u64) {
    let dir = path.parent().unwrap();
    let size = avail(dir).saturating_sub(leave);
    let ok = Command::new("fallocate")
        .args(["-l", &size.to_string()])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "fallocate {size} bytes");
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    async fn track(&self, n: u64) -> reqwest::Response {
        self.http
            .post(format!("{}/api/track", self.base))
            .header("x-api-key", &self.key)
            .json(&json!([{"event_name": "e", "user_id": "u", "properties": {"n": n}}]))
            .send()
            .await
            .unwrap()
    }

    async fn ready(&self) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn wait_ready(&self) {
        wait_ready(&self.http, &self.base).await;
    }
}

#[tokio::test]
async fn a_full_disk_refuses_ingest_recovers_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "this test mounts a tmpfs and needs root");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let data = dir.path().join("data");
    let filler = dir.path().join("filler");
    let key = create_project(&data, "p").write_key;
    let port = free_port();
    let mut child = start(&data, port, "5");
    let c = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("http://127.0.0.1:{port}"),
        key,
    };
    c.wait_ready().await;
    let mut acked = 0u64;
    for n in 0..100 {
        assert_eq!(c.track(n).await.status(), 200);
        acked += 1;
    }

    // Below the reserve: refused with Retry-After, and /readyz says why.
    fill(&filler, RESERVE / 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refused = c.track(1_000).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "disk_full", "{body}");
    let (status, ready) = c.ready().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["disk"]["ok"], json!(false), "{ready}");
    assert!(
        ready["why"].to_string().contains("min_free_bytes"),
        "{ready}"
    );

    // Space comes back: so do ingest and readiness.
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    for n in 100..200 {
        assert_eq!(c.track(n).await.status(), 200);
        acked += 1;
    }
    c.wait_ready().await;
    sigterm(&child);
    assert!(child.wait().unwrap().success());

    // The volume filled to the last byte under the writer (which lingers 2 s for a
    // batch): acknowledged events wait in the WAL, inserts fail, /readyz says so, and
    // SIGTERM still exits within the grace period.
    let port = free_port();
    let mut child = start(&data, port, "2000");
    let c = Client {
        base: format!("http://127.0.0.1:{port}"),
        ..c
    };
    c.wait_ready().await;
    for n in 200..300 {
        assert_eq!(c.track(n).await.status(), 200);
        acked += 1;
    }
    fill(&filler, 0);
    let started = Instant::now();
    loop {
        let (status, ready) = c.ready().await;
        if ready["writer"]["failing"] == json!(true) {
            assert_eq!(status, 503);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the writer's failing inserts never showed: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Space returns: the writer catches up by itself, and ingest goes on.
    std::fs::remove_file(&filler).unwrap();
    c.wait_ready().await;
    for n in 300..350 {
        assert_eq!(c.track(n).await.status(), 200);
        acked += 1;
    }
    // Full again, under the writer's linger: SIGTERM while inserts fail.
    fill(&filler, 0);
    let started = Instant::now();
    while c.ready().await.1["writer"]["failing"] != json!(true) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "inserts did not fail"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopping = Instant::now();
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "SIGTERM took {:?} ({status})",
        stopping.elapsed()
    );

    // With space again, a restart stores every acknowledged event exactly once.
    std::fs::remove_file(&filler).unwrap();
    let port = free_port();
    let mut child = start(&data, port, "5");
    let c = Client {
        base: format!("http://127.0.0.1:{port}"),
        ..c
    };
    c.wait_ready().await;
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let rows = stored(
        &data,
        "SELECT count(*), count(DISTINCT properties->>'n') FROM events",
    );
    assert_eq!(rows[0], vec![json!(acked), json!(acked)]);
}
