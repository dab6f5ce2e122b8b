//! What the tests that run the built binary share: its path and a project made with it.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tally");

/// A project's keys, as `tally project create --format json` prints them.
pub struct Keys {
    pub write_key: String,
    pub read_key: String,
}

/// Creates project `name` in `data` with `tally project create`.
pub fn create_project(data: &Path, name: &str) -> Keys {
    let out = Command::new(BIN)
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "project",
            "create",
            name,
        ])
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = |name: &str| made[name].as_str().unwrap().to_owned();
    Keys {
        write_key: key("write_key"),
        read_key: key("read_key"),
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits until `{base}/readyz` answers 200, at most 30 s.
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{base} never ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The rows of `sql` on the DuckDB file in `data` (the server stopped).
pub fn stored(data: &Path, sql: &str) -> tally_store::Rows {
    use tally_store::Store;
    let store = tally_store::duckdb::DuckStore::open(
        &data.join("tally.duckdb"),
        tally_store::duckdb::DuckConfig::default(),
    )
    .unwrap();
    store
        .query(&tally_store::Sql {
            text: sql.into(),
            params: vec![],
        })
        .unwrap()
}
