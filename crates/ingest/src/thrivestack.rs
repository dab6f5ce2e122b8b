//! ThriveStack's HTTP API: `POST /api/track`, `/api/identify`, `/api/group` and the
//! older `/api/page`. A body is a JSON array of items, or a single item.

use serde_json::{Map, Value};
use tally_model::{Event, EventType};

use crate::item::{
    accepted_time, event_object, event_uuid, fill_context, first_id, id, not_a_string, Reject,
};
use crate::json::{parse_items, take_object, timestamp_micros};
use crate::{DecodeError, Decoded, ItemError, Limits, RequestMeta};

/// Which endpoint a body was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Track,
    Identify,
    Group,
    Page,
}

impl Call {
    fn kind(self) -> EventType {
        match self {
            Call::Track => EventType::Track,
            Call::Identify => EventType::Identify,
            Call::Group => EventType::Group,
            Call::Page => EventType::Page,
        }
    }
}

/// Decodes one ThriveStack request body. Whole-request problems are an error; a bad
/// item is listed in [`Decoded::rejected`] and the other items are still decoded.
pub fn decode(
    call: Call,
    body: &[u8],
    meta: &RequestMeta,
    limits: &Limits,
) -> Result<Decoded, DecodeError> {
    let mut decoded = Decoded::default();
    for (index, item) in parse_items(body, limits)?.into_iter().enumerate() {
        match decode_item(call, item, meta, limits) {
            Ok(event) => decoded.events.push(event),
            Err((field, message)) => decoded.rejected.push(ItemError {
                index,
                field: field.to_owned(),
                message,
            }),
        }
    }
    Ok(decoded)
}

fn decode_item(
    call: Call,
    item: Value,
    meta: &RequestMeta,
    limits: &Limits,
) -> Result<Event, Reject> {
    let mut item = event_object(item)?;
    let mut context = take_object(&mut item, "context").map_err(|m| ("context", m))?;

    let event = match call {
        Call::Track => match item.get("event_name") {
            None | Some(Value::Null) => {
                return Err(("event_name", "`event_name` is required".into()))
            }
            Some(Value::String(name)) if name.trim().is_empty() => {
                return Err(("event_name", "`event_name` must not be empty".into()))
            }
            Some(Value::String(name)) => name.clone(),
            Some(other) => return Err(("event_name", not_a_string("event_name", other))),
        },
        Call::Page => match item.get("event_name") {
            None | Some(Value::Null) => "page_visit".to_owned(),
            Some(Value::String(name)) if name.trim().is_empty() => "page_visit".to_owned(),
            Some(Value::String(name)) => name.clone(),
            Some(other) => return Err(("event_name", not_a_string("event_name", other))),
        },
        Call::Identify => "$identify".to_owned(),
        Call::Group => "$group".to_owned(),
    };

    let user_id = id(&item, "user_id", "user_id")?;
    // The browser script puts its ids in `context`; other clients send them at the top
    // level, some under Segment's name.
    let device_id = first_id(&[
        (&context, "device_id", "context.device_id"),
        (&item, "device_id", "device_id"),
        (&item, "anonymous_id", "anonymous_id"),
    ])?;
    let session_id = first_id(&[
        (&context, "session_id", "context.session_id"),
        (&item, "session_id", "session_id"),
    ])?;
    let group_id = match call {
        Call::Group => first_id(&[
            (&item, "group_id", "group_id"),
            (&context, "group_id", "context.group_id"),
        ])?,
        _ => first_id(&[
            (&context, "group_id", "context.group_id"),
            (&item, "group_id", "group_id"),
        ])?,
    };

    match call {
        Call::Track | Call::Page => {
            if user_id.is_none() && device_id.is_none() && session_id.is_none() {
                return Err((
                    "user_id",
                    "an event needs a `user_id`, or a `context.device_id` or \
                     `context.session_id` for an anonymous visitor"
                        .into(),
                ));
            }
        }
        Call::Identify => {
            if user_id.is_none() {
                return Err(("user_id", "`user_id` is required for identify".into()));
            }
        }
        Call::Group => {
            if group_id.is_none() {
                return Err(("group_id", "`group_id` is required for group".into()));
            }
        }
    }

    let timestamp = match item.get("timestamp") {
        None | Some(Value::Null) => meta.received_at,
        Some(value) => {
            let t = timestamp_micros(value, "timestamp").map_err(|m| ("timestamp", m))?;
            accepted_time(t, meta, limits.max_future_skew_s)?
        }
    };

    let (properties, traits) = match call {
        Call::Track | Call::Page => {
            let mut properties =
                take_object(&mut item, "properties").map_err(|m| ("properties", m))?;
            let has_revenue = properties.get("revenue").is_some_and(|v| !v.is_null());
            if has_revenue && properties.get("currency").is_none_or(Value::is_null) {
                properties.insert("currency".into(), "USD".into());
            }
            (properties, Map::new())
        }
        Call::Identify | Call::Group => {
            let traits = take_object(&mut item, "traits").map_err(|m| ("traits", m))?;
            (Map::new(), traits)
        }
    };

    fill_context(&mut context, meta, &["user_agent"]);

    Ok(Event {
        uuid: event_uuid(message_id(&item), UUID_NAMESPACE),
        kind: call.kind(),
        event,
        user_id,
        device_id,
        session_id,
        group_id,
        previous_id: None,
        timestamp,
        received_at: meta.received_at,
        properties,
        traits,
        context,
    })
}

