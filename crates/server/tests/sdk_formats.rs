//! Segment and PostHog bodies (the fixtures in crates/ingest/tests/fixtures, shaped like
//! the SDKs' own) replayed through the real server, plus dedup, beacon and bomb cases.

mod common;

use base64::Engine;
use common::{event_names, fixture, gzip, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn a_segment_batch_with_basic_auth_is_stored_once_even_when_retried() {
    let s = TestServer::start().await;
    let body = fixture("segment-analytics-node-batch.json", &s.write_key);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:", s.write_key));
    for _ in 0..2 {
        let r = s
            .client
            .post(format!("{}/v1/batch", s.base))
            .header("authorization", format!("Basic {auth}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"success": true}));
    }
    let rows = s.event_rows(4).await;
    assert_eq!(
        event_names(&rows),
        vec!["$group", "$identify", "Order Completed", "Pricing"]
    );
    let identify = rows.iter().find(|r| r["event"] == "$identify").unwrap();
    assert_eq!(identify["user_id"], "user_8f14e45f");
    assert_eq!(identify["traits"]["plan"], "pro");
    let m = s.metrics().await;
    assert!(m.contains("tally_events_deduplicated_total 4"), "{m}");

    // The key can also travel in the body, and a wrong one is refused.
    let r = s
        .send(
            "/v1/track",
            None,
            json!({"writeKey": s.write_key, "userId": "u2", "event": "e"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = s
        .send(
            "/v1/track",
            None,
            json!({"writeKey": "nope", "userId": "u2", "event": "e"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn posthog_js_gzip_and_posthog_python_batches_are_stored() {
    let s = TestServer::start().await;
    let js = fixture("posthog-js-e.json", &s.write_key);
    let r = s
        .client
        .post(format!(
            "{}/e/?compression=gzip-js&ver=1.130.1&_=1714564792000",
            s.base
        ))
        .header("content-type", "text/plain")
        .body(gzip(js.as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let py = fixture("posthog-python-batch.json", &s.write_key);
    let r = s.send("/batch/", None, py).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"status": 1}));
    let rows = s.event_rows(8).await;
    let pageview = rows.iter().find(|r| r["event"] == "$pageview").unwrap();
    assert_eq!(pageview["type"], "page");
    assert_eq!(pageview["uuid"], "018f3398-6b5d-7b8e-a1c2-6f4e9d2a1b01");
    assert_eq!(
        pageview["device_id"],
        "018f3391-0c44-7d2c-9b7e-3f0e5a6c7d88"
    );
    assert!(pageview["user_id"].is_null());
    let group = rows
        .iter()
        .find(|r| r["event"] == "$groupidentify")
        .unwrap();
    assert_eq!(group["type"], "group");

    // Pageviews from posthog-js count in stats by their page path.
    let r = s
        .query(json!({"metrics": ["pageviews"], "date_range": "all", "dimensions": ["event:page"]}))
        .await;
    assert_eq!(
        r.body["results"][0]["dimensions"],
        json!(["/pricing"]),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn posthog_beacons_get_204_and_bad_tokens_401() {
    let s = TestServer::start().await;
    let body = json!({"event": "left", "distinct_id": "u1", "properties": {"token": s.write_key}})
        .to_string();
    let data = base64::engine::general_purpose::STANDARD.encode(body);
    let r = s
        .client
        .get(format!("{}/e/?data={}&beacon=1", s.base, urlencode(&data)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.event_rows(1).await;
    let r = s
        .send(
            "/i/v0/e",
            None,
            json!({"event": "x", "distinct_id": "u", "api_key": "wrong"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .send(
            "/capture",
            None,
            json!({"event": "x", "distinct_id": "u"}).to_string(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn posthog_feature_flag_calls_get_no_flags_instead_of_404() {
    let s = TestServer::start().await;
    for path in ["/decide/?v=3", "/flags/?v=2&config=true"] {
        let r = s
            .send(
                path,
                None,
                json!({"token": s.write_key, "distinct_id": "u"}).to_string(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body["featureFlags"], json!({}), "{path}");
        assert_eq!(r.body["flags"], json!({}), "{path}");
    }
}

#[tokio::test]
async fn segment_browser_pages_come_from_context_page() {
    let s = TestServer::start().await;
    let body = json!({"writeKey": s.write_key, "anonymousId": "a1", "event": "Clicked",
        "context": {"page": {"path": "/pricing", "url": "https://shop.example/pricing"}}});
    let r = s.send("/v1/track", None, body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    s.event_rows(1).await;
    let r = s
        .query(json!({"metrics": ["events"], "date_range": "all", "dimensions": ["event:page"]}))
        .await;
    assert_eq!(
        r.body["results"],
        json!([{"dimensions": ["/pricing"], "metrics": [1]}])
    );
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_with_413_before_it_is_read() {
    let s = TestServer::start().await;
    // Segment allows 500 KB per batch, PostHog 20 MB.
    for (path, size) in [("/v1/batch", 600 * 1024), ("/batch/", 21 * 1024 * 1024)] {
        let r = s
            .send(path, Some(&s.write_key.clone()), vec![b' '; size])
            .await;
        assert_eq!(
            r.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{path}: {}",
            r.body
        );
        assert_eq!(r.body["error"], "body_too_large", "{path}");
    }
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_with_413_and_the_server_keeps_serving() {
    let s = TestServer::start().await;
    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    assert!(bomb.len() < 1024 * 1024);
    let r = s
        .client
        .post(format!("{}/batch/", s.base))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "body_too_large");
    let r = s
        .track(json!([{"event_name": "still_here", "user_id": "u"}]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn the_browser_tracker_is_served() {
    let s = TestServer::start().await;
    let r = s
        .client
        .get(format!("{}/js/tally.js", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/javascript"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("page_visit") && text.contains("sendBeacon"),
        "tracker script looks wrong"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
