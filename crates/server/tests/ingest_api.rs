//! Ingest over real HTTP into real DuckDB: each endpoint, auth, CORS, and bad input.

mod common;

use common::{store_rows, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn track_events_are_queryable_with_their_properties() {
    let s = TestServer::start().await;
    let r = s
        .track(json!([
            {"event_name": "signed_up", "user_id": "u1", "properties": {"plan": "pro"}},
            {"event_name": "signed_up", "user_id": "u2", "properties": {"plan": "free"}},
            {"event_name": "feature_used", "user_id": "u1", "properties": {"plan": "pro", "feature_name": "export"}},
        ]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"success": true, "accepted": 3}));
    s.wait_for_events(3).await;

    let r = s
        .query(json!({
            "metrics": ["events", "visitors"],
            "date_range": "all",
            "dimensions": ["event:name"],
        }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["results"],
        json!([
            {"dimensions": ["signed_up"], "metrics": [2, 2]},
            {"dimensions": ["feature_used"], "metrics": [1, 1]},
        ])
    );

    let r = s
        .query(json!({
            "metrics": ["events"],
            "date_range": "7d",
            "dimensions": ["event:props:plan"],
            "filters": [["is", "event:name", ["signed_up", "feature_used"]]],
            "order_by": [["event:props:plan", "asc"]],
        }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["results"],
        json!([
            {"dimensions": ["free"], "metrics": [1]},
            {"dimensions": ["pro"], "metrics": [2]},
        ])
    );
}

#[tokio::test]
async fn a_single_object_and_bearer_auth_are_accepted() {
    let s = TestServer::start().await;
    let r = s
        .client
        .post(format!("{}/api/track", s.base))
        .header("authorization", format!("Bearer {}", s.write_key))
        .body(json!({"event_name": "x", "user_id": "u"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.wait_for_events(1).await;
}

#[tokio::test]
async fn anonymous_page_visits_count_as_pageviews_per_page() {
    let s = TestServer::start().await;
    let visit = |device: &str, path: &str| {
        json!({"event_name": "page_visit", "user_id": "", "context": {"device_id": device},
               "properties": {"page_url": format!("https://shop.example{path}?utm_source=x")}})
    };
    let r = s
        .track(json!([
            visit("d1", "/pricing"),
            visit("d2", "/pricing"),
            visit("d1", "/docs")
        ]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s
        .send(
            "/api/page",
            Some(&s.write_key.clone()),
            json!([{"user_id": "u9", "properties": {"page_path": "/pricing"}}]).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    s.wait_for_events(4).await;

    let r = s
        .query(json!({"metrics": ["pageviews", "visitors"], "date_range": "day", "dimensions": ["event:page"]}))
        .await;
    assert_eq!(
        r.body["results"],
        json!([
            {"dimensions": ["/pricing"], "metrics": [3, 3]},
            {"dimensions": ["/docs"], "metrics": [1, 1]},
        ]),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn identify_and_group_update_persons_accounts_and_membership() {
    let mut s = TestServer::start().await;
    let key = s.write_key.clone();
    let r = s
        .send(
            "/api/identify",
            Some(&key),
            json!([
                {"user_id": "u1", "traits": {"plan": "free", "user_email": "a@x.io"}, "timestamp": "2026-01-01T00:00:00Z"},
                {"user_id": "u1", "traits": {"plan": "pro"}, "timestamp": "2026-01-02T00:00:00Z"},
            ])
            .to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A later request with an older timestamp must not overwrite the newer plan.
    let r = s
        .send(
            "/api/identify",
            Some(&key),
            json!({"user_id": "u1", "traits": {"plan": "trial", "first_name": "Ada"}, "timestamp": "2025-12-01T00:00:00Z"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s
        .send(
            "/api/group",
            Some(&key),
            json!([{"group_id": "acme", "user_id": "u1", "traits": {"account_name": "Acme", "employees": 40}}]).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    s.stop().await;

    let persons = store_rows(&s.data_dir, "SELECT user_id, traits->>'plan', traits->>'user_email', traits->>'first_name' FROM persons");
    assert_eq!(
        persons,
        vec![vec![
            json!("u1"),
            json!("pro"),
            json!("a@x.io"),
            json!("Ada")
        ]]
    );
    let groups = store_rows(
        &s.data_dir,
        "SELECT group_id, traits->>'account_name', (traits->>'employees')::INT FROM groups",
    );
    assert_eq!(groups, vec![vec![json!("acme"), json!("Acme"), json!(40)]]);
    let members = store_rows(&s.data_dir, "SELECT group_id, user_id FROM group_members");
    assert_eq!(members, vec![vec![json!("acme"), json!("u1")]]);
}

#[tokio::test]
async fn keys_are_checked_per_route() {
    let s = TestServer::start().await;
    let body = json!([{"event_name": "x", "user_id": "u"}]).to_string();
    let none = s.send("/api/track", None, body.clone()).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(
        none.body["message"].as_str().unwrap().contains("x-api-key"),
        "{}",
        none.body
    );
    let unknown = s.send("/api/track", Some("not-a-key"), body.clone()).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.body["message"], "unknown API key");
    let read = s
        .send("/api/track", Some(&s.read_key.clone()), body.clone())
        .await;
    assert_eq!(read.status, StatusCode::FORBIDDEN);
    let q = json!({"metrics": ["events"], "date_range": "day"}).to_string();
    let write = s.send("/api/v1/query", Some(&s.write_key.clone()), q).await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert!(write.body["message"].as_str().unwrap().contains("read key"));
    assert_eq!(s.count_events().await, 0);
}

#[tokio::test]
async fn browsers_get_a_cors_preflight_for_x_api_key() {
    let s = TestServer::start().await;
    let r = s
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/api/track", s.base))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key,content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        allowed.contains("x-api-key") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
}

/// Each bad input: its status, a message saying what and where, the server still
/// serving, and the good data around it kept.
#[tokio::test]
async fn bad_input_gets_a_clear_error_and_good_data_is_kept() {
    let s = TestServer::start().await;
    let key = s.write_key.clone();
    let good = json!({"event_name": "ok", "user_id": "u"});

    // Whole-request errors: (body, status, error code, words the message must contain).
    let deep = format!(
        "[{{\"event_name\":\"x\",\"user_id\":\"u\",\"properties\":{}1{}}}]",
        "[".repeat(200),
        "]".repeat(200)
    );
    let too_many = Value::Array(vec![good.clone(); 1001]).to_string();
    let too_big = format!(
        "[{{\"event_name\":\"x\",\"user_id\":\"u\",\"properties\":{{\"p\":\"{}\"}}}}]",
        "a".repeat(2 * 1024 * 1024)
    );
    let cases: Vec<(Vec<u8>, &str, &[&str])> = vec![
        (
            b"[{\"event_name\": \"x\",".to_vec(),
            "malformed_json",
            &["line 1", "column"],
        ),
        (
            b"{\"event_name\": \"x\", \"user_id\": \"\xff\xfe\"}".to_vec(),
            "invalid_utf8",
            &["byte offset 32"],
        ),
        (b"\"hello\"".to_vec(), "wrong_shape", &["array", "object"]),
        (deep.into_bytes(), "too_deep", &["item 0", "properties"]),
        (too_many.into_bytes(), "too_many_events", &["1001", "1000"]),
        (too_big.into_bytes(), "body_too_large", &["2097152"]),
    ];
    for (body, code, words) in cases {
        let r = s.send("/api/track", Some(&key), body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{code}: {}", r.body);
        assert_eq!(r.body["success"], false);
        assert_eq!(r.body["error"], code, "{}", r.body);
        let msg = r.body["message"].as_str().unwrap();
        for w in words {
            assert!(msg.contains(w), "{code}: message {msg:?} lacks {w:?}");
        }
    }

    // Per-item errors: the good items of the same request are stored.
    let r = s
        .track(json!([
            good,
            {"user_id": "u"},
            {"event_name": 7, "user_id": "u"},
            {"event_name": "anon", "user_id": ""},
            {"event_name": "t", "user_id": "u", "timestamp": "last tuesday"},
            {"event_name": "p", "user_id": "u", "properties": ["not", "an", "object"]},
            {"event_name": "ok2", "user_id": "", "context": {"device_id": "d1"}},
        ]))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["accepted"], 2);
    let errors: Vec<(u64, String)> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "event_name".into()),
            (2, "event_name".into()),
            (3, "user_id".into()),
            (4, "timestamp".into()),
            (5, "properties".into()),
        ]
    );
    assert_eq!(r.body["message"], "5 of 7 events rejected; see errors");

    // Still serving, and exactly the two good events are in the store.
    let r = s
        .track(json!([{"event_name": "after", "user_id": "u"}]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    s.wait_for_events(3).await;
    let r = s.query(json!({"metrics": ["events"], "date_range": "all", "dimensions": ["event:name"], "order_by": [["event:name", "asc"]]})).await;
    assert_eq!(
        r.body["results"],
        json!([
            {"dimensions": ["after"], "metrics": [1]},
            {"dimensions": ["ok"], "metrics": [1]},
            {"dimensions": ["ok2"], "metrics": [1]},
        ])
    );
    let m = s.metrics().await;
    assert!(
        m.contains("tally_requests_rejected_total{reason=\"malformed_json\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tally_events_rejected_total{reason=\"event_name\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_loses_nothing() {
    // A writer that waits 1.5 s per batch and a queue of 8 KiB fill up quickly.
    let s = TestServer::start_with(|c| {
        c.ingest.max_body_bytes = 2048;
        c.queue.max_pending_bytes = 8192;
        c.writer.batch_max_wait_ms = 1500;
    })
    .await;
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..200 {
        let r = s.track(json!([{"event_name": "fill", "user_id": format!("u{i}"), "properties": {"pad": "x".repeat(500)}}])).await;
        match r.status {
            StatusCode::OK => accepted += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    let r = refused.expect("the queue never filled");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.body["error"], "queue_full");
    assert!(
        r.body["message"].as_str().unwrap().contains("not accepted"),
        "{}",
        r.body
    );
    assert!(accepted > 0);

    // After the writer drains, ingest accepts again, and every acked event is stored once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = s
            .track(json!([{"event_name": "fill", "user_id": "late"}]))
            .await;
        if r.status == StatusCode::OK {
            accepted += 1;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "queue never drained");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    s.wait_for_events(accepted).await;
}

#[tokio::test]
async fn shutdown_flushes_the_queue_into_the_store() {
    // A long batch wait means events sit in the WAL when shutdown starts.
    let mut s = TestServer::start_with(|c| c.writer.batch_max_wait_ms = 60_000).await;
    for i in 0..20 {
        let r = s
            .track(json!([{"event_name": "e", "user_id": format!("u{i}")}]))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    s.stop().await;
    let rows = store_rows(
        &s.data_dir,
        "SELECT count(*), count(DISTINCT user_id) FROM events",
    );
    assert_eq!(rows, vec![vec![json!(20), json!(20)]]);
}

#[tokio::test]
async fn operations_endpoints_report_health_and_metrics() {
    let s = TestServer::start().await;
    let r = s.track(json!([{"event_name": "m", "user_id": "u"}])).await;
    assert_eq!(r.status, StatusCode::OK);
    s.wait_for_events(1).await;
    let ready = s
        .client
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], true);
    let m = s.metrics().await;
    for name in [
        "tally_http_request_duration_seconds_bucket{route=\"/api/track\"",
        "tally_events_accepted_total",
        "tally_wal_pending_bytes",
        "tally_wal_pending_events",
        "tally_wal_oldest_pending_age_seconds",
        "tally_writer_batch_events_bucket",
        "tally_writer_flush_seconds_bucket",
        "tally_wal_fsyncs_total",
    ] {
        assert!(m.contains(name), "/metrics lacks {name}:\n{m}");
    }
    let r = s
        .client
        .get(format!("{}/nope", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
}
