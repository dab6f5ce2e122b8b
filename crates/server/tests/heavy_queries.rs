//! Heavy queries through the real server: with one query running at a time and one
//! waiting, a burst of 100 concurrent funnels gets answers for the admitted ones and an
//! immediate 503 `too_busy` with `Retry-After` for the rest. Nothing else (no 500, no
//! hang). (The per-request budget, 503 `query_timeout`, is tested in `src/query.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};

/// 40,000 events of 2,000 people: page views, signups, purchases.
async fn dataset(s: &TestServer) {
    for chunk in 0..40 {
        let events: Vec<Value> = (0..1_000)
            .map(|i| {
                let n = chunk * 1_000 + i;
                let name = ["page_visit", "page_visit", "signup", "purchase"][n % 4];
                json!({"event_name": name, "user_id": format!("u{}", n % 2_000),
                       "timestamp": format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + n % 28, n % 24, n % 60)})
            })
            .collect();
        let r = s.track(Value::Array(events)).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    s.wait_for_events(40_000).await;
}

const FUNNEL: &str = r#"{"kind": "funnel", "date_range": ["2026-11-01", "2026-11-30"],
    "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "purchase"}],
    "breakdown": "event:name"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_heavy_queries_is_answered_or_refused_at_once() {
    let s = TestServer::start_with(|c| {
        c.query.max_concurrent = 1;
        c.query.max_queued = 1;
        c.ingest.max_events_per_request = 1_000;
        // A hundred different dashboards: identical queries would share one
        // computation in the cache (cache_api.rs tests that).
        c.cache.enabled = false;
    })
    .await;
    dataset(&s).await;
    let funnel: Value = serde_json::from_str(FUNNEL).unwrap();
    let burst = (0..100).map(|_| {
        let (client, base, key, body) = (
            s.client.clone(),
            s.base.clone(),
            s.read_key.clone(),
            funnel.to_string(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client
                .post(format!("{base}/api/v1/query"))
                .header("x-api-key", key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            let body: Value = r.json().await.unwrap();
            (status, retry_after, body, started.elapsed())
        })
    });
    let mut answered = 0;
    let mut refused = Vec::new();
    let burst: Vec<_> = burst.collect();
    for outcome in burst {
        let (status, retry_after, body, took) = outcome.await.unwrap();
        match status {
            200 => {
                assert!(body["results"][0]["steps"][0]["count"].as_u64().unwrap() > 0);
                answered += 1;
            }
            503 => {
                assert_eq!(body["error"], "too_busy", "{body}");
                assert!(retry_after);
                refused.push(took);
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        answered >= 2,
        "the running and the queued one are answered: {answered}"
    );
    assert!(
        refused.len() >= 50,
        "most of the burst is refused: {}",
        refused.len()
    );
    refused.sort();
    assert!(
        refused[refused.len() / 2] < Duration::from_millis(500),
        "refused at once, not after waiting: median {:?}",
        refused[refused.len() / 2]
    );
}
