//! The command line: help, projects and keys, config errors.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tally");

fn tally(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TALLY_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_subcommand() {
    let out = tally(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "serve",
        "project",
        "keys",
        "config",
        "--data-dir",
        "--config",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    let out = tally(&["serve", "--help"]);
    assert!(String::from_utf8(out.stdout).unwrap().contains("--listen"));
}

#[test]
fn projects_and_keys_are_created_and_listed_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = tally(&[
        "--data-dir",
        d,
        "project",
        "create",
        "My Shop",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["project"], "my-shop");
    let read_key = made["read_key"].as_str().unwrap().to_owned();

    let out = tally(&[
        "--data-dir",
        d,
        "keys",
        "create",
        "my-shop",
        "--kind",
        "write",
    ]);
    assert!(out.status.success());
    let second_write = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let out = tally(&["--data-dir", d, "keys", "list", "--format", "json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &listed["projects"][0];
    assert_eq!(p["id"], "my-shop");
    assert_eq!(p["write_keys"].as_array().unwrap().len(), 2);
    assert_eq!(p["write_keys"][1], second_write.as_str());
    assert_eq!(p["read_keys"][0]["prefix"], &read_key[..8]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&read_key),
        "read keys are secret"
    );

    let out = tally(&["--data-dir", d, "project", "create", "my shop"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn a_bad_setting_stops_with_a_message_naming_it() {
    let out = Command::new(BIN)
        .args(["config"])
        .env("TALLY_QUEUE_FSYNC", "sometimes")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sometimes") && err.contains("fsync"), "{err}");
    let out = Command::new(BIN)
        .args(["config"])
        .env("TALLY_NO_SUCH_THING", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TALLY_NO_SUCH_THING"));
}
