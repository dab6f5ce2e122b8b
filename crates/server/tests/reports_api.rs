//! Every report kind over HTTP with a read key, on events sent through the ThriveStack
//! routes a moment ago: a visitor browses anonymously, signs up (identify links the
//! device), joins an account and buys; another only browses.

mod common;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn seeded() -> TestServer {
    let s = TestServer::start().await;
    let now = chrono::Utc::now();
    let at = |secs_ago: i64| (now - chrono::Duration::seconds(secs_ago)).to_rfc3339();
    let r = s
        .send(
            "/api/group",
            Some(&s.write_key.clone()),
            json!([{"group_id": "acme", "user_id": "ann", "traits": {"account_name": "Acme", "plan": "pro"},
                    "timestamp": at(300)}])
            .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s
        .track(json!([
            {"event_name": "page_visit", "user_id": "", "context": {"device_id": "dev-ann"},
             "properties": {"page_path": "/pricing"}, "timestamp": at(240)},
            {"event_name": "signed_up", "user_id": "ann", "context": {"device_id": "dev-ann", "group_id": "acme"},
             "timestamp": at(180)},
            {"event_name": "purchase", "user_id": "ann", "context": {"group_id": "acme"},
             "properties": {"revenue": 40}, "timestamp": at(120)},
            {"event_name": "page_visit", "user_id": "", "context": {"device_id": "dev-bo"},
             "properties": {"page_path": "/"}, "timestamp": at(60)},
        ]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    s.wait_for_events(4).await;
    s
}

async fn ok(s: &TestServer, q: Value) -> Value {
    let r = s.query(q.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{q} → {}", r.body);
    assert_eq!(
        r.body["query"]["kind"], q["kind"],
        "the normalized query is echoed"
    );
    r.body
}

#[tokio::test]
async fn every_report_kind_answers_with_a_read_key() {
    let s = seeded().await;

    let r = ok(
        &s,
        json!({"kind": "stats", "date_range": "7d", "metrics": ["visitors", "visits", "events"]}),
    )
    .await;
    // ann's anonymous visit and her signed-in events are one visitor and one visit.
    assert_eq!(r["results"][0]["metrics"], json!([2, 2, 4]));

    let r = ok(&s, json!({"kind": "trends", "date_range": "7d", "interval": "hour",
        "series": [{"event": "page_visit", "math": "unique"}, {"event": "purchase", "math": "sum", "property": "revenue"}]})).await;
    assert_eq!(r["results"][0]["total"], 2);
    assert_eq!(r["results"][1]["total"], 40);

    let r = ok(
        &s,
        json!({"kind": "funnel", "date_range": "7d",
        "steps": [{"event": "page_visit"}, {"event": "signed_up"}, {"event": "purchase"}]}),
    )
    .await;
    let counts: Vec<u64> = r["results"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![2, 1, 1]);

    let r = ok(
        &s,
        json!({"kind": "retention", "date_range": "7d", "period": "day", "intervals": 2,
        "target": {"event": "signed_up"}}),
    )
    .await;
    let sizes: u64 = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["size"].as_u64().unwrap())
        .sum();
    assert_eq!(sizes, 1);

    let r = ok(
        &s,
        json!({"kind": "lifecycle", "date_range": "7d", "interval": "day"}),
    )
    .await;
    let new: i64 = r["results"]["new"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(new, 2);

    let r = ok(&s, json!({"kind": "stickiness", "date_range": "7d"})).await;
    let people: u64 = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(people, 2);

    let r = ok(
        &s,
        json!({"kind": "paths", "date_range": "7d", "start": {"event": "page_visit"}, "depth": 2}),
    )
    .await;
    assert_eq!(
        r["results"]["steps"][0]["edges"][0],
        json!({"from": "page_visit", "to": "signed_up", "count": 1})
    );

    let r = ok(&s, json!({"kind": "accounts", "date_range": "7d"})).await;
    assert_eq!(r["results"][0]["account_id"], "acme");
    assert_eq!(
        r["results"][0]["name"], "Acme",
        "from ThriveStack's account_name trait"
    );
    assert_eq!(r["results"][0]["traits"]["account_name"], "Acme");
    assert_eq!(r["results"][0]["events"], 3);
    assert_eq!(r["results"][0]["health"], "New");

    let r = ok(
        &s,
        json!({"kind": "accounts", "date_range": "7d", "account_id": "acme"}),
    )
    .await;
    assert_eq!(r["results"][0]["user_id"], "ann");

    let r = ok(&s, json!({"kind": "realtime", "minutes": 10})).await;
    assert_eq!(r["results"]["visitors"], 2);
    assert_eq!(r["results"]["events"], 4);
}

#[tokio::test]
async fn report_errors_are_400_with_the_field_and_write_keys_are_refused() {
    let s = TestServer::start().await;
    let r = s
        .query(json!({"kind": "funnel", "date_range": "7d", "steps": [{"event": "a"}]}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.to_string().contains("steps"), "{}", r.body);

    let r = s
        .send(
            "/api/v1/query",
            Some(&s.write_key.clone()),
            json!({"kind": "trends", "date_range": "7d", "series": [{"event": "a"}]}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
}
