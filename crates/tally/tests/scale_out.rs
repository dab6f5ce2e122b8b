//! Scale-out mode end to end: the built binary as 2 ingest processes, 2 writers and 1
//! query process on a real Redis and a real ClickHouse (Debian's packages, started here on
//! loopback). A known set of events goes in through both ingest processes; ClickHouse
//! must then hold exactly that set, also after a writer is killed with SIGKILL in the
//! middle of the stream.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_testkit::{free_port, ClickHouse, Redis};

use common::{create_project, BIN};

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Tally {
    data: String,
    redis: String,
    clickhouse: String,
}

impl Tally {
    fn start(&self, role: &str, port: u16, consumer: &str) -> Proc {
        Proc(
            Command::new(BIN)
                .args(["--data-dir", &self.data, "serve", "--role", role])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("TALLY_QUEUE_BACKEND", "redis")
                .env("TALLY_STORE_BACKEND", "clickhouse")
                .env("TALLY_REDIS_URL", &self.redis)
                .env("TALLY_REDIS_CONSUMER", consumer)
                .env("TALLY_REDIS_CLAIM_IDLE_MS", "1000")
                .env("TALLY_CLICKHOUSE_URL", &self.clickhouse)
                .env("TALLY_CLICKHOUSE_DATABASE", "e2e")
                .env("TALLY_CLICKHOUSE_RETRIES", "1")
                .env("TALLY_CLICKHOUSE_BACKOFF_MS", "100")
                .env("TALLY_WRITER_BATCH_MAX_RECORDS", "50")
                // The tests count store queries: none behind their backs.
                .env("TALLY_CACHE_WARM_KEYS", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

async fn wait_for(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never answered");
}

async fn clickhouse_query(client: &reqwest::Client, url: &str, sql: &str) -> String {
    let r = client.post(url).body(sql.to_owned()).send().await.unwrap();
    let ok = r.status().is_success();
    let text = r.text().await.unwrap();
    assert!(ok, "{sql}: {text}");
    text
}

/// Sends events `from..to`, one request of 5 events each, alternating the ingest ports,
/// 8 requests at a time; panics on any answer but 200.
async fn send(client: &reqwest::Client, ports: &[u16], key: &str, from: usize, to: usize) {
    let mut pending = Vec::new();
    for (n, start) in (from..to).step_by(5).enumerate() {
        let port = ports[n % ports.len()];
        let body: Vec<Value> = (start..(start + 5).min(to))
            .map(|i| json!({"event_name": format!("e-{i}"), "user_id": format!("u{}", i % 37)}))
            .collect();
        let request = client
            .post(format!("http://127.0.0.1:{port}/api/track"))
            .header("x-api-key", key)
            .json(&body)
            .send();
        pending.push(tokio::spawn(async move {
            let r = request.await.unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }));
        if pending.len() == 8 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// Waits until ClickHouse holds `n` distinct events and returns their names.
async fn stored(client: &reqwest::Client, url: &str, n: usize) -> (usize, BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count: usize = clickhouse_query(client, url, "SELECT count() FROM e2e.events FINAL")
            .await
            .trim()
            .parse()
            .unwrap();
        if count >= n || Instant::now() > deadline {
            let names = clickhouse_query(client, url, "SELECT event FROM e2e.events FINAL")
                .await
                .lines()
                .map(str::to_owned)
                .collect();
            return (count, names);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Entries delivered to the writers and not yet acknowledged (`XPENDING` summary).
fn pending(redis_port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &redis_port.to_string(),
            "XPENDING",
            "tally:events",
            "tally-writers",
        ])
        .output()
        .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

fn names(from: usize, to: usize) -> BTreeSet<String> {
    (from..to).map(|i| format!("e-{i}")).collect()
}

/// Redis, ClickHouse and a project, on loopback in a temporary folder.
struct Cluster {
    _dir: tempfile::TempDir,
    client: reqwest::Client,
    redis: Redis,
    redis_port: u16,
    clickhouse: ClickHouse,
    ch_url: String,
    tally: Tally,
    write_key: String,
    read_key: String,
}

impl Cluster {
    /// One ThriveStack `track` request to the ingest process on `port`.
    async fn track(&self, port: u16, body: Value) -> reqwest::Response {
        self.client
            .post(format!("http://127.0.0.1:{port}/api/track"))
            .header("x-api-key", &self.write_key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// One ingest and one writer process, up; their ports.
    async fn ingest_and_writer(&self) -> (Vec<u16>, Proc, Proc) {
        let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let ingest = self.tally.start("ingest", ports[0], "i1");
        let writer = self.tally.start("writer", ports[1], "w1");
        for port in &ports {
            wait_for(&self.client, &format!("http://127.0.0.1:{port}/healthz")).await;
        }
        (ports, ingest, writer)
    }

    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (redis, clickhouse) =
            tokio::task::spawn_blocking(|| (Redis::start(), ClickHouse::start()))
                .await
                .unwrap();
        let data = dir.path().join("data");
        let keys = create_project(&data, "e2e");
        Cluster {
            client: reqwest::Client::new(),
            redis_port: redis.port,
            ch_url: clickhouse.url(),
            tally: Tally {
                data: data.to_str().unwrap().to_owned(),
                redis: redis.url(),
                clickhouse: clickhouse.url(),
            },
            write_key: keys.write_key,
            read_key: keys.read_key,
            redis,
            clickhouse,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_ingest_two_writers_one_query_store_exactly_what_was_sent() {
    let c = Cluster::start().await;
    let (client, tally, ch_url, redis_port) =
        (&c.client, &c.tally, c.ch_url.as_str(), c.redis_port);
    let (write_key, read_key) = (c.write_key.as_str(), c.read_key.as_str());
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let _ingest = [
        tally.start("ingest", ports[0], "i1"),
        tally.start("ingest", ports[1], "i2"),
    ];
    let writer2 = tally.start("writer", ports[3], "w2");
    let mut writer1 = Some(tally.start("writer", ports[2], "w1"));
    let _query = tally.start("query", ports[4], "q");
    for port in &ports {
        wait_for(client, &format!("http://127.0.0.1:{port}/healthz")).await;
    }

    // 1,000 events through both ingest processes.
    send(client, &ports[..2], write_key, 0, 1_000).await;
    let (count, got) = stored(client, ch_url, 1_000).await;
    assert_eq!(count, 1_000);
    assert_eq!(got, names(0, 1_000), "exactly the events sent");

    // Each process refuses what its role does not do, with a 503 that says so.
    let r = client
        .post(format!("http://127.0.0.1:{}/api/v1/query", ports[0]))
        .header("x-api-key", read_key)
        .body(r#"{"metrics":["events"],"date_range":"all"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "wrong_role");
    let r = client
        .post(format!("http://127.0.0.1:{}/api/track", ports[4]))
        .header("x-api-key", write_key)
        .json(&json!([{"event_name": "x", "user_id": "u"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // The query process reports exactly that set from ClickHouse.
    let query = |body: Value| {
        client
            .post(format!("http://127.0.0.1:{}/api/v1/query", ports[4]))
            .header("x-api-key", read_key)
            .json(&body)
            .send()
    };
    let r = query(json!({"metrics": ["events", "visitors"], "date_range": "all"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["results"][0]["metrics"], json!([1_000, 37]));
    let r = query(
        json!({"metrics": ["events"], "date_range": "all", "dimensions": ["event:name"],
                         "pagination": {"limit": 10_000}}),
    )
    .await
    .unwrap();
    let body: Value = r.json().await.unwrap();
    let reported: BTreeSet<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            assert_eq!(row["metrics"][0], 1, "each event once");
            row["dimensions"][0].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(reported, names(0, 1_000));
    // Trends and the accounts view too.
    let r = query(
        json!({"kind": "trends", "date_range": "all", "interval": "day",
                         "series": [{"event": "e-1", "math": "total"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["results"][0]["total"], 1);
    let r = query(json!({"kind": "accounts", "date_range": "all"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["results"].is_array(), "{body}");

    // A writer killed with SIGKILL in the middle of a batch: writer 2 is paused, events
    // stream in, writer 1 is frozen (SIGSTOP) once it holds entries it has read but not
    // acknowledged, then killed. Writer 2 resumes and takes them over after
    // claim_idle_ms (1 s): nothing is lost, nothing doubled.
    let signal = |sig: &str, p: &Proc| {
        let ok = Command::new("kill")
            .args([sig, &p.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    signal("-STOP", &writer2);
    let sending = {
        let client = client.clone();
        let ingest = ports[..2].to_vec();
        let key = write_key.to_owned();
        tokio::spawn(async move { send(&client, &ingest, &key, 1_000, 3_000).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = loop {
        let w1 = writer1.as_ref().unwrap();
        if pending(redis_port) > 0 {
            signal("-STOP", w1);
            // Frozen: what is pending now stays pending until someone else claims it.
            let held = pending(redis_port);
            if held > 0 {
                break held;
            }
            signal("-CONT", w1);
        }
        assert!(Instant::now() < deadline, "writer 1 never held an entry");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(writer1.take()); // SIGKILL, with `held` entries read and not acknowledged
    signal("-CONT", &writer2);
    sending.await.unwrap();
    // Writer 2 takes the held entries over once they are 1 s idle, stores them (again,
    // if writer 1 had stored them before it died) and acknowledges them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(redis_port) > 0 {
        assert!(
            Instant::now() < deadline,
            "the dead writer's entries were never taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (count, got) = stored(client, ch_url, 3_000).await;
    assert_eq!(count, 3_000, "writer 1 died holding {held} entries");
    assert_eq!(got, names(0, 3_000), "no event lost, none doubled");
    let metrics = metrics_text(client, ports[3]).await;
    assert!(
        metrics.contains("tally_writer_events_total"),
        "the surviving writer wrote"
    );
}

/// A process's `/metrics` page.
async fn metrics_text(client: &reqwest::Client, port: u16) -> String {
    client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Reads a counter or gauge from a process's `/metrics` (sum over its labels).
async fn metric(client: &reqwest::Client, port: u16, name: &str) -> f64 {
    metrics_text(client, port)
        .await
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn stream_len(redis_port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "XLEN", "tally:events"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// ClickHouse stopped for a minute under load (`TALLY_OUTAGE_SECS`, default 60): ingest
/// keeps answering 200 to a steady stream of requests all along, the stream grows, the
/// writer fails and retries with backoff, and once ClickHouse is back every event is
/// stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_away_for_a_minute_under_load_loses_nothing() {
    let outage = Duration::from_secs(
        std::env::var("TALLY_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let mut c = Cluster::start().await;
    let (ports, _ingest, _writer) = c.ingest_and_writer().await;
    send(&c.client, &ports[..1], &c.write_key, 0, 500).await;
    assert_eq!(stored(&c.client, &c.ch_url, 500).await.0, 500);

    c.clickhouse.stop(); // SIGKILL; its data stays on disk
                         // Load for the whole outage: 50 events every 100 ms, each request answered 200.
    let started = Instant::now();
    let mut sent = 500;
    let mut lengths = Vec::new();
    while started.elapsed() < outage {
        send(&c.client, &ports[..1], &c.write_key, sent, sent + 50).await;
        sent += 50;
        if sent % 5_000 == 0 {
            lengths.push(stream_len(c.redis_port));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lengths.windows(2).all(|w| w[1] > w[0]) && lengths.len() >= 2,
        "the stream grows while ClickHouse is away: {lengths:?}"
    );
    assert!(
        metric(&c.client, ports[1], "tally_writer_errors_total").await > 0.0,
        "the writer failed, and retries"
    );

    tokio::task::block_in_place(|| c.clickhouse.restart());
    let (count, got) = stored(&c.client, &c.ch_url, sent).await;
    assert_eq!(count, sent, "{} s outage", outage.as_secs());
    assert_eq!(got, names(0, sent), "every event once");
}

/// Redis away: ingest answers 503 (not 200, not a hang) until it is back; what was
/// acknowledged before survives the restart (appendfsync always) and is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_away_is_a_503_and_acknowledged_events_survive_its_restart() {
    let mut c = Cluster::start().await;
    let (ports, _ingest, writer) = c.ingest_and_writer().await;
    // Acknowledged while the writer is paused, so they are only in Redis.
    Command::new("kill")
        .args(["-STOP", &writer.0.id().to_string()])
        .status()
        .unwrap();
    send(&c.client, &ports[..1], &c.write_key, 0, 300).await;
    c.redis.stop(); // SIGKILL
    Command::new("kill")
        .args(["-CONT", &writer.0.id().to_string()])
        .status()
        .unwrap();

    let started = Instant::now();
    let r = c
        .track(ports[0], json!([{"event_name": "lost", "user_id": "u"}]))
        .await;
    assert_eq!(r.status(), 503, "refused, loudly");
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "queue_error");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered, not hung"
    );

    tokio::task::block_in_place(|| c.redis.restart());
    // The first requests after the restart may still find the old connection broken.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .track(ports[0], json!([{"event_name": "e-300", "user_id": "u"}]))
            .await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send(&c.client, &ports[..1], &c.write_key, 301, 400).await;
    let (count, got) = stored(&c.client, &c.ch_url, 400).await;
    assert_eq!(count, 400);
    assert_eq!(
        got,
        names(0, 400),
        "the 300 acknowledged before the restart, and the rest, once"
    );
    drop(writer);
}

/// Sends `n` events named `late-<from>..` at `at` (RFC 3339) through `port`.
async fn send_at(c: &Cluster, port: u16, from: usize, n: usize, at: &str) {
    let body: Vec<Value> = (from..from + n)
        .map(|i| json!({"event_name": format!("late-{i}"), "user_id": format!("u{}", i % 7), "timestamp": at}))
        .collect();
    let r = c.track(port, json!(body)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// One query to the query process on `port`; the answer's body.
async fn ask(c: &Cluster, port: u16, body: &Value) -> Value {
    let r = c
        .client
        .post(format!("http://127.0.0.1:{port}/api/v1/query"))
        .header("x-api-key", &c.read_key)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "query on {port}");
    r.json().await.unwrap()
}

/// Asks `port` until its `events` answer is `want`, for at most `within`; the time it
/// took.
async fn answers_within(
    c: &Cluster,
    port: u16,
    q: &Value,
    want: u64,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = ask(c, port, q).await["results"][0]["metrics"][0].as_u64();
        if got == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{port} still answers {got:?}, not {want}, {within:?} after the data was stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The result cache across query processes: two share answers through Redis (L2) and
/// compute one at a time (a lease); a late event for a closed range, once a writer
/// published its flush, changes both processes' answers within a second; with Redis
/// killed every query is still answered, right, and the errors are counted; after its
/// restart both processes follow the flushes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_processes_share_answers_and_learn_of_every_flush() {
    let mut c = Cluster::start().await;
    let (ports, _ingest, _writer) = c.ingest_and_writer().await;
    let q: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let _queries = [
        c.tally.start("query", q[0], "q1"),
        c.tally.start("query", q[1], "q2"),
    ];
    for port in &q {
        wait_for(&c.client, &format!("http://127.0.0.1:{port}/readyz")).await;
    }
    let day = (chrono::Utc::now() - chrono::Duration::days(2)).date_naive();
    let at = |hour: u32| format!("{day}T{hour:02}:00:00Z");
    send_at(&c, ports[0], 0, 20, &at(10)).await;
    assert_eq!(stored(&c.client, &c.ch_url, 20).await.0, 20);
    // A closed range: no staleness allowance, only flushes make it stale.
    let events = json!({"metrics": ["events"], "date_range": [day.to_string(), day.to_string()]});

    let first = ask(&c, q[0], &events).await;
    assert_eq!(first["results"][0]["metrics"][0], 20);
    assert_eq!(first["cache"]["hit"], false);
    let second = ask(&c, q[1], &events).await;
    assert_eq!(second["results"][0]["metrics"][0], 20);
    assert_eq!(second["cache"]["layer"], "l2", "{second}");
    assert_eq!(
        metric(&c.client, q[1], "tally_store_queries_total").await,
        0.0
    );
    assert_eq!(
        metric(&c.client, q[0], "tally_store_queries_total").await,
        1.0
    );

    // A late event in that day: both processes learn of its flush.
    send_at(&c, ports[0], 20, 1, &at(13)).await;
    assert_eq!(stored(&c.client, &c.ch_url, 21).await.0, 21);
    for port in &q {
        answers_within(&c, *port, &events, 21, Duration::from_secs(1)).await;
    }
    // An event of another day touches nothing this answer reads.
    let before: f64 = {
        let mut n = 0.0;
        for port in &q {
            n += metric(&c.client, *port, "tally_store_queries_total").await;
        }
        n
    };
    send_at(
        &c,
        ports[0],
        21,
        1,
        &format!("{}T10:00:00Z", day - chrono::Duration::days(1)),
    )
    .await;
    assert_eq!(stored(&c.client, &c.ch_url, 22).await.0, 22);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for port in &q {
        let body = ask(&c, *port, &events).await;
        assert_eq!(body["results"][0]["metrics"][0], 21);
        assert_eq!(body["cache"]["hit"], true, "{body}");
    }

    // 200 identical requests on a cold key, half on each process: one store query.
    let visitors =
        json!({"metrics": ["visitors"], "date_range": [day.to_string(), day.to_string()]});
    let mut pending = Vec::new();
    for i in 0..200 {
        let request = c
            .client
            .post(format!("http://127.0.0.1:{}/api/v1/query", q[i % 2]))
            .header("x-api-key", &c.read_key)
            .json(&visitors)
            .send();
        pending.push(tokio::spawn(async move {
            let r = request.await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["results"][0]["metrics"][0].clone()
        }));
    }
    for p in pending {
        assert_eq!(p.await.unwrap(), 7);
    }
    let mut after = 0.0;
    for port in &q {
        after += metric(&c.client, *port, "tally_store_queries_total").await;
    }
    assert_eq!(after - before, 1.0, "one computation for both processes");

    // Redis away: answers still come, from ClickHouse, and are right.
    c.redis.stop();
    // The followers' blocking reads see the connection close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for port in &q {
        for query in [&events, &visitors] {
            let body = ask(&c, *port, query).await;
            assert_eq!(body["cache"]["hit"], false, "not vouched for: {body}");
        }
        assert_eq!(
            ask(&c, *port, &events).await["results"][0]["metrics"][0],
            21
        );
        assert!(metric(&c.client, *port, "tally_cache_errors_total").await > 0.0);
    }
    tokio::task::block_in_place(|| c.redis.restart());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .track(
                ports[0],
                json!([{"event_name": "late-22", "user_id": "u1", "timestamp": at(15)}]),
            )
            .await;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored(&c.client, &c.ch_url, 23).await.0, 23);
    for port in &q {
        answers_within(&c, *port, &events, 22, Duration::from_secs(5)).await;
    }
}
