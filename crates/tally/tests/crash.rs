//! The built binary, killed with SIGKILL in the middle of concurrent ingest, must keep
//! every event it acknowledged, exactly once, after a restart.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::{Sql, Store};
use tally_testkit::free_port;

use common::{create_project, BIN};

fn start(data: &Path, port: u16) -> Child {
    Command::new(BIN)
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("TALLY_WRITER_BATCH_MAX_WAIT_MS", "5")
        .env("TALLY_STORE_MEMORY_LIMIT", "512MB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_healthy(client: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("tally did not start on port {port}");
}

/// Sends events from `clients` concurrent senders until stopped; returns the ids of
/// events that got a 200 and of those whose fate is unknown (no answer).
async fn blast(
    port: u16,
    key: &str,
    round: usize,
    clients: usize,
    run_for: Duration,
) -> (HashSet<String>, HashSet<String>) {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let unknown = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (acked, unknown, client, key) = (
            acked.clone(),
            unknown.clone(),
            client.clone(),
            key.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                // Mix single events and small batches.
                let size = if n % 3 == 0 { 5 } else { 1 };
                let ids: Vec<String> = (0..size).map(|i| format!("r{round}-c{c}-{n}-{i}")).collect();
                n += 1;
                let body: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"event_name": "crash_test", "user_id": format!("c{c}"), "properties": {"id": id}}))
                    .collect();
                let sent = client
                    .post(format!("http://127.0.0.1:{port}/api/track"))
                    .header("x-api-key", &key)
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => acked.lock().extend(ids),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => {
                        unknown.lock().extend(ids);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let a = acked.lock().clone();
    let u = unknown.lock().clone();
    (a, u)
}

fn stored_ids(data: &Path) -> HashMap<String, i64> {
    let store = DuckStore::open(&data.join("tally.duckdb"), DuckConfig::default()).unwrap();
    let rows = store
        .query(&Sql {
            text: "SELECT properties->>'id', count(*) FROM events GROUP BY 1".into(),
            params: vec![],
        })
        .unwrap();
    rows.into_iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing_acked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let key = create_project(data, "crash").write_key;
    let client = reqwest::Client::new();
    let mut all_acked = HashSet::new();
    let mut all_unknown = HashSet::new();

    // Two crash rounds: kill while clients are sending and the writer is inserting.
    for round in 0..2 {
        let port = free_port();
        let mut child = start(data, port);
        wait_healthy(&client, port).await;
        let sender = tokio::spawn({
            let key = key.clone();
            async move { blast(port, &key, round, 8, Duration::from_millis(1500)).await }
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (acked, unknown) = sender.await.unwrap();
        assert!(
            acked.len() > 50,
            "round {round}: too few events acknowledged ({})",
            acked.len()
        );
        all_acked.extend(acked);
        all_unknown.extend(unknown);
    }

    // Restart, let recovery replay the WAL, then stop cleanly (SIGTERM drains it).
    let port = free_port();
    let mut child = start(data, port);
    wait_healthy(&client, port).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "tally exited with {status} on SIGTERM");

    let stored = stored_ids(data);
    let missing: Vec<_> = all_acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "events stored more than once: {:?}",
        &doubled[..doubled.len().min(5)]
    );
    let foreign: Vec<_> = stored
        .keys()
        .filter(|id| !all_acked.contains(*id) && !all_unknown.contains(*id))
        .collect();
    assert!(
        foreign.is_empty(),
        "stored events that were never sent: {foreign:?}"
    );
    eprintln!(
        "acked {} events, {} unanswered at the kills, {} stored",
        all_acked.len(),
        all_unknown.len(),
        stored.len()
    );
}
