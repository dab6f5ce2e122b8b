//! What the JSON work of one single-event request costs, stage by stage, outside HTTP:
//! decoding the body `bench/ingest.sh` sends, encoding the queue record, and on the
//! writer's side reading the record in place and taking the uuid text and page the store
//! keeps. `bench/ingest_cpu.sh` prints it next to the CPU each thread of a loaded
//! server spends per request, so the two read together.
//!
//! Prints a Markdown table: per stage, the median over `--rounds` rounds of the mean
//! time per operation in a round of `--iterations`.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use tally_ingest::thrivestack::{self, Call};
use tally_ingest::{Limits, RequestMeta};
use tally_model::{EventBatch, StoredBatch};

/// The body `bench/ingest.sh` sends in its single-event runs.
const BODY: &[u8] = br#"[{"event_name":"bench_event","user_id":"u1","context":{"device_id":"d1"},"properties":{"plan":"pro","page_path":"/pricing"}}]"#;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    #[arg(long, default_value_t = 200_000)]
    iterations: u32,
}

fn meta() -> RequestMeta {
    RequestMeta {
        received_at: chrono::Utc::now().timestamp_micros(),
        ip: Some("127.0.0.1".into()),
        user_agent: Some("oha/1.4.5".into()),
    }
}

fn decode() -> EventBatch {
    let decoded = thrivestack::decode(Call::Track, BODY, &meta(), &Limits::default())
        .expect("the bench body decodes");
    assert!(decoded.rejected.is_empty(), "the bench body is valid");
    EventBatch {
        project_id: "bench".into(),
        events: decoded.events,
    }
}

/// Median over `rounds` of the mean nanoseconds per call of `op`.
fn median_ns(args: &Args, mut op: impl FnMut()) -> f64 {
    let mut means: Vec<f64> = (0..args.rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..args.iterations {
                op();
            }
            start.elapsed().as_nanos() as f64 / f64::from(args.iterations)
        })
        .collect();
    means.sort_by(f64::total_cmp);
    means[means.len() / 2]
}

fn main() {
    let args = Args::parse();
    let batch = decode();
    let record = batch.encode();
    let stored = StoredBatch::decode(&record).expect("the record decodes");
    let stages: [(&str, f64); 4] = [
        (
            "ingest: decode the body into events",
            median_ns(&args, || {
                black_box(decode());
            }),
        ),
        (
            "ingest: encode the queue record",
            median_ns(&args, || {
                black_box(black_box(&batch).encode());
            }),
        ),
        (
            "writer: read the queue record (no maps)",
            median_ns(&args, || {
                black_box(StoredBatch::decode(black_box(&record)).expect("decodes"));
            }),
        ),
        (
            "writer: uuid and page for the store",
            median_ns(&args, || {
                let mut uuid = uuid::Uuid::encode_buffer();
                for e in &stored.events {
                    black_box(e.uuid.hyphenated().encode_lower(&mut uuid));
                    black_box(e.stored_page());
                }
            }),
        ),
    ];
    println!(
        "| stage (one single-event request, {} B queue record) | ns |",
        record.len()
    );
    println!("|---|---:|");
    for (name, ns) in stages {
        println!("| {name} | {ns:.0} |");
    }
    let total: f64 = stages.iter().map(|(_, ns)| ns).sum();
    println!("| total | {total:.0} |");
}
