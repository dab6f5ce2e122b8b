//! Segment's HTTP Tracking API, also spoken by RudderStack and Jitsu clients:
//! `POST /v1/track|identify|page|screen|group|alias|batch`.
//!
//! A single call's body is one call object (an array of them is accepted too); a batch
//! is `{"batch": [...], "context": {...}, "integrations": {...}, "sentAt": ..., "writeKey": ...}`
//! whose items each carry a `type`. The batch's `context` is merged into each item's
//! (the item's keys win); `integrations` is routing advice for Segment's destinations
//! and is dropped.

use serde_json::{Map, Value};
use tally_model::{Event, EventType};

use crate::item::{
    accepted_time, agree, correct_skew, event_uuid, fill_context, first_id, id, key_field,
    not_a_string, sent_at, string, timestamp, Reject,
};
use crate::json::{json_len, parse_body, take_object, type_name, Body, Shape};
use crate::{DecodeError, Decoded, ItemError, RequestMeta, SegmentLimits};

/// Which endpoint a body was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentCall {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
    Batch,
}

impl SegmentCall {
    /// The call a batch item's `type` names (also the last part of its route,
    /// `/v1/track`...; the batch route itself is not a type).
    pub fn of_type(name: &str) -> Option<SegmentCall> {
        let call = match name.to_ascii_lowercase().as_str() {
            "track" => SegmentCall::Track,
            "identify" => SegmentCall::Identify,
            "page" => SegmentCall::Page,
            "screen" => SegmentCall::Screen,
            "group" => SegmentCall::Group,
            "alias" => SegmentCall::Alias,
            _ => return None,
        };
        Some(call)
    }
}

/// A decoded Segment request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentDecoded {
    /// The write key the request carries: the Basic-auth user name, else the body's
    /// `writeKey` (the batch's, else the items', which must then agree). `None` when
    /// there is none: the server answers 401.
    pub write_key: Option<String>,
    pub decoded: Decoded,
}

/// Namespace for event ids derived from non-UUID `messageId`s.
const UUID_NAMESPACE: &str = "segment";

/// Decodes one Segment request body. `basic_auth_user` is the user name of the request's
/// `Authorization: Basic` header, if any. Whole-request problems are an error; a bad item
/// is listed in [`Decoded::rejected`] and the other items are still decoded.
pub fn decode(
    call: SegmentCall,
    body: &[u8],
    basic_auth_user: Option<&str>,
    meta: &RequestMeta,
    limits: &SegmentLimits,
) -> Result<SegmentDecoded, DecodeError> {
    if body.len() > limits.max_batch_bytes {
        return Err(DecodeError::BodyTooLarge {
            size: body.len(),
            max: limits.max_batch_bytes,
        });
    }
    let batch_key = (call == SegmentCall::Batch).then_some("batch");
    let Body { items, shape } = parse_body(body, batch_key, &limits.base())?;
    let envelope = match shape {
        Shape::Envelope(envelope) => envelope,
        Shape::Object if call == SegmentCall::Batch => {
            return Err(DecodeError::BatchNotArray {
                found: "no `batch` field",
            })
        }
        Shape::Object | Shape::Array => Map::new(),
    };
    let shared_context = match envelope.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::Object(context)) => Some(context),
        Some(other) => {
            return Err(DecodeError::InvalidField {
                field: "context".into(),
                message: format!(
                    "the batch's `context` must be an object, found {}",
                    type_name(other)
                ),
            })
        }
    };
    let write_key = write_key(basic_auth_user, &envelope, &items)?;
    let batch_sent_at = sent_at(&envelope, &["sentAt"]);

    let mut decoded = Decoded::default();
    for (index, item) in items.into_iter().enumerate() {
        match decode_item(call, item, shared_context, batch_sent_at, meta, limits) {
            Ok(event) => decoded.events.push(event),
            Err((field, message)) => decoded.rejected.push(ItemError {
                index,
                field: field.to_owned(),
                message,
            }),
        }
    }
    Ok(SegmentDecoded { write_key, decoded })
}

/// The Basic-auth user name wins: it is what Segment's server libraries send, and the
/// body is then not consulted.
fn write_key(
    basic_auth_user: Option<&str>,
    envelope: &Map<String, Value>,
    items: &[Value],
) -> Result<Option<String>, DecodeError> {
    if let Some(user) = basic_auth_user.filter(|user| !user.is_empty()) {
        return Ok(Some(user.to_owned()));
    }
    if let Some(key) = key_field(envelope, "writeKey", "writeKey", None)? {
        return Ok(Some(key));
    }
    let mut found = None;
    for (index, item) in items.iter().enumerate() {
        if let Value::Object(item) = item {
            if let Some(key) = key_field(item, "writeKey", "writeKey", Some(index))? {
                agree(&mut found, key)?;
            }
        }
    }
    Ok(found)
}

