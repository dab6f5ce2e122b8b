//! How long an event takes from its 200 to being queryable.
//!
//! Sends one uniquely named event, notes when the 200 arrives, then polls the query API
//! until the event shows up. Repeats N times (sequentially, so it measures the writer's
//! batching delay, not a queue backlog) and prints the median and p95 in milliseconds.
//!
//! Usage: freshness BASE_URL WRITE_KEY READ_KEY [N]

use std::time::{Duration, Instant};

use serde_json::json;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: freshness BASE_URL WRITE_KEY READ_KEY [N]");
        std::process::exit(2);
    }
    let (base, write_key, read_key) = (&args[1], &args[2], &args[3]);
    let n: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(30);
    let client = reqwest::Client::new();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("fresh_{}_{i}", std::process::id());
        let r = client
            .post(format!("{base}/api/track"))
            .header("x-api-key", write_key)
            .json(&json!([{"event_name": name, "user_id": "bench"}]))
            .send()
            .await
            .expect("send");
        assert!(r.status().is_success(), "ingest answered {}", r.status());
        let acked = Instant::now();
        let query = json!({"metrics": ["events"], "date_range": "day",
                           "filters": [["is", "event:name", [name]]]});
        loop {
            let body: serde_json::Value = client
                .post(format!("{base}/api/v1/query"))
                .header("x-api-key", read_key)
                .json(&query)
                .send()
                .await
                .expect("query")
                .json()
                .await
                .expect("json");
            if body["results"][0]["metrics"][0].as_i64() == Some(1) {
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_secs(30),
                "event never became queryable"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(acked.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "{{\"samples\": {n}, \"median_ms\": {:.1}, \"p95_ms\": {:.1}, \"max_ms\": {:.1}}}",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
}