/// Namespace for event ids derived from non-UUID message ids.
const UUID_NAMESPACE: &str = "thrivestack";

/// The client-chosen event id: the first of `message_id`, `messageId`, `uuid` that is a
/// non-empty string. [`event_uuid`] keeps a UUID and derives a stable one from any other
/// id (the same rule as Segment's `messageId` and PostHog's `uuid`), so a retry keeps
/// its id and is deduplicated.
fn message_id(item: &Map<String, Value>) -> Option<&Value> {
    ["message_id", "messageId", "uuid"]
        .iter()
        .filter_map(|key| item.get(*key))
        .find(|v| v.as_str().is_some_and(|s| !s.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use serde_json::json;
    use uuid::Uuid;

    fn run(call: Call, body: &str) -> Decoded {
        decode(call, body.as_bytes(), &meta(), &Limits::default()).unwrap()
    }

    fn one(call: Call, body: &str) -> Event {
        let mut decoded = run(call, body);
        assert_eq!(decoded.rejected, vec![], "body: {body}");
        assert_eq!(decoded.events.len(), 1);
        decoded.events.remove(0)
    }

    fn err(call: Call, body: &[u8]) -> DecodeError {
        decode(call, body, &meta(), &Limits::default()).unwrap_err()
    }

    /// The context the server adds when the item has neither ip nor user agent.
    fn server_context() -> Map<String, Value> {
        map(json!({"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}))
    }

    #[test]
    fn track_maps_every_field() {
        let event = one(
            Call::Track,
            &json!([{
                "event_name": "feature_used",
                "user_id": "u1",
                "message_id": ID,
                "properties": {"feature_name": "export", "revenue": 49.5},
                "context": {"group_id": "acme", "device_id": "d1", "session_id": "s1",
                            "source": "product"},
                "timestamp": "2024-05-01T11:00:00Z",
            }])
            .to_string(),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Track,
            event: "feature_used".into(),
            user_id: Some("u1".into()),
            device_id: Some("d1".into()),
            session_id: Some("s1".into()),
            group_id: Some("acme".into()),
            previous_id: None,
            timestamp: NOW - HOUR,
            received_at: NOW,
            properties: map(json!({"feature_name": "export", "revenue": 49.5, "currency": "USD"})),
            traits: Map::new(),
            context: map(json!({
                "group_id": "acme", "device_id": "d1", "session_id": "s1", "source": "product",
                "ip": "203.0.113.7", "user_agent": "Mozilla/5.0",
            })),
        };
        assert_eq!(event, expected);
    }

    #[test]
    fn identify_maps_every_field() {
        let event = one(
            Call::Identify,
            &json!([{
                "user_id": "u1",
                "messageId": ID,
                "traits": {"user_email": "a@b.co", "plan": "pro"},
                "properties": {"ignored": true},
                "context": {"device_id": "d1"},
            }])
            .to_string(),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Identify,
            event: "$identify".into(),
            user_id: Some("u1".into()),
            device_id: Some("d1".into()),
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: NOW,
            received_at: NOW,
            properties: Map::new(),
            traits: map(json!({"user_email": "a@b.co", "plan": "pro"})),
            context: map(json!({
                "device_id": "d1", "ip": "203.0.113.7", "user_agent": "Mozilla/5.0",
            })),
        };
        assert_eq!(event, expected);
    }

    #[test]
    fn group_maps_every_field() {
        let event = one(
            Call::Group,
            &json!({
                "group_id": "acme",
                "uuid": ID,
                "traits": {"account_name": "Acme", "group_type": "Account", "employees": 40},
                "timestamp": 1_714_561_200_000_i64,
            })
            .to_string(),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Group,
            event: "$group".into(),
            user_id: None,
            device_id: None,
            session_id: None,
            group_id: Some("acme".into()),
            previous_id: None,
            timestamp: NOW - HOUR,
            received_at: NOW,
            properties: Map::new(),
            traits: map(json!({"account_name": "Acme", "group_type": "Account", "employees": 40})),
            context: server_context(),
        };
        assert_eq!(event, expected);

        let event = one(
            Call::Group,
            r#"{"user_id": "u1", "context": {"group_id": "g2"}}"#,
        );
        assert_eq!(event.group_id.as_deref(), Some("g2"));
        assert_eq!(event.user_id.as_deref(), Some("u1"));
    }

    #[test]
    fn page_maps_every_field_and_defaults_its_name() {
        let event = one(
            Call::Page,
            &json!([{
                "user_id": "",
                "message_id": ID,
                "properties": {"page_url": "https://a.co/pricing", "page_title": "Pricing"},
                "context": {"device_id": "d1", "ip": "198.51.100.1"},
            }])
            .to_string(),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Page,
            event: "page_visit".into(),
            user_id: None,
            device_id: Some("d1".into()),
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: NOW,
            received_at: NOW,
            properties: map(json!({"page_url": "https://a.co/pricing", "page_title": "Pricing"})),
            traits: Map::new(),
            // The item's own ip wins over the connection's.
            context: map(json!({
                "device_id": "d1", "ip": "198.51.100.1", "user_agent": "Mozilla/5.0",
            })),
        };
        assert_eq!(event, expected);

        let named = one(
            Call::Page,
            r#"{"event_name": "docs_view", "user_id": "u1"}"#,
        );
        assert_eq!(named.event, "docs_view");
        let empty = one(Call::Page, r#"{"event_name": "", "user_id": "u1"}"#);
        assert_eq!(empty.event, "page_visit");
    }

    #[test]
    fn any_message_id_gives_a_stable_uuid_and_none_a_v7() {
        let body = r#"[{"event_name": "a", "user_id": "u1"},
                {"event_name": "a", "user_id": "u1", "message_id": "order-42"},
                {"event_name": "a", "user_id": "u1", "messageId": "order-42"},
                {"event_name": "a", "user_id": "u1", "message_id": "order-43"},
                {"event_name": "a", "user_id": "u1", "message_id": 7},
                {"event_name": "a", "user_id": "u1", "message_id": "  "}]"#;
        let first = run(Call::Track, body);
        let retry = run(Call::Track, body);
        let ids = |d: &Decoded| d.events.iter().map(|e| e.uuid).collect::<Vec<_>>();
        let (a, b) = (ids(&first), ids(&retry));
        assert_eq!(a.len(), 6);
        // A retry of a non-UUID id keeps its event id (so dedup drops it)...
        assert_eq!(a[1], b[1]);
        assert_eq!(a[1], a[2], "message_id and messageId are the same id");
        assert_ne!(a[1], a[3]);
        // ...by the rule Segment's messageId follows, in this format's namespace.
        assert_eq!(a[1], event_uuid(Some(&json!("order-42")), "thrivestack"));
        // No usable id: a fresh time-ordered one each time.
        for i in [0, 4, 5] {
            assert_eq!(a[i].get_version_num(), 7);
            assert_ne!(a[i], b[i]);
        }
    }

    #[test]
    fn single_object_and_array_decode_alike() {
        let item = json!({"event_name": "signed_up", "user_id": "u1", "message_id": ID,
                          "timestamp": "2024-05-01T10:00:00Z"});
        let single = run(Call::Track, &item.to_string());
        let array = run(Call::Track, &json!([item]).to_string());
        assert_eq!(single, array);
        assert_eq!(single.events.len(), 1);

        let batch = run(
            Call::Track,
            r#"[{"event_name": "a", "user_id": "u1"}, {"event_name": "b", "user_id": "u2"}]"#,
        );
        let names: Vec<_> = batch.events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn anonymous_visitor_with_empty_user_id_and_device_id_is_valid() {
        let event = one(
            Call::Track,
            r#"[{"event_name": "element_click", "user_id": "",
                 "context": {"device_id": "d1", "session_id": "s1", "source": "marketing"}}]"#,
        );
        assert_eq!(event.user_id, None);
        assert_eq!(event.device_id.as_deref(), Some("d1"));
        assert_eq!(event.session_id.as_deref(), Some("s1"));
        assert_eq!(event.context["source"], "marketing");

        let session_only = one(
            Call::Track,
            r#"{"event_name": "a", "context": {"session_id": "s1"}}"#,
        );
        assert_eq!(session_only.session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn accepts_top_level_ids_and_numeric_ids() {
        let event = one(
            Call::Track,
            r#"{"event_name": "a", "anonymous_id": "anon", "session_id": "s9", "group_id": 12}"#,
        );
        assert_eq!(event.device_id.as_deref(), Some("anon"));
        assert_eq!(event.session_id.as_deref(), Some("s9"));
        assert_eq!(event.group_id.as_deref(), Some("12"));

        let event = one(
            Call::Track,
            r#"{"event_name": "a", "device_id": "d2", "anonymous_id": "anon"}"#,
        );
        assert_eq!(event.device_id.as_deref(), Some("d2"));

        let event = one(
            Call::Track,
            r#"{"event_name": "a", "device_id": "top", "context": {"device_id": "ctx"}}"#,
        );
        assert_eq!(event.device_id.as_deref(), Some("ctx"));

        let event = one(Call::Identify, r#"{"user_id": 42}"#);
        assert_eq!(event.user_id.as_deref(), Some("42"));
    }

    #[test]
    fn currency_defaults_to_usd_only_with_revenue() {
        let props = |body: &str| one(Call::Track, body).properties;
        let with_currency = props(
            r#"{"event_name": "a", "user_id": "u", "properties": {"revenue": 5, "currency": "EUR"}}"#,
        );
        assert_eq!(with_currency["currency"], "EUR");
        let without_revenue =
            props(r#"{"event_name": "a", "user_id": "u", "properties": {"value": 5}}"#);
        assert!(!without_revenue.contains_key("currency"));
        let null_currency = props(
            r#"{"event_name": "a", "user_id": "u", "properties": {"revenue": 5, "currency": null}}"#,
        );
        assert_eq!(null_currency["currency"], "USD");
    }

    #[test]
    fn null_optional_fields_are_absent() {
        let event = one(
            Call::Track,
            r#"{"event_name": "a", "user_id": "u", "properties": null, "context": null,
                "timestamp": null, "message_id": null}"#,
        );
        assert!(event.properties.is_empty());
        assert_eq!(event.context, server_context());
        assert_eq!(event.timestamp, NOW);
    }

    /// Each bad item, between two good ones, is rejected with its index, field and message
    /// while the good ones are kept.
    #[test]
    fn bad_items_are_rejected_precisely_and_others_kept() {
        let good = json!({"event_name": "ok", "user_id": "u1", "group_id": "g1"});
        let cases: &[(Call, Value, &str, &str)] = &[
            (
                Call::Track,
                json!("hello"),
                "",
                "an event must be a JSON object, found a string",
            ),
            (
                Call::Track,
                json!([1]),
                "",
                "an event must be a JSON object, found an array",
            ),
            (
                Call::Track,
                json!({"user_id": "u1"}),
                "event_name",
                "`event_name` is required",
            ),
            (
                Call::Track,
                json!({"event_name": "", "user_id": "u1"}),
                "event_name",
                "`event_name` must not be empty",
            ),
            (
                Call::Track,
                json!({"event_name": 5, "user_id": "u1"}),
                "event_name",
                "`event_name` must be a string, found a number",
            ),
            (
                Call::Page,
                json!({"event_name": true, "user_id": "u1"}),
                "event_name",
                "`event_name` must be a string, found a boolean",
            ),
            (
                Call::Track,
                json!({"event_name": "a", "user_id": "u1", "properties": [1]}),
                "properties",
                "`properties` must be an object, found an array",
            ),
            (
                Call::Identify,
                json!({"user_id": "u1", "traits": "pro"}),
                "traits",
                "`traits` must be an object, found a string",
            ),
            (
                Call::Track,
                json!({"event_name": "a", "user_id": "u1", "context": 3}),
                "context",
                "`context` must be an object, found a number",
            ),
            (
                Call::Track,
                json!({"event_name": "a", "user_id": {"id": 1}}),
                "user_id",
                "`user_id` must be a string or a number, found an object",
            ),
            (
                Call::Track,
                json!({"event_name": "a", "context": {"device_id": true}}),
                "context.device_id",
                "`context.device_id` must be a string or a number, found a boolean",
            ),
            (
                Call::Track,
                json!({"event_name": "a", "user_id": "", "context": {}}),
                "user_id",
                "an event needs a `user_id`, or a `context.device_id` or `context.session_id` \
              for an anonymous visitor",
            ),
            (
                Call::Page,
                json!({"user_id": ""}),
                "user_id",
                "an event needs a `user_id`, or a `context.device_id` or `context.session_id` \
              for an anonymous visitor",
            ),
            (
                Call::Identify,
                json!({"context": {"device_id": "d1"}}),
                "user_id",
                "`user_id` is required for identify",
            ),
            (
                Call::Identify,
                json!({"user_id": ""}),
                "user_id",
                "`user_id` is required for identify",
            ),
            (
                Call::Group,
                json!({"user_id": "u1"}),
                "group_id",
                "`group_id` is required for group",
            ),
            (
                Call::Group,
                json!({"group_id": ["g"]}),
                "group_id",
                "`group_id` must be a string or a number, found an array",
            ),
            (
                Call::Track,
                json!({"event_name": "a", "user_id": "u1", "timestamp": "yesterday"}),
                "timestamp",
                "`timestamp` \"yesterday\" is not an ISO 8601 date-time \
              (like 2024-05-01T12:00:00Z) or epoch milliseconds",
            ),
            (
                Call::Track,
                json!({"event_name": "a", "user_id": "u1", "timestamp": true}),
                "timestamp",
                "`timestamp` must be an ISO 8601 string or epoch milliseconds, found a boolean",
            ),
            (
                Call::Track,
                json!({"event_name": "a", "user_id": "u1", "timestamp": 1e300}),
                "timestamp",
                "`timestamp` 1e+300 is out of range",
            ),
        ];
        for (call, bad, field, message) in cases {
            let body = json!([good, bad, good]).to_string();
            let decoded = run(*call, &body);
            assert_eq!(
                decoded.rejected,
                vec![ItemError {
                    index: 1,
                    field: field.to_string(),
                    message: message.to_string()
                }],
                "body: {body}"
            );
            assert_eq!(decoded.events.len(), 2, "body: {body}");
        }
    }

    fn timestamp_of(value: Value, limits: &Limits) -> Result<i64, Vec<ItemError>> {
        let body = json!({"event_name": "a", "user_id": "u1", "timestamp": value}).to_string();
        let mut decoded = decode(Call::Track, body.as_bytes(), &meta(), limits).unwrap();
        match decoded.events.pop() {
            Some(event) => Ok(event.timestamp),
            None => Err(decoded.rejected),
        }
    }

    #[test]
    fn timestamp_formats() {
        let limits = Limits::default();
        let ts = |v: Value| timestamp_of(v, &limits).unwrap();
        let ten = NOW - 2 * HOUR; // 2024-05-01T10:00:00Z
        assert_eq!(ts(json!("2024-05-01T10:00:00Z")), ten);
        assert_eq!(ts(json!("2024-05-01T10:00:00.250Z")), ten + 250_000);
        assert_eq!(ts(json!("2024-05-01T12:00:00+02:00")), ten);
        assert_eq!(ts(json!("2024-05-01T05:30:00-04:30")), ten);
        assert_eq!(ts(json!("2024-05-01T10:00:00")), ten);
        assert_eq!(ts(json!("2024-05-01T10:00:00.123456")), ten + 123_456);
        assert_eq!(ts(json!(1_714_557_600_000_i64)), ten);
        assert_eq!(ts(json!(1_714_557_600_000.5)), ten + 500);
        assert_eq!(ts(Value::Null), NOW);
        assert!(timestamp_of(json!("2024-05-01"), &limits).is_err());
        assert!(timestamp_of(json!("2024-13-01T10:00:00Z"), &limits).is_err());
        assert!(timestamp_of(json!(i64::MAX), &limits).is_err());
    }

    #[test]
    fn future_timestamps_are_clamped_to_received_at() {
        let limits = Limits::default();
        let ts = |v: Value| timestamp_of(v, &limits).unwrap();
        let millis = |micros: i64| json!(micros / 1000);
        // Up to 23 h ahead is a plausible clock skew and kept.
        assert_eq!(ts(millis(NOW + 23 * HOUR)), NOW + 23 * HOUR);
        assert_eq!(ts(millis(NOW + 23 * HOUR + 1000)), NOW);
        assert_eq!(ts(json!("2030-01-01T00:00:00Z")), NOW);
        // The past is never clamped.
        assert_eq!(ts(json!("2001-01-01T00:00:00Z")), 978_307_200_000_000);

        let strict = Limits {
            max_future_skew_s: 60,
            ..Limits::default()
        };
        assert_eq!(
            timestamp_of(millis(NOW + 60_000_000), &strict),
            Ok(NOW + 60_000_000)
        );
        assert_eq!(timestamp_of(millis(NOW + 61_000_000), &strict), Ok(NOW));
    }

    #[test]
    fn whole_request_errors() {
        assert_eq!(
            err(Call::Track, b"[{\"event_name\": \"caf\xc3\xa9\xff\"}]"),
            DecodeError::InvalidUtf8 { offset: 22 }
        );
        assert_eq!(err(Call::Track, b""), DecodeError::EmptyBody);
        assert_eq!(err(Call::Track, b" \n\t"), DecodeError::EmptyBody);
        assert_eq!(err(Call::Track, b"[]"), DecodeError::EmptyBatch);
        assert_eq!(
            err(Call::Track, b"\"hi\""),
            DecodeError::NotArrayOrObject { found: "a string" }
        );
        assert_eq!(
            err(Call::Track, b"null"),
            DecodeError::NotArrayOrObject { found: "null" }
        );
        assert_eq!(
            err(Call::Track, b"[{\"event_name\": \"a\"},\n {\"user_id\": }]"),
            DecodeError::MalformedJson {
                line: 2,
                column: 14,
                reason: "expected value".into()
            }
        );
        assert_eq!(
            err(Call::Track, b"[{\"a\": 1}] x"),
            DecodeError::MalformedJson {
                line: 1,
                column: 12,
                reason: "trailing characters".into()
            }
        );
        // A byte-order mark is not an error.
        let bom = b"\xef\xbb\xbf{\"event_name\": \"a\", \"user_id\": \"u\"}";
        assert_eq!(
            decode(Call::Track, bom, &meta(), &Limits::default())
                .unwrap()
                .events
                .len(),
            1
        );
    }

    #[test]
    fn error_messages_say_what_and_where() {
        let text = |body: &[u8]| err(Call::Track, body).to_string();
        assert_eq!(
            text(b"[\xff]"),
            "request body is not valid UTF-8: invalid byte sequence at byte offset 1"
        );
        assert_eq!(
            text(b"[{\"a\": }]"),
            "malformed JSON at line 1, column 8: expected value"
        );
        assert_eq!(
            text(b"42"),
            "request body must be a JSON array of event objects or a single event object, \
             found a number"
        );
        assert_eq!(
            text(b"[]"),
            "request body is an empty array: send at least one event"
        );
        assert_eq!(
            text(b"{\"properties\": {\"a\": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}}"),
            "item 0: `properties.a[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]` is nested \
             more than 16 levels deep"
        );
    }

    #[test]
    fn too_many_events() {
        let item = r#"{"event_name": "a", "user_id": "u"}"#;
        let body = |n: usize| format!("[{}]", vec![item; n].join(","));
        assert_eq!(run(Call::Track, &body(1000)).events.len(), 1000);
        let e = err(Call::Track, body(1001).as_bytes());
        assert_eq!(
            e,
            DecodeError::TooManyEvents {
                count: 1001,
                max: 1000
            }
        );
        assert_eq!(
            e.to_string(),
            "too many events: the request has 1001, the limit is 1000"
        );
    }

    #[test]
    fn nesting_depth_limit() {
        // `properties` is depth 1, so 15 more levels reach the limit of 16.
        let nested = |levels: usize| {
            let mut value = json!(1);
            for _ in 0..levels {
                value = json!({"n": value});
            }
            value
        };
        let item = |props: Value| json!({"event_name": "a", "user_id": "u", "properties": props});
        let ok = run(Call::Track, &json!([item(nested(16))]).to_string());
        assert_eq!(ok.events.len(), 1);

        let body = json!([item(json!({})), item(nested(17))]).to_string();
        let expected = DecodeError::TooDeep {
            index: 1,
            path: format!("properties{}", ".n".repeat(16)),
            max: 16,
        };
        assert_eq!(err(Call::Track, body.as_bytes()), expected);

        // Context and traits count too, and arrays as much as objects.
        let body = json!({"user_id": "u", "context": {"page": [[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]}});
        assert_eq!(
            err(Call::Identify, body.to_string().as_bytes()),
            DecodeError::TooDeep {
                index: 0,
                path: format!("context.page{}", "[0]".repeat(15)),
                max: 16
            }
        );
    }

    #[test]
    fn bodies_too_deep_to_parse_are_a_clear_error_not_a_crash() {
        let unclosed = "[".repeat(100_000);
        assert_eq!(
            err(Call::Track, unclosed.as_bytes()),
            DecodeError::TooDeep {
                index: 0,
                path: "[0]".repeat(17),
                max: 16
            }
        );

        let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            err(Call::Track, closed.as_bytes()),
            DecodeError::TooDeep { index: 0, .. }
        ));

        let objects = format!(
            r#"[{{"event_name": "a", "user_id": "u"}}, {{"properties": {}1"#,
            r#"{"k": "#.repeat(100_000)
        );
        assert_eq!(
            err(Call::Track, objects.as_bytes()),
            DecodeError::TooDeep {
                index: 1,
                path: format!("properties{}", ".k".repeat(16)),
                max: 16
            }
        );

        // Past the parser's own limit, with a limit configured above what it can parse.
        let limits = Limits {
            max_depth: 1000,
            ..Limits::default()
        };
        let deep = format!("{{\"properties\": {}}}", "[".repeat(200));
        assert_eq!(
            decode(Call::Track, deep.as_bytes(), &meta(), &limits).unwrap_err(),
            DecodeError::TooDeep {
                index: 0,
                path: format!("properties{}", "[0]".repeat(100)),
                max: 100
            }
        );
    }
}