fn decode_item(
    call: SegmentCall,
    item: Value,
    shared_context: Option<&Map<String, Value>>,
    batch_sent_at: Option<i64>,
    meta: &RequestMeta,
    limits: &SegmentLimits,
) -> Result<Event, Reject> {
    if !item.is_object() {
        return Err((
            "",
            format!("an event must be a JSON object, found {}", type_name(&item)),
        ));
    }
    let size = json_len(&item);
    if size > limits.max_event_bytes {
        return Err((
            "",
            format!(
                "the event is {size} bytes as JSON, over the limit of {} bytes",
                limits.max_event_bytes
            ),
        ));
    }
    let Value::Object(mut item) = item else {
        unreachable!("checked above")
    };
    let call = match call {
        SegmentCall::Batch => batch_item_call(&item)?,
        call => call,
    };

    let mut context = take_object(&mut item, "context").map_err(|m| ("context", m))?;
    if let Some(shared) = shared_context {
        for (key, value) in shared {
            context.entry(key).or_insert_with(|| value.clone());
        }
    }
    let mut properties = take_object(&mut item, "properties").map_err(|m| ("properties", m))?;

    let user_id = id(&item, "userId", "userId")?;
    let device_id = id(&item, "anonymousId", "anonymousId")?;
    if user_id.is_none() && device_id.is_none() {
        return Err((
            "userId",
            "a call needs a `userId` or an `anonymousId`".into(),
        ));
    }
    let session_id = first_id(&[
        (&context, "session_id", "context.session_id"),
        (&context, "sessionId", "context.sessionId"),
        (&properties, "session_id", "properties.session_id"),
        (&properties, "sessionId", "properties.sessionId"),
    ])?;
    let group_id = match call {
        SegmentCall::Group => match id(&item, "groupId", "groupId")? {
            Some(group_id) => Some(group_id),
            None => return Err(("groupId", "`groupId` is required for group".into())),
        },
        _ => first_id(&[
            (&context, "groupId", "context.groupId"),
            (&context, "group_id", "context.group_id"),
        ])?,
    };
    let previous_id = match call {
        SegmentCall::Alias => {
            if user_id.is_none() {
                return Err(("userId", "`userId` is required for alias".into()));
            }
            match id(&item, "previousId", "previousId")? {
                Some(previous_id) => Some(previous_id),
                None => return Err(("previousId", "`previousId` is required for alias".into())),
            }
        }
        _ => None,
    };

    let (kind, event) = match call {
        SegmentCall::Track => (EventType::Track, track_name(&item)?),
        SegmentCall::Page => (
            EventType::Page,
            view_name(&item, &mut properties, "page_visit")?,
        ),
        SegmentCall::Screen => (
            EventType::Screen,
            view_name(&item, &mut properties, "screen_view")?,
        ),
        SegmentCall::Identify => (EventType::Identify, "$identify".to_owned()),
        SegmentCall::Group => (EventType::Group, "$group".to_owned()),
        SegmentCall::Alias => (EventType::Alias, "$alias".to_owned()),
        SegmentCall::Batch => unreachable!("batch items name their own call"),
    };

    let traits = match call {
        SegmentCall::Identify | SegmentCall::Group => {
            let traits = take_object(&mut item, "traits").map_err(|m| ("traits", m))?;
            // Some clients send identify traits only in `context.traits`.
            match context.get("traits") {
                Some(Value::Object(in_context)) if traits.is_empty() => in_context.clone(),
                _ => traits,
            }
        }
        _ => Map::new(),
    };
    let properties = match call {
        SegmentCall::Track | SegmentCall::Page | SegmentCall::Screen => properties,
        _ => Map::new(),
    };

    let timestamp = event_time(&item, batch_sent_at, meta)?;
    let timestamp = accepted_time(timestamp, meta, limits.max_future_skew_s)?;
    fill_context(&mut context, meta, &["user_agent", "userAgent"]);

    Ok(Event {
        uuid: event_uuid(item.get("messageId"), UUID_NAMESPACE),
        kind,
        event,
        user_id,
        device_id,
        session_id,
        group_id,
        previous_id,
        timestamp,
        received_at: meta.received_at,
        properties,
        traits,
        context,
    })
}

