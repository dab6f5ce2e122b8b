//! Replays the SDK-shaped request bodies in `tests/fixtures/` (hand-written from the
//! SDKs' published payload formats; see the README there) through the public decoders.

use std::io::Write;

use flate2::write::GzEncoder;
use tally_ingest::posthog::{self, PostHogRequest};
use tally_ingest::segment::{self, SegmentCall};
use tally_ingest::{PostHogLimits, RequestMeta, SegmentLimits};
use tally_model::{Event, EventType};

/// 2024-05-01T12:00:00Z, when the server "received" every fixture.
const NOW: i64 = 1_714_564_800_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/{name}",
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn meta() -> RequestMeta {
    RequestMeta {
        received_at: NOW,
        ip: Some("203.0.113.7".into()),
        user_agent: None,
    }
}

/// Type, name, user id, device id, and timestamp as an offset from NOW in µs.
type Summary<'a> = (EventType, &'a str, Option<&'a str>, Option<&'a str>, i64);

fn summary(events: &[Event]) -> Vec<Summary<'_>> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.event.as_str(),
                e.user_id.as_deref(),
                e.device_id.as_deref(),
                e.timestamp - NOW,
            )
        })
        .collect()
}

const TOKEN: &str = "phc_TestProjectToken0000000000000000000000000";
const ANON: &str = "018f3391-0c44-7d2c-9b7e-3f0e5a6c7d88";
const USER: &str = "user_8f14e45f";

#[test]
fn posthog_js_gzip_batch() {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&fixture("posthog-js-e.json")).unwrap();
    let body = gz.finish().unwrap();
    let req = PostHogRequest {
        path: "/e/",
        method_is_get: false,
        // Sent at 11:59:59.000 by the client's clock.
        query: Some("ip=1&_=1714564799000&ver=1.130.1&compression=gzip-js"),
        content_type: Some("text/plain"),
        content_encoding: None,
        body: &body,
    };
    let decoded = posthog::decode(&req, &meta(), &PostHogLimits::default()).unwrap();
    assert_eq!(decoded.token.as_deref(), Some(TOKEN));
    assert!(!decoded.beacon);
    assert_eq!(decoded.decoded.rejected, vec![]);
    let events = &decoded.decoded.events;
    assert_eq!(
        summary(events),
        [
            (EventType::Page, "$pageview", None, Some(ANON), -8_877_000),
            (
                EventType::Track,
                "$autocapture",
                None,
                Some(ANON),
                -4_999_000
            ),
            (
                EventType::Identify,
                "$identify",
                Some(USER),
                Some(ANON),
                -1_520_000
            ),
            (
                EventType::Track,
                "signed_up",
                Some(USER),
                Some(ANON),
                -734_000
            ),
        ]
    );
    assert_eq!(
        events[0].uuid.to_string(),
        "018f3398-6b5d-7b8e-a1c2-6f4e9d2a1b01"
    );
    assert_eq!(events[0].page_path().as_deref(), Some("/pricing"));
    assert!(events
        .iter()
        .all(|e| e.session_id.as_deref() == Some("018f3398-5a10-7e33-8c4b-0d9a2f6b4e21")));
    assert_eq!(events[2].traits["email"], "ada@example.com");
    assert_eq!(events[3].group_id.as_deref(), Some("acme-inc"));
    assert_eq!(events[3].context["ip"], "203.0.113.7");
}

#[test]
fn posthog_python_batch() {
    let body = fixture("posthog-python-batch.json");
    let req = PostHogRequest {
        path: "/batch/",
        method_is_get: false,
        query: None,
        content_type: Some("application/json"),
        content_encoding: None,
        body: &body,
    };
    let decoded = posthog::decode(&req, &meta(), &PostHogLimits::default()).unwrap();
    assert_eq!(decoded.token.as_deref(), Some(TOKEN));
    assert_eq!(decoded.decoded.rejected, vec![]);
    let events = &decoded.decoded.events;
    // `sentAt` is 11:59:45 by the client's clock.
    assert_eq!(
        summary(events),
        [
            (
                EventType::Track,
                "subscription_renewed",
                Some(USER),
                None,
                -4_750_000
            ),
            (EventType::Group, "$groupidentify", None, None, -4_000_000),
            (
                EventType::Alias,
                "$create_alias",
                Some(USER),
                None,
                -2_999_999
            ),
            (EventType::Identify, "$set", Some(USER), None, -1_250_000),
        ]
    );
    assert_eq!(events[0].group_id.as_deref(), Some("acme-inc"));
    assert_eq!(events[1].group_id.as_deref(), Some("acme-inc"));
    assert_eq!(events[1].traits["name"], "Acme Inc");
    assert_eq!(events[1].traits["group_type"], "company");
    assert_eq!(events[2].previous_id.as_deref(), Some("crm-contact-5521"));
    assert_eq!(events[3].traits["seats"], 12);
    assert_eq!(
        events[2].uuid.to_string(),
        "0e1d2c3b-4a59-4687-b7a6-958473625130"
    );
}

#[test]
fn segment_analytics_node_batch() {
    let body = fixture("segment-analytics-node-batch.json");
    let run = || {
        segment::decode(
            SegmentCall::Batch,
            &body,
            Some("wk_test"),
            &meta(),
            &SegmentLimits::default(),
        )
        .unwrap()
    };
    let decoded = run();
    assert_eq!(decoded.write_key.as_deref(), Some("wk_test"));
    assert_eq!(decoded.decoded.rejected, vec![]);
    let events = &decoded.decoded.events;
    let visitor = "9f6b1c2d-8e7a-4b3c-a2d1-0f9e8d7c6b5a";
    // `sentAt` is 11:59:55.000 by the client's clock.
    assert_eq!(
        summary(events),
        [
            (
                EventType::Identify,
                "$identify",
                Some(USER),
                None,
                -4_900_000
            ),
            (
                EventType::Track,
                "Order Completed",
                Some(USER),
                None,
                -2_650_000
            ),
            (EventType::Group, "$group", Some(USER), None, -2_000_000),
            (EventType::Page, "Pricing", None, Some(visitor), -500_000),
        ]
    );
    assert_eq!(events[0].traits["plan"], "pro");
    assert_eq!(events[1].group_id.as_deref(), Some("acme-inc"));
    assert_eq!(events[1].properties["revenue"], 25);
    assert_eq!(events[2].group_id.as_deref(), Some("acme-inc"));
    assert_eq!(events[3].page_path().as_deref(), Some("/pricing"));
    assert_eq!(
        events[3].context["library"]["name"],
        "@segment/analytics-node"
    );
    // analytics-node's message ids are not UUIDs: the event ids derived from them are
    // the same when the batch is retried.
    let retried = run();
    for (a, b) in events.iter().zip(&retried.decoded.events) {
        assert_eq!(a.uuid, b.uuid);
        assert_eq!(a.uuid.get_version_num(), 8);
    }
}
