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
    // A typo of a real setting stops start-up and names the setting meant...
    let out = Command::new(BIN)
        .args(["config"])
        .env("TALLY_QUEUE_FSYNK", "never")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean TALLY_QUEUE_FSYNC"), "{err}");
    // ...any other unknown name is a warning.
    let out = Command::new(BIN)
        .args(["config"])
        .env("TALLY_NO_SUCH_THING", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: ignoring TALLY_NO_SUCH_THING"),
        "{err}"
    );
}

/// What Kubernetes injects into every pod for Services named `tally`, `tally-ingest` and
/// `tally-query` (unless the pod sets `enableServiceLinks: false`): the server must start
/// and answer, not exit on "not a tally setting".
#[test]
fn serve_starts_in_a_pod_like_environment() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(BIN);
    cmd.args(["--data-dir", dir.path().to_str().unwrap(), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("TALLY_CONFIG")
        .env("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        .env("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (service, ip, svc_port) in [
        ("TALLY", "10.96.0.10", 8080),
        ("TALLY_INGEST", "10.96.0.11", 8080),
        ("TALLY_QUERY", "10.96.0.12", 8080),
    ] {
        let url = format!("tcp://{ip}:{svc_port}");
        let p = format!("{service}_PORT_{svc_port}_TCP");
        cmd.env(format!("{service}_SERVICE_HOST"), ip)
            .env(format!("{service}_SERVICE_PORT"), svc_port.to_string())
            .env(format!("{service}_SERVICE_PORT_HTTP"), svc_port.to_string())
            .env(format!("{service}_PORT"), &url)
            .env(&p, &url)
            .env(format!("{p}_PROTO"), "tcp")
            .env(format!("{p}_PORT"), svc_port.to_string())
            .env(format!("{p}_ADDR"), ip);
    }
    let mut child = cmd.spawn().unwrap();
    let client = reqwest::blocking::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut ready = false;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("tally exited with {status}: {err}");
        }
        let r = client.get(format!("http://127.0.0.1:{port}/readyz")).send();
        if r.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "tally did not become ready on port {port}");
}