fn batch_item_call(item: &Map<String, Value>) -> Result<SegmentCall, Reject> {
    const TYPES: &str = "track, identify, page, screen, group, alias";
    match string(item, "type", "type")? {
        None => Err((
            "type",
            format!("`type` is required in a batch item: one of {TYPES}"),
        )),
        Some(name) => SegmentCall::of_type(&name).ok_or_else(|| {
            (
                "type",
                format!("`type` must be one of {TYPES}, found {name:?}"),
            )
        }),
    }
}

fn track_name(item: &Map<String, Value>) -> Result<String, Reject> {
    match item.get("event") {
        None | Some(Value::Null) => Err(("event", "`event` is required for track".into())),
        Some(Value::String(name)) if name.trim().is_empty() => {
            Err(("event", "`event` must not be empty".into()))
        }
        Some(Value::String(name)) => Ok(name.clone()),
        Some(other) => Err(("event", not_a_string("event", other))),
    }
}

/// A page or screen call's event name: its `name`, else `default`. `name` and
/// `category` are also copied into the properties, where reports look for them.
fn view_name(
    item: &Map<String, Value>,
    properties: &mut Map<String, Value>,
    default: &str,
) -> Result<String, Reject> {
    let name = string(item, "name", "name")?.filter(|name| !name.trim().is_empty());
    for key in ["name", "category"] {
        if let Some(value) = item.get(key).filter(|value| !value.is_null()) {
            properties.entry(key).or_insert_with(|| value.clone());
        }
    }
    Ok(name.unwrap_or_else(|| default.to_owned()))
}

