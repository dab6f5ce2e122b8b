//! What real clients send that once cost their events: compressed bodies on every route,
//! non-UUID message ids, lone UTF-16 surrogates, timestamps outside the accepted window.
//! Each case runs through the real server and is checked in the store.

mod common;

use std::io::Write;

use base64::Engine;
use common::{gzip, TestServer};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

async fn post(
    s: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut req = s.client.post(format!("{}{path}", s.base)).body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, body)
}

#[tokio::test]
async fn compressed_bodies_are_read_on_every_route() {
    let s = TestServer::start().await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:", s.write_key));
    let basic = format!("Basic {basic}");

    // Segment's analytics-node batch, stored gzipped (`gzip -9 -n` of the JSON fixture)
    // as the Segment-family SDKs send it, one of them with a form content type on the
    // JSON body.
    let segment = std::fs::read(format!(
        "{}/../ingest/tests/fixtures/segment-analytics-node-batch.json.gz",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let (status, body) = post(
        &s,
        "/v1/batch",
        &[
            ("authorization", &basic),
            ("content-encoding", "gzip"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        segment,
    )
    .await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"success": true})));

    // ThriveStack, deflate (zlib-wrapped, as the HTTP spec has it) and gzip.
    let track = |name: &str| json!([{"event_name": name, "user_id": "u1"}]).to_string();
    let key = s.write_key.clone();
    for (encoding, body) in [
        ("deflate", zlib(track("deflated").as_bytes())),
        ("gzip", gzip(track("gzipped").as_bytes())),
    ] {
        let (status, body) = post(
            &s,
            "/api/track",
            &[("x-api-key", &key), ("content-encoding", encoding)],
            body,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{encoding}: {body}");
        assert_eq!(body["accepted"], 1);
    }

    // Brotli on PostHog's capture route.
    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        let event = json!({"event": "brotli", "distinct_id": "u2", "api_key": s.write_key});
        w.write_all(event.to_string().as_bytes()).unwrap();
    }
    let (status, body) = post(&s, "/capture/", &[("content-encoding", "br")], br).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let rows = s.event_rows(7).await;
    let names: Vec<&str> = rows.iter().filter_map(|r| r["event"].as_str()).collect();
    for name in ["deflated", "gzipped", "brotli", "Order Completed"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }

    // A body that is not what it says is a clear 400; a bomb a 413; neither panics.
    let (status, body) = post(
        &s,
        "/v1/batch",
        &[("authorization", &basic), ("content-encoding", "gzip")],
        b"\x1f\x8b\x08garbage".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "bad_encoding");
    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    let (status, body) = post(
        &s,
        "/api/track",
        &[("x-api-key", &key), ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "body_too_large");
}

#[tokio::test]
async fn a_retried_non_uuid_message_id_is_stored_once_in_every_format() {
    let s = TestServer::start().await;
    let key = s.write_key.clone();
    for _ in 0..2 {
        let thrivestack =
            json!([{"event_name": "paid", "user_id": "u1", "message_id": "order-42"}]);
        let (status, _) = post(
            &s,
            "/api/track",
            &[("x-api-key", &key)],
            thrivestack.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let segment = json!({"userId": "u1", "event": "paid", "messageId": "order-42",
                             "writeKey": key});
        let (status, _) = post(&s, "/v1/track", &[], segment.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        let posthog = json!({"event": "paid", "distinct_id": "u1", "uuid": "order-42",
                             "api_key": key});
        let (status, _) = post(&s, "/capture/", &[], posthog.to_string()).await;
        assert_eq!(status, StatusCode::OK);
    }
    // The queue is read in order: once this last event is stored, so are the retries.
    s.track(json!([{"event_name": "sentinel", "user_id": "u1"}]))
        .await;
    let rows = s.event_rows(4).await;
    let paid = rows.iter().filter(|r| r["event"] == "paid").count();
    assert_eq!(paid, 3, "one per format, retries dropped: {rows:#?}");
}

#[tokio::test]
async fn a_lone_surrogate_costs_no_event_on_any_route() {
    let s = TestServer::start().await;
    let key = s.write_key.clone();
    // `JSON.stringify("🙂 hi".slice(0, 1))` is "\ud83d": one such string in 100 events.
    let mut items: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"event_name": "e{i}", "user_id": "u1"}}"#))
        .collect();
    items[50] =
        r#"{"event_name": "cut", "user_id": "u1", "properties": {"title": "\ud83d"}}"#.to_owned();
    let body = format!("[{}]", items.join(","));
    let (status, answer) = post(&s, "/api/track", &[("x-api-key", &key)], body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], 100);

    let segment = format!(
        r#"{{"writeKey": "{key}", "batch": [{{"type": "track", "userId": "u1", "event": "seg\udc00"}}]}}"#
    );
    let (status, answer) = post(&s, "/v1/batch", &[], segment).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let posthog = format!(r#"{{"api_key": "{key}", "event": "ph", "distinct_id": "u\ud800x"}}"#);
    let (status, answer) = post(&s, "/capture/", &[], posthog).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let rows = s.event_rows(102).await;
    let cut = rows.iter().find(|r| r["event"] == "cut").unwrap();
    assert_eq!(cut["properties"]["title"], "\u{fffd}");
    assert!(rows.iter().any(|r| r["event"] == "seg\u{fffd}"));
    assert!(rows.iter().any(|r| r["event"] == "ph"));
}

#[tokio::test]
async fn timestamps_before_2000_are_refused_by_index_and_field_and_the_rest_stored() {
    let s = TestServer::start().await;
    let r = s
        .track(json!([
            {"event_name": "ok", "user_id": "u1", "timestamp": "2026-01-05T10:00:00Z"},
            {"event_name": "year0", "user_id": "u1", "timestamp": "0000-01-01T00:00:00Z"},
            {"event_name": "minus1", "user_id": "u1", "timestamp": -1},
            {"event_name": "ok2", "user_id": "u1", "timestamp": "2000-01-01T00:00:00Z"},
        ]))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["accepted"], 2);
    let errors = r.body["errors"].as_array().unwrap();
    let refused: Vec<(i64, &str)> = errors
        .iter()
        .map(|e| (e["index"].as_i64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(refused, vec![(1, "timestamp"), (2, "timestamp")]);
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("2000-01-01"));

    // The same window on the Segment and PostHog routes.
    let key = s.write_key.clone();
    let segment = json!({"writeKey": key, "batch": [
        {"type": "track", "userId": "u1", "event": "seg_old", "timestamp": "1970-01-01T00:00:00Z"}]});
    let (status, body) = post(&s, "/v1/batch", &[], segment.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["field"], "timestamp");
    let posthog = json!({"api_key": key, "batch": [
        {"event": "ph_old", "distinct_id": "u1", "timestamp": "1999-12-31T23:59:59Z"}]});
    let (status, body) = post(&s, "/batch/", &[], posthog.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["field"], "timestamp");

    s.wait_for_events(2).await;
    // With only accepted times stored, an all-time daily trend has a bounded range.
    let r = s
        .query(
            json!({"kind": "trends", "date_range": "all", "interval": "month",
                      "series": [{"event": "ok"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
