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
