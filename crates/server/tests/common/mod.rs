//! A real Tally server on 127.0.0.1:0 with its own data folder, and a client for it.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_server::meta::Projects;
use tally_server::Config;
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::{Rows, Sql, Store};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    pub write_key: String,
    pub read_key: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    dir: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_owned();
        let mut projects = Projects::default();
        let made = projects.create_project("test").unwrap();
        projects.save(&data_dir).unwrap();
        let mut server = Self::launch(data_dir, tweak).await;
        server.dir = Some(dir);
        server.write_key = made.write_key;
        server.read_key = made.read_key;
        server
    }

    /// Starts a server on an existing data folder (keys must be set by the caller).
    pub async fn launch(data_dir: PathBuf, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            data_dir: data_dir.clone(),
            ..Default::default()
        };
        config.writer.batch_max_wait_ms = 20;
        config.store.memory_limit = "512MB".into();
        // Tests read what they just sent: no answer served after newer data (the cache's
        // own tests set what they test).
        config.cache.max_staleness_ms = 0;
        // Nor computed behind their backs (the warmer's own test turns it on).
        config.cache.warm_keys = 0;
        tweak(&mut config);
        config.validate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(tally_server::serve(config, listener, async move {
            let _ = rx.await;
        }));
        let server = Self {
            base: format!("http://{addr}"),
            addr,
            write_key: String::new(),
            read_key: String::new(),
            client: reqwest::Client::new(),
            data_dir,
            dir: None,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self
                .client
                .get(format!("{}/healthz", self.base))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server did not become healthy");
    }

    pub async fn send(
        &self,
        path: &str,
        key: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text:?}"));
        Response {
            status,
            headers,
            body,
        }
    }

    pub async fn track(&self, events: Value) -> Response {
        self.send(
            "/api/track",
            Some(&self.write_key.clone()),
            events.to_string(),
        )
        .await
    }

    pub async fn query(&self, q: Value) -> Response {
        self.send("/api/v1/query", Some(&self.read_key.clone()), q.to_string())
            .await
    }

    /// Total `events` metric over all time.
    pub async fn count_events(&self) -> i64 {
        let r = self
            .query(json!({"metrics": ["events"], "date_range": "all"}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["results"][0]["metrics"][0].as_i64().unwrap()
    }

    /// Waits until the store holds `n` events (the writer is asynchronous).
    pub async fn wait_for_events(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = -1;
        while Instant::now() < deadline {
            last = self.count_events().await;
            if last >= n {
                assert_eq!(last, n, "more events than sent");
                self.wait_for_wal_committed(deadline).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("store has {last} events, expected {n}");
    }

    /// Waits until the WAL has no pending record: the writer marks a batch done in the
    /// WAL after it has told the cache what the batch touched, so from then on no
    /// answer computed can be stamped with a data version older than the events it saw.
    async fn wait_for_wal_committed(&self, deadline: Instant) {
        while Instant::now() < deadline {
            let text = self.metrics().await;
            let pending = text
                .lines()
                .find_map(|l| l.strip_prefix("tally_wal_pending_records "))
                .map(|v| v.trim().parse::<f64>().unwrap());
            if pending.is_none_or(|p| p == 0.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the WAL still has pending records");
    }

    /// Polls the `events` query until it holds `n` rows, then asserts exactly `n`.
    pub async fn event_rows(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .query(
                    json!({"kind": "events", "date_range": "all", "pagination": {"limit": 1000}}),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let rows = r.body["results"].as_array().unwrap().clone();
            if rows.len() >= n || Instant::now() > deadline {
                assert_eq!(rows.len(), n, "{rows:#?}");
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Graceful stop (as on SIGTERM); returns the data folder, kept alive by `self.dir`.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn take_dir(&mut self) -> Option<TempDir> {
        self.dir.take()
    }
}

/// The event names of `rows`, sorted.
pub fn event_names(rows: &[Value]) -> Vec<&str> {
    let mut v: Vec<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    v.sort_unstable();
    v
}

/// Runs SQL against a stopped server's store.
pub fn store_rows(data_dir: &Path, sql: &str) -> Rows {
    let store = DuckStore::open(&data_dir.join("tally.duckdb"), DuckConfig::default()).unwrap();
    store
        .query(&Sql {
            text: sql.into(),
            params: vec![],
        })
        .unwrap()
}

/// A recorded SDK body from crates/ingest/tests/fixtures, with its project token replaced
/// by `write_key`.
pub fn fixture(name: &str, write_key: &str) -> String {
    let path = format!(
        "{}/../ingest/tests/fixtures/{name}",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    text.replace("phc_TestProjectToken0000000000000000000000000", write_key)
}

/// `bytes` gzip-compressed, as the SDKs send them.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}
