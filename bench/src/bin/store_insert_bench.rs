//! What one writer batch costs DuckDB, apart from its events: `Store::insert` of small
//! batches (the writer's batches are small at moderate load: one per
//! `writer.batch_max_wait_ms`) into a fresh DuckDB store, timed per call.
//!
//! Each batch has `--events` events: a new user's identify, a group call, an alias, and
//! track events (a new device each), so every kind of upsert runs in every transaction,
//! as with real traffic. Prints the median and p90 milliseconds per `Store::insert` over
//! `--batches` calls, after `--warmup` untimed ones, and the process's CPU time per call
//! (DuckDB's own threads included); then the same for batches of track events only.

use std::time::Instant;

use clap::Parser;
use serde_json::json;
use tally_model::{Event, EventBatch, EventType, StoredBatch};
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::Store;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 300)]
    batches: usize,
    #[arg(long, default_value_t = 30)]
    warmup: usize,
    #[arg(long, default_value_t = 20)]
    events: usize,
}

fn batch(n: usize, events: usize, mixed: bool) -> EventBatch {
    let at = 1_780_000_000_000_000 + n as i64 * 1_000_000;
    let user = format!("user-{n}");
    let mut out = Vec::with_capacity(events);
    if mixed {
        out.push(Event {
            user_id: Some(user.clone()),
            traits: json!({"plan": "pro", "n": n}).as_object().unwrap().clone(),
            timestamp: at,
            received_at: at,
            ..Event::new(EventType::Identify, "$identify")
        });
        out.push(Event {
            user_id: Some(user.clone()),
            group_id: Some(format!("acct-{}", n % 50)),
            traits: json!({"name": "Acme"}).as_object().unwrap().clone(),
            timestamp: at,
            received_at: at,
            ..Event::new(EventType::Group, "$group")
        });
        out.push(Event {
            user_id: Some(user.clone()),
            previous_id: Some(format!("old-{n}")),
            timestamp: at,
            received_at: at,
            ..Event::new(EventType::Alias, "$alias")
        });
    }
    while out.len() < events {
        let i = out.len();
        out.push(Event {
            user_id: Some(user.clone()),
            device_id: Some(format!("device-{n}-{i}")),
            properties: json!({"plan": "pro", "page_path": "/pricing"})
                .as_object()
                .unwrap()
                .clone(),
            timestamp: at + i as i64,
            received_at: at + i as i64,
            ..Event::new(EventType::Track, "clicked")
        });
    }
    EventBatch {
        project_id: "bench".into(),
        events: out,
    }
}

/// This process's user + system CPU time, in milliseconds (from /proc, in clock ticks of
/// 10 ms: read over hundreds of calls).
fn cpu_ms() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 2..]
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks * 10.0)
}

fn run(args: &Args, mixed: bool) -> anyhow::Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir()?;
    let store = DuckStore::open(&dir.path().join("tally.duckdb"), DuckConfig::default())?;
    let mut ms = Vec::with_capacity(args.batches);
    let mut cpu = 0.0;
    for n in 0..args.warmup + args.batches {
        if n == args.warmup {
            cpu = cpu_ms()?;
        }
        let record = batch(n, args.events, mixed).encode();
        let stored = StoredBatch::decode(&record)?;
        let t = Instant::now();
        store.insert(std::slice::from_ref(&stored), n as u64 + 1)?;
        if n >= args.warmup {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let cpu = (cpu_ms()? - cpu) / args.batches as f64;
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[ms.len() * 9 / 10], cpu))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| batches of {} events ({} timed `Store::insert` calls each) | median ms | p90 ms | CPU ms per call |",
        args.events, args.batches
    );
    println!("|---|---:|---:|---:|");
    for (mixed, name) in [
        (true, "identify, group, alias and track"),
        (false, "track only"),
    ] {
        let (median, p90, cpu) = run(&args, mixed)?;
        println!("| {name} | {median:.2} | {p90:.2} | {cpu:.2} |");
    }
    Ok(())
}
