//! ClickHouse insert rate: Tally's `ClickHouseStore::insert` (JSONEachRow over HTTP, gzip,
//! plus the people/accounts/links tables) against `clickhouse-client` inserting the very
//! same event rows over the native protocol, in the same run, alternating, `--runs` times.
//! Prints medians as a Markdown table. Run by bench/clickhouse.sh, which starts the server.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map};
use tally_model::{Event, EventBatch, EventType, StoredBatch};
use tally_store::clickhouse::{schema_sql, ClickHouseConfig, ClickHouseStore};
use tally_store::{Sql, Store};
use uuid::Uuid;

#[derive(Parser, Debug)]
struct Args {
    /// ClickHouse's HTTP interface.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    url: String,
    /// ClickHouse's native port, for clickhouse-client.
    #[arg(long, default_value_t = 9000)]
    native_port: u16,
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per `Store::insert` call (one writer batch).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the rows for clickhouse-client are written.
    #[arg(long, default_value = "/tmp/tally-ch-bench.jsonl")]
    rows_file: PathBuf,
}

fn events(n: usize, seed: u64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let names = [
        "page_visit",
        "feature_used",
        "signup",
        "purchase",
        "invite_sent",
    ];
    let start = 1_790_000_000_000_000i64;
    (0..n)
        .map(|i| {
            let user = rng.random_range(0..100_000);
            let signed_in = rng.random_bool(0.7);
            let name = names[rng.random_range(0..names.len())];
            let mut properties = Map::new();
            properties.insert(
                "page_path".into(),
                json!(format!("/p/{}", rng.random_range(0..500))),
            );
            properties.insert("plan".into(), json!(["free", "pro", "team"][user % 3]));
            properties.insert("value".into(), json!(rng.random_range(0..1000)));
            let mut context = Map::new();
            context.insert(
                "user_agent".into(),
                json!("Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"),
            );
            context.insert(
                "library".into(),
                json!({"name": "thrivestack-js", "version": "1.4.2"}),
            );
            let t = start + i as i64 * 1_000;
            Event {
                uuid: Uuid::from_u128(rng.random()),
                kind: if name == "page_visit" {
                    EventType::Page
                } else {
                    EventType::Track
                },
                event: name.into(),
                user_id: signed_in.then(|| format!("user-{user}")),
                device_id: Some(format!("dev-{user}")),
                session_id: Some(format!("s-{}", i / 20)),
                group_id: None,
                previous_id: None,
                timestamp: t,
                received_at: t,
                properties,
                traits: Map::new(),
                context,
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let all = events(args.events, 7);
    let batches: Vec<EventBatch> = all
        .chunks(args.batch)
        .map(|c| EventBatch {
            project_id: "bench".into(),
            events: c.to_vec(),
        })
        .collect();
    let http = reqwest::blocking::Client::new();
    let run_sql = |q: &str| tally_bench::clickhouse_sql(&http, &args.url, q);

    let (mut store_rates, mut client_rates) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        run_sql("DROP DATABASE IF EXISTS bench_store")?;
        run_sql("DROP DATABASE IF EXISTS bench_client")?;
        let store = ClickHouseStore::open(ClickHouseConfig {
            url: args.url.clone(),
            database: "bench_store".into(),
            ..ClickHouseConfig::default()
        })?;
        // Read back as the writer reads queue records, outside the timing.
        let records: Vec<Vec<u8>> = batches.iter().map(EventBatch::encode).collect();
        let stored = records
            .iter()
            .map(|r| StoredBatch::decode(r))
            .collect::<Result<Vec<_>, _>>()?;
        let t = Instant::now();
        for (i, b) in stored.iter().enumerate() {
            store.insert(std::slice::from_ref(b), i as u64 + 1)?;
        }
        let store_secs = t.elapsed().as_secs_f64();
        let stored = store.query(&Sql {
            text: "SELECT count() FROM bench_store.events".into(),
            params: vec![],
        })?;
        assert_eq!(stored[0][0], json!(args.events), "every event stored");

        // The same rows, exactly as the store wrote them, for clickhouse-client.
        if run == 0 {
            let rows = run_sql("SELECT * FROM bench_store.events FORMAT JSONEachRow")?;
            std::fs::write(&args.rows_file, rows)?;
        }
        run_sql("CREATE DATABASE bench_client")?;
        for statement in schema_sql(store.version(), "bench_client", None) {
            run_sql(&statement)?;
        }
        let file = std::fs::File::open(&args.rows_file)?;
        let t = Instant::now();
        let status = Command::new("clickhouse-client")
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &args.native_port.to_string(),
            ])
            .args([
                "--query",
                "INSERT INTO bench_client.events FORMAT JSONEachRow",
            ])
            .stdin(Stdio::from(file))
            .status()?;
        let client_secs = t.elapsed().as_secs_f64();
        if !status.success() {
            return Err("clickhouse-client failed".into());
        }
        let copied: usize = run_sql("SELECT count() FROM bench_client.events")?
            .trim()
            .parse()?;
        assert_eq!(copied, args.events, "clickhouse-client inserted every row");

        let (s, c) = (
            args.events as f64 / store_secs,
            args.events as f64 / client_secs,
        );
        eprintln!(
            "run {}: store {s:.0} events/s, clickhouse-client {c:.0} rows/s",
            run + 1
        );
        store_rates.push(s);
        client_rates.push(c);
    }
    let _ = std::fs::remove_file(&args.rows_file);
    let (s, c) = (median(store_rates), median(client_rates));
    let version = run_sql("SELECT version()")?;
    println!(
        "ClickHouse {}, {} events, {} per Store::insert, median of {} runs:\n",
        version.trim(),
        args.events,
        args.batch,
        args.runs
    );
    println!("| path | events/s | ratio |\n|---|---:|---:|");
    println!("| clickhouse-client, JSONEachRow, native protocol (baseline) | {c:.0} | 1.00 |");
    println!(
        "| Tally `ClickHouseStore::insert` (HTTP, gzip, + links/offsets) | {s:.0} | {:.2} |",
        s / c
    );
    Ok(())
}