/// When the event happened, on the server's clock. With a send time (`sentAt`: the
/// item's, else the batch's), the client clock's offset is removed:
/// `received_at - (sentAt - timestamp)`. Without one the client's `timestamp` is taken
/// as is. `originalTimestamp` stands in for a missing `timestamp`.
fn event_time(
    item: &Map<String, Value>,
    batch_sent_at: Option<i64>,
    meta: &RequestMeta,
) -> Result<i64, Reject> {
    let sent = sent_at(item, &["sentAt"]).or(batch_sent_at);
    for field in ["timestamp", "originalTimestamp"] {
        if let Some(t) = timestamp(item, field, field)? {
            return match sent {
                Some(sent) => correct_skew(t, sent, meta, field),
                None => Ok(t),
            };
        }
    }
    Ok(meta.received_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use serde_json::json;
    use uuid::Uuid;

    fn run_with(
        call: SegmentCall,
        body: &str,
        user: Option<&str>,
        limits: &SegmentLimits,
    ) -> Result<SegmentDecoded, DecodeError> {
        decode(call, body.as_bytes(), user, &meta(), limits)
    }

    fn run(call: SegmentCall, body: &Value) -> SegmentDecoded {
        run_with(call, &body.to_string(), None, &SegmentLimits::default()).unwrap()
    }

    fn one(call: SegmentCall, body: Value) -> Event {
        let mut decoded = run(call, &body).decoded;
        assert_eq!(decoded.rejected, vec![], "body: {body}");
        assert_eq!(decoded.events.len(), 1);
        decoded.events.remove(0)
    }

    #[test]
    fn track_maps_every_field() {
        let event = one(
            SegmentCall::Track,
            json!({
                "type": "track",
                "event": "Order Completed",
                "userId": "u1",
                "anonymousId": "a1",
                "messageId": ID,
                "properties": {"revenue": 49.5, "sessionId": "s-prop"},
                "context": {"groupId": "acme", "session_id": "s1",
                            "library": {"name": "analytics.js", "version": "2.11.1"}},
                "integrations": {"All": true},
                "timestamp": "2024-05-01T11:00:00Z",
                "writeKey": "wk",
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Track,
            event: "Order Completed".into(),
            user_id: Some("u1".into()),
            device_id: Some("a1".into()),
            // The context's id comes before the properties'.
            session_id: Some("s1".into()),
            group_id: Some("acme".into()),
            previous_id: None,
            timestamp: NOW - HOUR,
            received_at: NOW,
            properties: map(json!({"revenue": 49.5, "sessionId": "s-prop"})),
            traits: Map::new(),
            // `integrations` is dropped; the connection's ip and user agent are added.
            context: map(json!({
                "groupId": "acme", "session_id": "s1",
                "library": {"name": "analytics.js", "version": "2.11.1"},
                "ip": "203.0.113.7", "user_agent": "Mozilla/5.0",
            })),
        };
        assert_eq!(event, expected);
    }

    #[test]
    fn page_maps_every_field_and_defaults_its_name() {
        let event = one(
            SegmentCall::Page,
            json!({
                "anonymousId": "a1",
                "messageId": ID,
                "name": "Pricing",
                "category": "Docs",
                "properties": {"url": "https://a.co/pricing", "path": "/pricing",
                               "category": "Own"},
                "context": {"ip": "198.51.100.1", "userAgent": "Safari"},
                "timestamp": "2024-05-01T11:00:00Z",
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Page,
            event: "Pricing".into(),
            user_id: None,
            device_id: Some("a1".into()),
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: NOW - HOUR,
            received_at: NOW,
            // `name` is copied in; the properties' own `category` wins.
            properties: map(json!({"url": "https://a.co/pricing", "path": "/pricing",
                                   "category": "Own", "name": "Pricing"})),
            traits: Map::new(),
            // The call's own ip and user agent win over the connection's.
            context: map(json!({"ip": "198.51.100.1", "userAgent": "Safari"})),
        };
        assert_eq!(event, expected);
        assert_eq!(event.page_path().as_deref(), Some("/pricing"));

        let unnamed = one(SegmentCall::Page, json!({"userId": "u1", "name": " "}));
        assert_eq!(unnamed.event, "page_visit");
        assert_eq!(unnamed.properties, map(json!({"name": " "})));
    }

    #[test]
    fn screen_maps_every_field_and_defaults_its_name() {
        let event = one(
            SegmentCall::Screen,
            json!({
                "userId": "u1",
                "messageId": ID,
                "properties": {"variation": "blue"},
                "context": {"sessionId": 1714564000},
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Screen,
            event: "screen_view".into(),
            user_id: Some("u1".into()),
            device_id: None,
            session_id: Some("1714564000".into()),
            group_id: None,
            previous_id: None,
            timestamp: NOW,
            received_at: NOW,
            properties: map(json!({"variation": "blue"})),
            traits: Map::new(),
            context: map(json!({"sessionId": 1714564000, "ip": "203.0.113.7",
                                "user_agent": "Mozilla/5.0"})),
        };
        assert_eq!(event, expected);
        let named = one(SegmentCall::Screen, json!({"userId": "u1", "name": "Home"}));
        assert_eq!(named.event, "Home");
        assert_eq!(named.properties, map(json!({"name": "Home"})));
    }

    #[test]
    fn identify_maps_every_field() {
        let event = one(
            SegmentCall::Identify,
            json!({
                "userId": "u1",
                "anonymousId": "a1",
                "messageId": ID,
                "traits": {"email": "a@b.co", "plan": "pro"},
                "properties": {"ignored": true},
                "context": {"group_id": "acme"},
                "timestamp": 1_714_561_200_000_i64,
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Identify,
            event: "$identify".into(),
            user_id: Some("u1".into()),
            device_id: Some("a1".into()),
            session_id: None,
            group_id: Some("acme".into()),
            previous_id: None,
            timestamp: NOW - HOUR,
            received_at: NOW,
            properties: Map::new(),
            traits: map(json!({"email": "a@b.co", "plan": "pro"})),
            context: map(json!({"group_id": "acme", "ip": "203.0.113.7",
                                "user_agent": "Mozilla/5.0"})),
        };
        assert_eq!(event, expected);

        // Traits sent only in the context are used.
        let event = one(
            SegmentCall::Identify,
            json!({"userId": "u1", "context": {"traits": {"plan": "free"}}}),
        );
        assert_eq!(event.traits, map(json!({"plan": "free"})));
    }

    #[test]
    fn group_maps_every_field() {
        let event = one(
            SegmentCall::Group,
            json!({
                "userId": "u1",
                "groupId": "acme",
                "messageId": ID,
                "traits": {"name": "Acme", "employees": 40},
                "context": {"groupId": "ignored-for-group-calls"},
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Group,
            event: "$group".into(),
            user_id: Some("u1".into()),
            device_id: None,
            session_id: None,
            group_id: Some("acme".into()),
            previous_id: None,
            timestamp: NOW,
            received_at: NOW,
            properties: Map::new(),
            traits: map(json!({"name": "Acme", "employees": 40})),
            context: map(
                json!({"groupId": "ignored-for-group-calls", "ip": "203.0.113.7",
                                "user_agent": "Mozilla/5.0"}),
            ),
        };
        assert_eq!(event, expected);
    }

    #[test]
    fn alias_maps_every_field() {
        let event = one(
            SegmentCall::Alias,
            json!({
                "userId": "u1",
                "previousId": "a1",
                "messageId": ID,
                "traits": {"ignored": true},
                "properties": {"ignored": true},
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Alias,
            event: "$alias".into(),
            user_id: Some("u1".into()),
            device_id: None,
            session_id: None,
            group_id: None,
            previous_id: Some("a1".into()),
            timestamp: NOW,
            received_at: NOW,
            properties: Map::new(),
            traits: Map::new(),
            context: map(json!({"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"})),
        };
        assert_eq!(event, expected);
    }

    #[test]
    fn batch_items_name_their_call() {
        let decoded = run(
            SegmentCall::Batch,
            &json!({"batch": [
                {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
                {"type": "track", "userId": "u1", "event": "Signed Up"},
                {"type": "Page", "userId": "u1"},
                {"type": "screen", "userId": "u1"},
                {"type": "group", "userId": "u1", "groupId": "g1"},
                {"type": "alias", "userId": "u1", "previousId": "a1"},
            ]}),
        )
        .decoded;
        assert_eq!(decoded.rejected, vec![]);
        let names: Vec<_> = decoded
            .events
            .iter()
            .map(|e| (e.kind, e.event.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (EventType::Identify, "$identify"),
                (EventType::Track, "Signed Up"),
                (EventType::Page, "page_visit"),
                (EventType::Screen, "screen_view"),
                (EventType::Group, "$group"),
                (EventType::Alias, "$alias"),
            ]
        );
        // A single call's body may also be an array of calls of that type.
        let decoded = run(
            SegmentCall::Track,
            &json!([{"userId": "u1", "event": "a"}, {"userId": "u2", "event": "b"}]),
        );
        assert_eq!(decoded.decoded.events.len(), 2);
        // So may a batch's.
        let decoded = run(
            SegmentCall::Batch,
            &json!([{"type": "track", "userId": "u1", "event": "a"}]),
        );
        assert_eq!(decoded.decoded.events.len(), 1);
    }

    #[test]
    fn write_key_from_basic_auth_else_body() {
        let key = |call, body: Value, user: Option<&str>| {
            run_with(call, &body.to_string(), user, &SegmentLimits::default()).map(|d| d.write_key)
        };
        let track = json!({"userId": "u1", "event": "a", "writeKey": "body"});
        assert_eq!(
            key(SegmentCall::Track, track.clone(), Some("basic")),
            Ok(Some("basic".into()))
        );
        assert_eq!(
            key(SegmentCall::Track, track.clone(), None),
            Ok(Some("body".into()))
        );
        // An empty user name (some clients send `:` alone) is no key.
        assert_eq!(
            key(SegmentCall::Track, track, Some("")),
            Ok(Some("body".into()))
        );
        assert_eq!(
            key(
                SegmentCall::Track,
                json!({"userId": "u1", "event": "a"}),
                None
            ),
            Ok(None)
        );
        let item = json!({"type": "track", "userId": "u1", "event": "a"});
        assert_eq!(
            key(
                SegmentCall::Batch,
                json!({"batch": [item], "writeKey": "top"}),
                None
            ),
            Ok(Some("top".into()))
        );
        let with_key = |k: &str| {
            let mut item = item.clone();
            item["writeKey"] = json!(k);
            item
        };
        assert_eq!(
            key(
                SegmentCall::Batch,
                json!({"batch": [with_key("i"), item, with_key("i")]}),
                None
            ),
            Ok(Some("i".into()))
        );
        // The top-level key wins over the items'; the Basic-auth user over both.
        assert_eq!(
            key(
                SegmentCall::Batch,
                json!({"batch": [with_key("i")], "writeKey": "top"}),
                None
            ),
            Ok(Some("top".into()))
        );
        assert_eq!(
            key(
                SegmentCall::Batch,
                json!({"batch": [with_key("i"), with_key("j")]}),
                Some("basic")
            ),
            Ok(Some("basic".into()))
        );
        assert_eq!(
            key(
                SegmentCall::Batch,
                json!({"batch": [with_key("i"), with_key("j")]}),
                None
            ),
            Err(DecodeError::MixedKeys {
                first: "i".into(),
                second: "j".into()
            })
        );
        let err = key(
            SegmentCall::Track,
            json!({"userId": "u1", "event": "a", "writeKey": 5}),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "item 0: `writeKey` must be a string holding the project key, found a number"
        );
    }

    /// Each bad item, between two good ones, is rejected with its index, field and
    /// message while the good ones are kept.
    #[test]
    fn required_fields_per_call() {
        let cases: &[(Value, &str, &str)] = &[
            (
                json!({"type": "track", "event": "a"}),
                "userId",
                "a call needs a `userId` or an `anonymousId`",
            ),
            (
                json!({"type": "track", "userId": "", "anonymousId": null, "event": "a"}),
                "userId",
                "a call needs a `userId` or an `anonymousId`",
            ),
            (
                json!({"type": "track", "userId": "u1"}),
                "event",
                "`event` is required for track",
            ),
            (
                json!({"type": "track", "userId": "u1", "event": " "}),
                "event",
                "`event` must not be empty",
            ),
            (
                json!({"type": "track", "userId": "u1", "event": 3}),
                "event",
                "`event` must be a string, found a number",
            ),
            (
                json!({"type": "group", "userId": "u1"}),
                "groupId",
                "`groupId` is required for group",
            ),
            (
                json!({"type": "alias", "userId": "u1"}),
                "previousId",
                "`previousId` is required for alias",
            ),
            (
                json!({"type": "alias", "anonymousId": "a1", "previousId": "p"}),
                "userId",
                "`userId` is required for alias",
            ),
            (
                json!({"userId": "u1", "event": "a"}),
                "type",
                "`type` is required in a batch item: one of track, identify, page, screen, \
                 group, alias",
            ),
            (
                json!({"type": "batch", "userId": "u1"}),
                "type",
                "`type` must be one of track, identify, page, screen, group, alias, found \
                 \"batch\"",
            ),
            (
                json!({"type": "page", "userId": "u1", "name": ["x"]}),
                "name",
                "`name` must be a string, found an array",
            ),
            (
                json!({"type": "identify", "userId": "u1", "traits": "pro"}),
                "traits",
                "`traits` must be an object, found a string",
            ),
            (
                json!({"type": "track", "userId": {"id": 1}, "event": "a"}),
                "userId",
                "`userId` must be a string or a number, found an object",
            ),
            (
                json!({"type": "track", "userId": "u1", "event": "a", "timestamp": "soon"}),
                "timestamp",
                "`timestamp` \"soon\" is not an ISO 8601 date-time (like \
                 2024-05-01T12:00:00Z) or epoch milliseconds",
            ),
            (
                json!(7),
                "",
                "an event must be a JSON object, found a number",
            ),
        ];
        let good = json!({"type": "track", "userId": "u1", "event": "ok"});
        for (bad, field, message) in cases {
            let body = json!({"batch": [good, bad, good]});
            let decoded = run(SegmentCall::Batch, &body).decoded;
            assert_eq!(
                decoded.rejected,
                vec![ItemError {
                    index: 1,
                    field: field.to_string(),
                    message: message.to_string(),
                }],
                "body: {body}"
            );
            assert_eq!(decoded.events.len(), 2, "body: {body}");
        }
    }

    #[test]
    fn batch_context_merges_into_each_item() {
        let decoded = run(
            SegmentCall::Batch,
            &json!({
                "batch": [
                    {"type": "track", "userId": "u1", "event": "a",
                     "context": {"ip": "198.51.100.1", "locale": "fr-FR"}},
                    {"type": "track", "userId": "u2", "event": "b"},
                ],
                "context": {"library": {"name": "analytics-python", "version": "2.3.0"},
                            "locale": "en-US", "groupId": "acme"},
                "integrations": {"Amplitude": false},
            }),
        )
        .decoded;
        assert_eq!(decoded.rejected, vec![]);
        let library = json!({"name": "analytics-python", "version": "2.3.0"});
        assert_eq!(
            decoded.events[0].context,
            map(
                json!({"ip": "198.51.100.1", "locale": "fr-FR", "library": library,
                       "groupId": "acme", "user_agent": "Mozilla/5.0"})
            )
        );
        assert_eq!(
            decoded.events[1].context,
            map(
                json!({"locale": "en-US", "library": library, "groupId": "acme",
                       "ip": "203.0.113.7", "user_agent": "Mozilla/5.0"})
            )
        );
        // The shared context's ids count like the item's own.
        assert_eq!(decoded.events[1].group_id.as_deref(), Some("acme"));

        let err = run_with(
            SegmentCall::Batch,
            r#"{"batch": [{"type": "track", "userId": "u", "event": "a"}], "context": []}"#,
            None,
            &SegmentLimits::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            DecodeError::InvalidField {
                field: "context".into(),
                message: "the batch's `context` must be an object, found an array".into()
            }
        );
    }

    /// An item of `len` bytes as compact JSON.
    fn item_of_len(len: usize) -> Value {
        let mut item = json!({"type": "track", "userId": "u1", "event": "a",
                              "properties": {"pad": ""}});
        let pad = len - json_len(&item);
        item["properties"]["pad"] = json!("x".repeat(pad));
        assert_eq!(json_len(&item), len);
        item
    }

    #[test]
    fn event_size_limit_rejects_only_that_item() {
        let small = json!({"type": "track", "userId": "u1", "event": "a"});
        let body =
            json!({"batch": [small, item_of_len(32 * 1024), item_of_len(32 * 1024 + 1), small]});
        let decoded = run(SegmentCall::Batch, &body).decoded;
        assert_eq!(decoded.events.len(), 3);
        assert_eq!(
            decoded.rejected,
            vec![ItemError {
                index: 2,
                field: "".into(),
                message: "the event is 32769 bytes as JSON, over the limit of 32768 bytes".into()
            }]
        );
        // Whitespace the sender added does not count.
        let spaced = serde_json::to_string_pretty(&item_of_len(32 * 1024)).unwrap();
        assert!(spaced.len() > 32 * 1024);
        let decoded = run_with(SegmentCall::Track, &spaced, None, &SegmentLimits::default())
            .unwrap()
            .decoded;
        assert_eq!((decoded.events.len(), decoded.rejected.len()), (1, 0));
    }

    #[test]
    fn batch_size_limit_refuses_the_request() {
        let max = 500 * 1024;
        let body_of_len = |len: usize| {
            let body =
                json!({"batch": [{"type": "track", "userId": "u1", "event": "a"}]}).to_string();
            format!("{body}{}", " ".repeat(len - body.len()))
        };
        let ok = run_with(
            SegmentCall::Batch,
            &body_of_len(max),
            None,
            &SegmentLimits::default(),
        )
        .unwrap();
        assert_eq!(ok.decoded.events.len(), 1);
        let err = run_with(
            SegmentCall::Batch,
            &body_of_len(max + 1),
            None,
            &SegmentLimits::default(),
        )
        .unwrap_err();
        assert_eq!(err, DecodeError::BodyTooLarge { size: max + 1, max });
        assert_eq!(
            err.to_string(),
            "request body is 512001 bytes, over the limit of 512000 bytes"
        );
        // The limit holds for single calls too.
        let err = run_with(
            SegmentCall::Track,
            &body_of_len(max + 1),
            None,
            &SegmentLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::BodyTooLarge { .. }));
    }

    #[test]
    fn message_ids_give_stable_event_ids() {
        let body = json!({"batch": [
            {"type": "track", "userId": "u1", "event": "a",
             "messageId": "ajs-next-4f1d3ad5c6a8e0f2b7c9d1e3f5a7b9c1"},
            {"type": "track", "userId": "u1", "event": "a",
             "messageId": "ajs-next-4f1d3ad5c6a8e0f2b7c9d1e3f5a7b9c2"},
            {"type": "track", "userId": "u1", "event": "a", "messageId": ID},
            {"type": "track", "userId": "u1", "event": "a"},
            {"type": "track", "userId": "u1", "event": "a", "messageId": ""},
        ]});
        let first = run(SegmentCall::Batch, &body).decoded.events;
        let retry = run(SegmentCall::Batch, &body).decoded.events;
        // A retried request yields the same ids for its non-UUID message ids.
        assert_eq!(first[0].uuid, retry[0].uuid);
        assert_eq!(first[0].uuid.get_version_num(), 8);
        assert_ne!(first[0].uuid, first[1].uuid);
        assert_eq!(first[1].uuid, retry[1].uuid);
        // A UUID message id is the event id.
        assert_eq!(first[2].uuid, Uuid::parse_str(ID).unwrap());
        // Without one, each delivery gets a new time-ordered id.
        for i in [3, 4] {
            assert_eq!(first[i].uuid.get_version_num(), 7);
            assert_ne!(first[i].uuid, retry[i].uuid);
        }
    }

    fn timestamp_of(item: Value, batch_sent_at: Option<&str>) -> Result<i64, Vec<ItemError>> {
        let mut item = item;
        item["type"] = json!("track");
        item["userId"] = json!("u1");
        item["event"] = json!("a");
        let mut body = json!({"batch": [item]});
        if let Some(sent_at) = batch_sent_at {
            body["sentAt"] = json!(sent_at);
        }
        let mut decoded = run(SegmentCall::Batch, &body).decoded;
        match decoded.events.pop() {
            Some(event) => Ok(event.timestamp),
            None => Err(decoded.rejected),
        }
    }

    #[test]
    fn clock_skew_correction() {
        let ts = |item: Value, batch: Option<&str>| timestamp_of(item, batch).unwrap();
        // The client's clock is 2 days and 1 h fast; the event happened 5.25 s before
        // the client sent it, so it is stored 5.25 s before the server received it.
        let skewed = json!({"timestamp": "2024-05-03T13:00:00.000Z",
                            "sentAt": "2024-05-03T13:00:05.250Z"});
        assert_eq!(ts(skewed.clone(), None), NOW - 5_250_000);
        // The batch's `sentAt` stands in for the item's; the item's wins.
        assert_eq!(
            ts(
                json!({"timestamp": "2024-05-01T09:00:00Z"}),
                Some("2024-05-01T09:00:01Z")
            ),
            NOW - SECOND
        );
        assert_eq!(ts(skewed, Some("2024-05-01T09:00:01Z")), NOW - 5_250_000);
        // `originalTimestamp` is corrected the same way when `timestamp` is missing.
        assert_eq!(
            ts(
                json!({"originalTimestamp": "2024-05-01T10:00:00.000001Z",
                       "sentAt": "2024-05-01T10:00:02Z"}),
                None
            ),
            NOW - 2 * SECOND + 1
        );
        // Without a send time the client's time is taken as is.
        assert_eq!(
            ts(json!({"timestamp": "2024-05-01T10:00:00Z"}), None),
            NOW - 2 * HOUR
        );
        assert_eq!(
            ts(json!({"originalTimestamp": "2024-05-01T10:00:00Z"}), None),
            NOW - 2 * HOUR
        );
        // Without any time, the time received; an unreadable `sentAt` is ignored.
        assert_eq!(ts(json!({}), Some("2024-05-01T10:00:00Z")), NOW);
        assert_eq!(
            ts(
                json!({"timestamp": "2024-05-01T10:00:00Z", "sentAt": "later"}),
                None
            ),
            NOW - 2 * HOUR
        );
        // Uncorrectable future times are clamped: 23 h ahead is kept, more is not.
        assert_eq!(
            ts(json!({"timestamp": "2024-05-02T11:00:00Z"}), None),
            NOW + 23 * HOUR
        );
        assert_eq!(ts(json!({"timestamp": "2024-05-02T11:00:01Z"}), None), NOW);
        // A send time earlier than the event moves it into the future: clamped too.
        assert_eq!(
            ts(
                json!({"timestamp": "2024-05-03T00:00:00Z", "sentAt": "2024-05-01T00:00:00Z"}),
                None
            ),
            NOW
        );
    }

    #[test]
    fn whole_request_errors() {
        let err =
            |call, body: &str| run_with(call, body, None, &SegmentLimits::default()).unwrap_err();
        assert_eq!(
            err(
                SegmentCall::Batch,
                r#"{"type": "track", "userId": "u", "event": "a"}"#
            ),
            DecodeError::BatchNotArray {
                found: "no `batch` field"
            }
        );
        assert_eq!(
            err(SegmentCall::Batch, r#"{"batch": {"type": "track"}}"#).to_string(),
            "`batch` must be a JSON array of events, found an object"
        );
        assert_eq!(
            err(SegmentCall::Batch, r#"{"batch": []}"#),
            DecodeError::EmptyBatch
        );
        assert_eq!(err(SegmentCall::Track, ""), DecodeError::EmptyBody);
        assert!(matches!(
            err(SegmentCall::Track, "{"),
            DecodeError::MalformedJson { .. }
        ));
        let limits = SegmentLimits {
            max_events: 2,
            ..SegmentLimits::default()
        };
        let item = r#"{"type": "track", "userId": "u", "event": "a"}"#;
        assert_eq!(
            run_with(
                SegmentCall::Batch,
                &format!(r#"{{"batch": [{item}, {item}, {item}]}}"#),
                None,
                &limits
            )
            .unwrap_err(),
            DecodeError::TooManyEvents { count: 3, max: 2 }
        );
    }
}
