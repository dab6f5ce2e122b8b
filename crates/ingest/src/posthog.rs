//! PostHog's capture API: `/e`, `/i/v0/e`, `/capture`, `/track`, `/engage` and
//! `/batch`, by GET or POST, with or without a trailing slash.
//!
//! The events reach us wrapped in up to three layers, peeled in this order:
//!
//! 1. Where: the `data` query parameter (GET, and some POSTs), a form body's `data`
//!    field (`application/x-www-form-urlencoded`, or a body starting with `data=`), or
//!    the body itself (`application/json`, and `text/plain` from `sendBeacon`). The
//!    body's `Content-Encoding` is undone first ([`crate::decode_content`]: gzip, also
//!    by its magic bytes 1f 8b when the header is missing, deflate and br).
//! 2. How: gzip (`compression=gzip-js` in the query or form, or the magic bytes) and
//!    base64 (`compression=base64`, or a payload that is not JSON but decodes as base64,
//!    standard or URL-safe, padded or not, into JSON or gzip). Each is undone at most
//!    once, in whichever order the payload needs, and gzip output is bounded by
//!    [`PostHogLimits::max_decompressed_bytes`].
//! 3. What: a single event, an array of events, or `{"batch": [...], "api_key": ...}`.
//!
//! Event names are kept as sent (`$pageview`, `$identify`, custom names); the name picks
//! the [`EventType`]: `$pageview` → page, `$screen` → screen, `$identify` and `$set` →
//! identify, `$groupidentify` → group, `$create_alias` → alias, anything else → track.

use std::borrow::Cow;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use serde_json::map::Entry;
use serde_json::{Map, Value};
use tally_model::{Event, EventType};

use crate::content::{decode_content, gunzip, GZIP_MAGIC};
use crate::item::{
    accepted_time, agree, correct_skew, event_object, event_uuid, fill_context, first_id, id,
    key_field, sent_at, string, timestamp, Reject,
};
use crate::json::{
    looks_like_json, parse_body, take_object, take_object_at, type_name, Body, Shape,
};
use crate::{DecodeError, Decoded, ItemError, PostHogLimits, RequestMeta};

/// The parts of a capture request the decoder reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostHogRequest<'a> {
    /// The route: `/e`, `/i/v0/e`, `/capture`, `/track`, `/engage` or `/batch`, with or
    /// without a trailing slash. Only `/batch` (larger body limit) and `/engage` (events
    /// without a name) are told apart; anything else is read like `/e`.
    pub path: &'a str,
    pub method_is_get: bool,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub body: &'a [u8],
}

/// A decoded capture request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PostHogDecoded {
    /// The project token the request carries (see [`decode`]); `None` when there is
    /// none: the server answers 401.
    pub token: Option<String>,
    pub decoded: Decoded,
    /// `beacon=1` in the query: the sender (`navigator.sendBeacon`) ignores the answer,
    /// so the server answers 204 without a body.
    pub beacon: bool,
}

/// Namespace for event ids derived from non-UUID `uuid`s.
const UUID_NAMESPACE: &str = "posthog";

/// Decodes one capture request.
///
/// The token is the batch's `api_key` or `token`, else each event's `token`, `$token`,
/// `api_key` or `properties.token`; events that carry different tokens refuse the
/// request. Whole-request problems are an error; a bad event is listed in
/// [`Decoded::rejected`] and the other events are still decoded.
pub fn decode(
    req: &PostHogRequest<'_>,
    meta: &RequestMeta,
    limits: &PostHogLimits,
) -> Result<PostHogDecoded, DecodeError> {
    let route = Route::of(req.path);
    let query = Query::parse(req.query.unwrap_or(""));
    let payload = payload(req, &query, route, limits)?;

    let Body { items, shape } = parse_body(&payload, Some("batch"), &limits.base())?;
    let envelope = match shape {
        Shape::Envelope(envelope) => envelope,
        Shape::Object | Shape::Array => Map::new(),
    };
    let token = token(&envelope, &items)?;
    let batch_sent_at = sent_at(&envelope, &["sent_at", "sentAt"]).or(query.sent_at);

    let mut decoded = Decoded::default();
    for (index, item) in items.into_iter().enumerate() {
        match decode_item(route, item, batch_sent_at, meta, limits) {
            Ok(event) => decoded.events.push(event),
            Err((field, message)) => decoded.rejected.push(ItemError {
                index,
                field: field.to_owned(),
                message,
            }),
        }
    }
    Ok(PostHogDecoded {
        token,
        decoded,
        beacon: query.beacon,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Event,
    Engage,
    Batch,
}

impl Route {
    fn of(path: &str) -> Route {
        let path = path.trim_end_matches('/');
        if path.ends_with("/batch") {
            Route::Batch
        } else if path.ends_with("/engage") {
            Route::Engage
        } else {
            Route::Event
        }
    }
}

/// What the query string says about the payload.
#[derive(Debug, Default)]
struct Query {
    data: Option<String>,
    compression: Option<String>,
    beacon: bool,
    /// posthog-js sends its clock at send time as `_=<epoch ms>`.
    sent_at: Option<i64>,
}

impl Query {
    fn parse(query: &str) -> Query {
        let mut parsed = Query::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "data" => parsed.data = Some(value.into_owned()),
                "compression" => parsed.compression = Some(value.into_owned()),
                "beacon" => parsed.beacon = value == "1",
                "_" | "sent_at" => parsed.sent_at = query_sent_at(&value),
                _ => {}
            }
        }
        parsed
    }
}

/// Epoch milliseconds; like PostHog, values before 2021 are taken for seconds sent by
/// old SDKs and ignored.
fn query_sent_at(value: &str) -> Option<i64> {
    const START_OF_2021_MS: i64 = 1_609_459_200_000;
    let ms: i64 = value.trim().parse().ok()?;
    (ms >= START_OF_2021_MS)
        .then(|| ms.checked_mul(1000))
        .flatten()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Base64,
}

impl Compression {
    fn of(hint: Option<&str>) -> Result<Compression, DecodeError> {
        let Some(hint) = hint else {
            return Ok(Compression::None);
        };
        match hint.trim().to_ascii_lowercase().as_str() {
            "gzip" | "gzip-js" => Ok(Compression::Gzip),
            "base64" | "b64" => Ok(Compression::Base64),
            "lz64" | "lz-string" => Err(DecodeError::UnsupportedCompression {
                name: hint.to_owned(),
            }),
            // PostHog ignores hints it does not know; the payload's shape decides.
            _ => Ok(Compression::None),
        }
    }
}

const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// Finds the JSON text of the events, undoing every layer of encoding (module docs).
fn payload<'a>(
    req: &PostHogRequest<'a>,
    query: &Query,
    route: Route,
    limits: &PostHogLimits,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let max = match route {
        Route::Batch => limits.max_batch_body_bytes,
        Route::Event | Route::Engage => limits.max_body_bytes,
    };
    let too_large = |size: usize| DecodeError::BodyTooLarge { size, max };
    if req.body.len() > max {
        return Err(too_large(req.body.len()));
    }

    let mut gunzipped = false;
    let mut form_compression = None;
    let payload: Cow<'a, [u8]> = match query.data.as_deref().filter(|d| !d.is_empty()) {
        Some(data) => {
            if data.len() > max {
                return Err(too_large(data.len()));
            }
            Cow::Owned(restore_plus(data).into_bytes())
        }
        // A GET's body has no meaning; its events are in `?data=`.
        None if req.method_is_get => return Err(DecodeError::EmptyBody),
        None => {
            let body = decode_content(
                req.body,
                req.content_encoding,
                limits.max_decompressed_bytes,
            )?;
            gunzipped = matches!(body, Cow::Owned(_));
            if is_form(req.content_type, &body) {
                let mut data = None;
                for (key, value) in form_urlencoded::parse(&body) {
                    match &*key {
                        "data" => data = Some(value.into_owned()),
                        "compression" => form_compression = Some(value.into_owned()),
                        _ => {}
                    }
                }
                let data = data.ok_or(DecodeError::MissingFormData)?;
                Cow::Owned(restore_plus(&data).into_bytes())
            } else {
                body
            }
        }
    };
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::EmptyBody);
    }
    let compression =
        Compression::of(form_compression.as_deref().or(query.compression.as_deref()))?;
    unwrap(
        payload,
        compression,
        gunzipped,
        limits.max_decompressed_bytes,
    )
}

fn is_form(content_type: Option<&str>, body: &[u8]) -> bool {
    let declared = content_type
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(FORM_TYPE));
    // Some clients label JSON as a form; the body's first byte tells.
    (declared && !looks_like_json(body)) || body.starts_with(b"data=")
}

/// A `data` value that is not JSON is base64, whose `+` the URL decoding turned into
/// spaces; put them back. JSON keeps its spaces.
fn restore_plus(data: &str) -> String {
    if looks_like_json(data.as_bytes()) {
        data.to_owned()
    } else {
        data.replace(' ', "+")
    }
}

/// Peels base64 and gzip, each at most once, until the payload looks like JSON.
fn unwrap(
    mut payload: Cow<'_, [u8]>,
    compression: Compression,
    mut gunzipped: bool,
    max_decompressed: usize,
) -> Result<Cow<'_, [u8]>, DecodeError> {
    let mut base64_done = false;
    loop {
        if !gunzipped && payload.starts_with(&GZIP_MAGIC) {
            payload = Cow::Owned(gunzip(&payload, max_decompressed)?);
            gunzipped = true;
            continue;
        }
        if looks_like_json(&payload) {
            return Ok(payload);
        }
        let hinted = compression == Compression::Base64;
        if !base64_done && (hinted || looks_like_base64(&payload)) {
            match decode_base64(&payload) {
                // A guess is kept only when it yields something we can read, so a body
                // that is simply not JSON is reported as such.
                Ok(decoded)
                    if hinted || looks_like_json(&decoded) || decoded.starts_with(&GZIP_MAGIC) =>
                {
                    payload = Cow::Owned(decoded);
                    base64_done = true;
                    continue;
                }
                Err(reason) if hinted => return Err(DecodeError::InvalidBase64 { reason }),
                _ => {}
            }
        }
        if compression == Compression::Gzip && !gunzipped {
            return Err(DecodeError::InvalidGzip {
                reason: "the payload is marked gzip-js but does not start with the gzip \
                         magic bytes 1f 8b"
                    .into(),
            });
        }
        return Ok(payload);
    }
}

fn looks_like_base64(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| !b.is_ascii_whitespace())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/-_=".contains(b) || b.is_ascii_whitespace())
}

/// Decodes standard or URL-safe base64, padded or not, ignoring line breaks.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, String> {
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(&compact)
        .or_else(|e| URL_SAFE.decode(&compact).map_err(|_| e.to_string()))
}

/// Reads the request's token (see [`decode`]).
fn token(envelope: &Map<String, Value>, items: &[Value]) -> Result<Option<String>, DecodeError> {
    for key in ["api_key", "token"] {
        if let Some(token) = key_field(envelope, key, key, None)? {
            return Ok(Some(token));
        }
    }
    let mut found = None;
    for (index, item) in items.iter().enumerate() {
        let Value::Object(item) = item else { continue };
        let mut token = None;
        for key in ["token", "$token", "api_key"] {
            token = token.or(key_field(item, key, key, Some(index))?);
        }
        if let Some(Value::Object(properties)) = item.get("properties") {
            token = token.or(key_field(
                properties,
                "token",
                "properties.token",
                Some(index),
            )?);
        }
        if let Some(token) = token {
            agree(&mut found, token)?;
        }
    }
    Ok(found)
}

fn decode_item(
    route: Route,
    item: Value,
    batch_sent_at: Option<i64>,
    meta: &RequestMeta,
    limits: &PostHogLimits,
) -> Result<Event, Reject> {
    let mut item = event_object(item)?;
    let mut properties = take_object(&mut item, "properties").map_err(|m| ("properties", m))?;

    let event = match string(&item, "event", "event")? {
        Some(name) if name.trim().is_empty() => {
            return Err(("event", "`event` must not be empty".into()))
        }
        Some(name) => name,
        // `/engage` carries person updates (`$set`...) without a name; PostHog records
        // them as `$identify`.
        None if route == Route::Engage => "$identify".to_owned(),
        None => return Err(("event", "`event` is required".into())),
    };
    let distinct_id = first_id(&[
        (&item, "distinct_id", "distinct_id"),
        (&item, "$distinct_id", "$distinct_id"),
        (&properties, "distinct_id", "properties.distinct_id"),
    ])?
    .ok_or_else(|| {
        (
            "distinct_id",
            "`distinct_id` is required (also read from `$distinct_id` and \
             `properties.distinct_id`)"
                .to_owned(),
        )
    })?;

    // Person updates may sit at the top level (posthog-js) or in the properties
    // (server SDKs); gather them in the properties, the top level winning per key.
    merge_into_properties(&mut item, &mut properties, "$set", "properties.$set")?;
    merge_into_properties(
        &mut item,
        &mut properties,
        "$set_once",
        "properties.$set_once",
    )?;

    let device_property = id(&properties, "$device_id", "properties.$device_id")?;
    let session_id = id(&properties, "$session_id", "properties.$session_id")?;
    let mut traits = Map::new();
    let mut previous_id = None;
    let mut group_id = first_group(&properties);
    let (kind, user_id, device_id) = match event.as_str() {
        // `$set` is the server SDKs' person update without an identify.
        "$identify" | "$set" => {
            traits = take_object_at(&mut properties, "$set", "properties.$set")
                .map_err(|m| ("properties.$set", m))?;
            let anonymous = first_id(&[
                (
                    &properties,
                    "$anon_distinct_id",
                    "properties.$anon_distinct_id",
                ),
                (&item, "$anon_distinct_id", "$anon_distinct_id"),
            ])?;
            (
                EventType::Identify,
                Some(distinct_id),
                anonymous.or(device_property),
            )
        }
        "$create_alias" => {
            previous_id = Some(
                id(&properties, "alias", "properties.alias")?.ok_or_else(|| {
                    (
                        "properties.alias",
                        "`properties.alias` is required for $create_alias".to_owned(),
                    )
                })?,
            );
            (EventType::Alias, Some(distinct_id), device_property)
        }
        "$groupidentify" => {
            let key = id(&properties, "$group_key", "properties.$group_key")?.ok_or_else(|| {
                (
                    "properties.$group_key",
                    "`properties.$group_key` is required for $groupidentify".to_owned(),
                )
            })?;
            let group_type = string(&properties, "$group_type", "properties.$group_type")?;
            traits = take_object_at(&mut properties, "$group_set", "properties.$group_set")
                .map_err(|m| ("properties.$group_set", m))?;
            if let Some(group_type) = &group_type {
                traits
                    .entry("group_type")
                    .or_insert_with(|| group_type.clone().into());
            }
            // Server SDKs send group updates as the made-up person `$<type>_<key>`.
            let synthetic = group_type.is_some_and(|t| distinct_id == format!("${t}_{key}"));
            group_id = Some(key);
            let (user_id, device_id) = if synthetic {
                (None, device_property)
            } else {
                person(distinct_id, device_property, &properties)
            };
            (EventType::Group, user_id, device_id)
        }
        name => {
            let kind = match name {
                "$pageview" => EventType::Page,
                "$screen" => EventType::Screen,
                _ => EventType::Track,
            };
            let (user_id, device_id) = person(distinct_id, device_property, &properties);
            (kind, user_id, device_id)
        }
    };

    let timestamp = event_time(&item, batch_sent_at, meta)?;
    let timestamp = accepted_time(timestamp, meta, limits.max_future_skew_s)?;

    // Tally's reports read `page_url`/`page_path`/`page_referrer`; posthog-js names them
    // `$current_url`/`$pathname`/`$referrer`.
    for (ours, theirs) in [
        ("page_url", "$current_url"),
        ("page_path", "$pathname"),
        ("page_referrer", "$referrer"),
    ] {
        if let Some(Value::String(value)) = properties.get(theirs) {
            let value = value.clone();
            properties.entry(ours).or_insert(value.into());
        }
    }

    let mut context = Map::new();
    if let Some(Value::String(ip)) = properties.get("$ip") {
        context.insert("ip".into(), ip.clone().into());
    }
    fill_context(&mut context, meta, &["user_agent"]);

    Ok(Event {
        uuid: event_uuid(item.get("uuid"), UUID_NAMESPACE),
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

/// Splits a distinct id into a user id or a device id. posthog-js uses an anonymous id
/// (equal to `$device_id`, with `$is_identified: false`) until `identify`: such an id
/// is the device's, not a user's. Otherwise the distinct id is the user's, and
/// `$device_id` the device's.
fn person(
    distinct_id: String,
    device_property: Option<String>,
    properties: &Map<String, Value>,
) -> (Option<String>, Option<String>) {
    let anonymous = properties.get("$is_identified") == Some(&Value::Bool(false))
        || device_property.as_deref() == Some(distinct_id.as_str());
    if anonymous {
        (None, Some(distinct_id))
    } else {
        (Some(distinct_id), device_property)
    }
}

/// The event's group: the first value of `$groups` (`{"company": "acme"}`), in key order.
fn first_group(properties: &Map<String, Value>) -> Option<String> {
    match properties.get("$groups") {
        Some(Value::Object(groups)) => groups.values().find_map(|value| match value {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }),
        _ => None,
    }
}

fn merge_into_properties(
    item: &mut Map<String, Value>,
    properties: &mut Map<String, Value>,
    key: &'static str,
    field: &'static str,
) -> Result<(), Reject> {
    let top = take_object(item, key).map_err(|m| (key, m))?;
    if top.is_empty() {
        return Ok(());
    }
    match properties.entry(key) {
        Entry::Vacant(entry) => {
            entry.insert(Value::Object(top));
        }
        Entry::Occupied(mut entry) => match entry.get_mut() {
            Value::Object(inner) => inner.extend(top),
            Value::Null => *entry.get_mut() = Value::Object(top),
            other => {
                return Err((
                    field,
                    format!("`{field}` must be an object, found {}", type_name(other)),
                ))
            }
        },
    }
    Ok(())
}

/// When the event happened, on the server's clock. `offset` (milliseconds before the
/// send) wins: `received_at - offset`. Else the client's `timestamp`, moved by the
/// client clock's error when the send time is known (the event's `sent_at`, else the
/// batch's, else the query's `_`): `received_at - (sent_at - timestamp)`. Else the time
/// received.
fn event_time(
    item: &Map<String, Value>,
    batch_sent_at: Option<i64>,
    meta: &RequestMeta,
) -> Result<i64, Reject> {
    if let Some(offset) = item.get("offset").filter(|offset| !offset.is_null()) {
        let micros = offset
            .as_i64()
            .and_then(|ms| ms.checked_mul(1000))
            .or_else(|| offset.as_f64().map(|ms| (ms * 1000.0).round() as i64))
            .ok_or_else(|| {
                (
                    "offset",
                    format!(
                        "`offset` must be a number of milliseconds, found {}",
                        type_name(offset)
                    ),
                )
            })?;
        return correct_skew(0, micros, meta, "offset");
    }
    match timestamp(item, "timestamp", "timestamp")? {
        Some(t) => match sent_at(item, &["sent_at", "sentAt"]).or(batch_sent_at) {
            Some(sent) => correct_skew(t, sent, meta, "timestamp"),
            None => Ok(t),
        },
        None => Ok(meta.received_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use flate2::write::GzEncoder;
    use serde_json::json;
    use std::io::Write;
    use std::time::{Duration, Instant};
    use uuid::Uuid;

    fn post<'a>(path: &'a str, body: &'a [u8]) -> PostHogRequest<'a> {
        PostHogRequest {
            path,
            body,
            content_type: Some("application/json"),
            ..PostHogRequest::default()
        }
    }

    fn run(req: &PostHogRequest<'_>) -> Result<PostHogDecoded, DecodeError> {
        decode(req, &meta(), &PostHogLimits::default())
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    /// Two posthog-js style events with the token in their properties.
    fn events() -> Value {
        json!([
            {"event": "$pageview", "uuid": ID,
             "properties": {"token": "phc_x", "distinct_id": "d1", "$device_id": "d1",
                            "$current_url": "https://a.co/docs?x=1"}},
            // Five `~` put a `+` in the base64 whatever their alignment.
            {"event": "clicked", "properties": {"token": "phc_x", "distinct_id": "u1",
                                                "text": "~~~~~"}},
        ])
    }

    /// Asserts the request decoded to [`events`].
    fn assert_events(decoded: Result<PostHogDecoded, DecodeError>, how: &str) {
        let decoded = decoded.unwrap_or_else(|e| panic!("{how}: {e}"));
        assert_eq!(decoded.token.as_deref(), Some("phc_x"), "{how}");
        assert_eq!(decoded.decoded.rejected, vec![], "{how}");
        let names: Vec<_> = decoded
            .decoded
            .events
            .iter()
            .map(|e| e.event.as_str())
            .collect();
        assert_eq!(names, ["$pageview", "clicked"], "{how}");
    }

    #[test]
    fn raw_json_on_every_route() {
        let body = events().to_string();
        for path in [
            "/e",
            "/e/",
            "/i/v0/e",
            "/i/v0/e/",
            "/capture",
            "/capture/",
            "/track",
            "/track/",
            "/engage/",
            "/batch",
            "/batch/",
        ] {
            assert_events(run(&post(path, body.as_bytes())), path);
        }
        // `text/plain` (sendBeacon) and no content type at all are read the same way.
        for content_type in [Some("text/plain;charset=UTF-8"), None] {
            let req = PostHogRequest {
                content_type,
                ..post("/e/", body.as_bytes())
            };
            assert_events(run(&req), &format!("{content_type:?}"));
        }
    }

    #[test]
    fn gzip_by_magic_bytes_by_hint_and_by_header() {
        let body = gzip(events().to_string().as_bytes());
        assert_events(run(&post("/e/", &body)), "magic bytes only");
        let hinted = PostHogRequest {
            query: Some("compression=gzip-js&ip=1&_=1714564800000&ver=1.130.0"),
            content_type: Some("text/plain"),
            ..post("/e/", &body)
        };
        assert_events(run(&hinted), "compression=gzip-js");
        let header = PostHogRequest {
            content_encoding: Some("gzip"),
            ..post("/batch/", &body)
        };
        assert_events(run(&header), "Content-Encoding: gzip");
        // A gzipped form body.
        let form = format!("data={}", STANDARD.encode(events().to_string()));
        let form = gzip(form.as_bytes());
        let gz_form = PostHogRequest {
            content_type: Some(FORM_TYPE),
            content_encoding: Some("gzip"),
            ..post("/e/", &form)
        };
        assert_events(run(&gz_form), "gzipped form");
        // base64 of gzip, and gzip of base64.
        let b64_of_gz = STANDARD.encode(&body);
        assert_events(run(&post("/e/", b64_of_gz.as_bytes())), "base64(gzip)");
        let gz_of_b64 = gzip(STANDARD.encode(events().to_string()).as_bytes());
        assert_events(run(&post("/e/", &gz_of_b64)), "gzip(base64)");
    }

    #[test]
    fn base64_standard_url_safe_padded_or_not() {
        // Chosen so its base64 has `+`, `/` and padding.
        let text = json!([{"event": "a>b?c~", "distinct_id": "u~1>>", "token": "phc_x",
                           "properties": {"k": "ÿþ?"}}])
        .to_string();
        let standard = STANDARD.encode(&text);
        assert!(standard.contains('+') && standard.contains('/') && standard.ends_with('='));
        let unpadded = standard.trim_end_matches('=').to_owned();
        let url_safe = URL_SAFE_NO_PAD.encode(&text);
        let url_safe_padded = base64::engine::general_purpose::URL_SAFE.encode(&text);
        let wrapped: String = standard
            .as_bytes()
            .chunks(76)
            .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
            .collect();
        for (how, body) in [
            ("standard", &standard),
            ("unpadded", &unpadded),
            ("url-safe", &url_safe),
            ("url-safe padded", &url_safe_padded),
            ("line-wrapped", &wrapped),
        ] {
            for query in [None, Some("compression=base64")] {
                let req = PostHogRequest {
                    query,
                    ..post("/e/", body.as_bytes())
                };
                let decoded = run(&req).unwrap_or_else(|e| panic!("{how} {query:?}: {e}"));
                assert_eq!(decoded.decoded.events.len(), 1, "{how} {query:?}");
                assert_eq!(decoded.decoded.events[0].event, "a>b?c~", "{how} {query:?}");
                assert_eq!(decoded.decoded.events[0].user_id.as_deref(), Some("u~1>>"));
            }
        }
    }

    #[test]
    fn form_bodies() {
        let text = events().to_string();
        let b64 = STANDARD.encode(&text);
        let encoded = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let cases = [
            // posthog-js: base64 in `data`, hinted, properly URL-encoded.
            (
                Some(FORM_TYPE),
                format!("data={}&compression=base64", encoded(&b64)),
            ),
            // The hint before the data, and a charset on the content type.
            (
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                format!("compression=base64&ver=1.2.3&data={}", encoded(&b64)),
            ),
            // `+` left unescaped by the sender: URL decoding turns it into a space.
            (Some(FORM_TYPE), format!("data={b64}")),
            // URL-encoded JSON.
            (Some(FORM_TYPE), format!("data={}", encoded(&text))),
            // No content type: the body's `data=` tells.
            (None, format!("data={}", encoded(&b64))),
            (Some("text/plain"), format!("data={}", encoded(&text))),
        ];
        assert!(b64.contains('+'), "the test needs a `+` to restore");
        for (content_type, body) in cases {
            let req = PostHogRequest {
                content_type,
                ..post("/e/", body.as_bytes())
            };
            assert_events(run(&req), &body);
        }
        // A form-labelled JSON body is read as JSON.
        let req = PostHogRequest {
            content_type: Some(FORM_TYPE),
            ..post("/e/", text.as_bytes())
        };
        assert_events(run(&req), "JSON labelled as a form");
        let req = PostHogRequest {
            content_type: Some(FORM_TYPE),
            ..post("/e/", b"compression=base64&ver=1")
        };
        assert_eq!(run(&req).unwrap_err(), DecodeError::MissingFormData);
    }

    #[test]
    fn get_with_data_in_the_query() {
        let text = events().to_string();
        let encoded = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let json_query = format!("data={}&ver=1.0", encoded(&text));
        let b64_query = format!(
            "data={}&compression=base64",
            encoded(&STANDARD.encode(&text))
        );
        let url_safe_query = format!("data={}", URL_SAFE_NO_PAD.encode(&text));
        for query in [&json_query, &b64_query, &url_safe_query] {
            let req = PostHogRequest {
                path: "/e/",
                method_is_get: true,
                query: Some(query),
                ..PostHogRequest::default()
            };
            assert_events(run(&req), query);
        }
        // POST with `?data=` too; the query wins over the body.
        let req = PostHogRequest {
            query: Some(&json_query),
            ..post("/e/", b"ignored")
        };
        assert_events(run(&req), "POST ?data=");
        let req = PostHogRequest {
            path: "/e/",
            method_is_get: true,
            query: Some("ver=1"),
            body: text.as_bytes(),
            ..PostHogRequest::default()
        };
        assert_eq!(run(&req).unwrap_err(), DecodeError::EmptyBody);
    }

    #[test]
    fn tokens() {
        let token =
            |body: Value| run(&post("/batch/", body.to_string().as_bytes())).map(|d| d.token);
        let event = |extra: Value| {
            let mut event = json!({"event": "e", "distinct_id": "u1"});
            for (k, v) in map(extra) {
                event[k] = v;
            }
            event
        };
        assert_eq!(
            token(json!({"api_key": "phc_batch", "batch": [event(json!({"token": "other"}))]})),
            Ok(Some("phc_batch".into()))
        );
        assert_eq!(
            token(json!({"token": "phc_batch", "batch": [event(json!({}))]})),
            Ok(Some("phc_batch".into()))
        );
        for (key, where_) in [
            ("token", json!({"token": "phc_e"})),
            ("$token", json!({"$token": "phc_e"})),
            ("api_key", json!({"api_key": "phc_e"})),
            (
                "properties.token",
                json!({"properties": {"token": "phc_e"}}),
            ),
        ] {
            // Per event, in an array, a batch without a token, and a single event.
            assert_eq!(
                token(json!([event(where_.clone()), event(where_.clone())])),
                Ok(Some("phc_e".into())),
                "{key}"
            );
            assert_eq!(
                token(json!({"batch": [event(where_.clone())]})),
                Ok(Some("phc_e".into())),
                "{key}"
            );
            assert_eq!(token(event(where_)), Ok(Some("phc_e".into())), "{key}");
        }
        // Events without a token do not disagree with those that have one.
        assert_eq!(
            token(json!([event(json!({})), event(json!({"token": "phc_e"}))])),
            Ok(Some("phc_e".into()))
        );
        assert_eq!(
            token(json!([
                event(json!({"token": "phc_a"})),
                event(json!({"properties": {"token": "phc_b"}}))
            ])),
            Err(DecodeError::MixedKeys {
                first: "phc_a".into(),
                second: "phc_b".into()
            })
        );
        assert_eq!(token(json!([event(json!({}))])), Ok(None));
        assert_eq!(
            token(json!({"api_key": "", "batch": [event(json!({}))]})),
            Ok(None)
        );
        assert_eq!(
            token(json!([event(json!({"token": 42}))]))
                .unwrap_err()
                .to_string(),
            "item 0: `token` must be a string holding the project key, found a number"
        );
        // A token is read even from an event that is then rejected.
        let decoded = run(&post(
            "/e/",
            json!([{"token": "phc_e", "distinct_id": "u1"}])
                .to_string()
                .as_bytes(),
        ))
        .unwrap();
        assert_eq!(decoded.token.as_deref(), Some("phc_e"));
        assert_eq!(decoded.decoded.rejected.len(), 1);
    }

    #[test]
    fn beacon_flag() {
        let body = events().to_string();
        for (query, beacon) in [
            (None, false),
            (Some("beacon=1"), true),
            (Some("ver=1&beacon=1&_=1714564800000"), true),
            (Some("beacon=0"), false),
            (Some("beacon=true"), false),
        ] {
            let req = PostHogRequest {
                query,
                ..post("/e/", body.as_bytes())
            };
            assert_eq!(run(&req).unwrap().beacon, beacon, "{query:?}");
        }
    }

    #[test]
    fn request_errors() {
        let err = |req: PostHogRequest<'_>| run(&req).unwrap_err();
        let b = events().to_string();
        let body = b.as_bytes();
        assert_eq!(
            err(PostHogRequest {
                query: Some("compression=lz64"),
                ..post("/e/", b"N4Ig")
            }),
            DecodeError::UnsupportedCompression {
                name: "lz64".into()
            }
        );
        assert_eq!(
            err(PostHogRequest {
                content_encoding: Some("zstd"),
                ..post("/e/", body)
            })
            .to_string(),
            "unsupported Content-Encoding `zstd`: send gzip, deflate, br or an uncompressed body"
        );
        assert_eq!(
            err(PostHogRequest {
                query: Some("compression=base64"),
                ..post("/e/", b"not*base64")
            })
            .to_string(),
            "request payload is marked base64 but is not valid base64: Invalid symbol 42, \
             offset 3."
        );
        assert!(matches!(
            err(PostHogRequest {
                query: Some("compression=gzip-js"),
                ..post("/e/", b"plain text")
            }),
            DecodeError::InvalidGzip { .. }
        ));
        let mut corrupt = gzip(body);
        let middle = corrupt.len() / 2;
        corrupt.truncate(middle);
        assert!(matches!(
            err(post("/e/", &corrupt)),
            DecodeError::InvalidGzip { .. }
        ));
        assert_eq!(err(post("/e/", b"")), DecodeError::EmptyBody);
        assert_eq!(err(post("/e/", b" \n")), DecodeError::EmptyBody);
        assert_eq!(
            err(PostHogRequest {
                content_type: Some(FORM_TYPE),
                ..post("/e/", b"data=")
            }),
            DecodeError::EmptyBody
        );
        // Not JSON, and not base64 of JSON: reported as the JSON it is not.
        assert!(matches!(
            err(post("/e/", b"hello")),
            DecodeError::MalformedJson { .. }
        ));
        assert_eq!(
            err(post("/e/", b"\"hi\"")),
            DecodeError::NotArrayOrObject { found: "a string" }
        );
        assert_eq!(
            err(post("/batch", br#"{"batch": "x", "api_key": "k"}"#)),
            DecodeError::BatchNotArray { found: "a string" }
        );
    }

    #[test]
    fn body_size_limits_depend_on_the_route() {
        let padded = |len: usize| {
            let body = events().to_string();
            format!("{body}{}", " ".repeat(len - body.len())).into_bytes()
        };
        let two_mib = 2 * 1024 * 1024;
        let twenty_mib = 20 * 1024 * 1024;
        assert_events(run(&post("/e/", &padded(two_mib))), "2 MiB on /e");
        for path in ["/e/", "/i/v0/e/", "/capture", "/track/", "/engage/"] {
            assert_eq!(
                run(&post(path, &padded(two_mib + 1))).unwrap_err(),
                DecodeError::BodyTooLarge {
                    size: two_mib + 1,
                    max: two_mib
                },
                "{path}"
            );
        }
        assert_events(run(&post("/batch/", &padded(two_mib + 1))), "/batch");
        assert_events(
            run(&post("/batch", &padded(twenty_mib))),
            "20 MiB on /batch",
        );
        assert_eq!(
            run(&post("/batch/", &padded(twenty_mib + 1))).unwrap_err(),
            DecodeError::BodyTooLarge {
                size: twenty_mib + 1,
                max: twenty_mib
            }
        );
        // `?data=` counts like a body.
        let data = format!("data={}", String::from_utf8(padded(two_mib + 1)).unwrap());
        let req = PostHogRequest {
            path: "/e",
            method_is_get: true,
            query: Some(&data),
            ..PostHogRequest::default()
        };
        assert!(matches!(
            run(&req).unwrap_err(),
            DecodeError::BodyTooLarge { .. }
        ));
    }

    /// 50 MB of zeros in 50 KB of gzip.
    fn gzip_bomb() -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..50 {
            encoder.write_all(&zeros).unwrap();
        }
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_bombs_are_refused_at_the_bound() {
        let bomb = gzip_bomb();
        assert!(bomb.len() < 512 * 1024, "{}", bomb.len());
        let limits = PostHogLimits {
            max_decompressed_bytes: 1024 * 1024,
            ..PostHogLimits::default()
        };
        let started = Instant::now();
        let err = decode(&post("/e/", &bomb), &meta(), &limits).unwrap_err();
        assert_eq!(err, DecodeError::DecompressedTooLarge { max: 1024 * 1024 });
        assert_eq!(
            err.to_string(),
            "decompressed request body is over the limit of 1048576 bytes"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The same with the default 20 MiB bound, by hint, and behind base64.
        let b64 = STANDARD.encode(&bomb);
        for req in [
            post("/batch/", &bomb),
            PostHogRequest {
                query: Some("compression=gzip-js"),
                ..post("/e/", &bomb)
            },
            post("/e/", b64.as_bytes()),
        ] {
            assert_eq!(
                run(&req).unwrap_err(),
                DecodeError::DecompressedTooLarge {
                    max: 20 * 1024 * 1024
                }
            );
        }
    }

    #[test]
    fn gunzip_never_holds_more_than_the_bound() {
        let data = vec![b'x'; 300_000];
        let gz = gzip(&data);
        let out = gunzip(&gz, 300_000).unwrap();
        assert_eq!(out, data);
        assert!(out.capacity() <= 300_000, "{}", out.capacity());
        assert_eq!(
            gunzip(&gz, 299_999).unwrap_err(),
            DecodeError::DecompressedTooLarge { max: 299_999 }
        );
    }

    fn one(path: &str, event: Value) -> Event {
        let decoded = run(&post(path, event.to_string().as_bytes())).unwrap();
        assert_eq!(decoded.decoded.rejected, vec![], "{event}");
        assert_eq!(decoded.decoded.events.len(), 1);
        decoded.decoded.events.into_iter().next().unwrap()
    }

    fn server_context() -> Map<String, Value> {
        map(json!({"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}))
    }

    #[test]
    fn pageview_maps_every_field() {
        let event = one(
            "/e/",
            json!({
                "event": "$pageview",
                "uuid": ID,
                "timestamp": "2024-05-01T11:00:00.000Z",
                "properties": {
                    "token": "phc_x", "distinct_id": "u1", "$device_id": "d1",
                    "$session_id": "s1", "$is_identified": true,
                    "$groups": {"project": "p9", "company": "acme"},
                    "$current_url": "https://a.co/pricing?plan=pro",
                    "$pathname": "/pricing", "$referrer": "$direct",
                    "$ip": "198.51.100.1",
                },
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Page,
            event: "$pageview".into(),
            user_id: Some("u1".into()),
            device_id: Some("d1".into()),
            session_id: Some("s1".into()),
            // The first group in key order.
            group_id: Some("acme".into()),
            previous_id: None,
            timestamp: NOW - HOUR,
            received_at: NOW,
            properties: map(json!({
                "token": "phc_x", "distinct_id": "u1", "$device_id": "d1",
                "$session_id": "s1", "$is_identified": true,
                "$groups": {"project": "p9", "company": "acme"},
                "$current_url": "https://a.co/pricing?plan=pro",
                "$pathname": "/pricing", "$referrer": "$direct", "$ip": "198.51.100.1",
                "page_url": "https://a.co/pricing?plan=pro", "page_path": "/pricing",
                "page_referrer": "$direct",
            })),
            traits: Map::new(),
            // `$ip` is the event's address.
            context: map(json!({"ip": "198.51.100.1", "user_agent": "Mozilla/5.0"})),
        };
        assert_eq!(event, expected);
        assert_eq!(event.page_path().as_deref(), Some("/pricing"));
    }

    #[test]
    fn screen_and_custom_events_map_every_field() {
        let event = one(
            "/batch/",
            json!({"api_key": "phc_x", "batch": [{
                "event": "$screen",
                "distinct_id": 42,
                "uuid": ID,
                "properties": {"$screen_name": "Home"},
            }]}),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Screen,
            event: "$screen".into(),
            user_id: Some("42".into()),
            device_id: None,
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: NOW,
            received_at: NOW,
            properties: map(json!({"$screen_name": "Home"})),
            traits: Map::new(),
            context: server_context(),
        };
        assert_eq!(event, expected);

        let event = one(
            "/capture/",
            json!({
                "event": "feature_used", "$distinct_id": "u1", "api_key": "phc_x",
                "uuid": ID, "$set": {"plan": "pro"},
                "properties": {"feature_name": "export", "$set": {"seen": true}},
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Track,
            event: "feature_used".into(),
            user_id: Some("u1".into()),
            device_id: None,
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: NOW,
            received_at: NOW,
            // Person updates on other events stay in the properties, gathered there.
            properties: map(json!({"feature_name": "export",
                                   "$set": {"seen": true, "plan": "pro"}})),
            traits: Map::new(),
            context: server_context(),
        };
        assert_eq!(event, expected);
    }

    #[test]
    fn identify_maps_every_field() {
        let event = one(
            "/e/",
            json!({
                "event": "$identify",
                "uuid": ID,
                "$set": {"email": "a@b.co"},
                "$set_once": {"first_seen": "2024-04-01"},
                "properties": {
                    "token": "phc_x", "distinct_id": "u1", "$anon_distinct_id": "anon-1",
                    "$device_id": "anon-1", "$session_id": "s1", "$is_identified": false,
                    "$set": {"email": "old@b.co", "plan": "pro"},
                },
            }),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Identify,
            event: "$identify".into(),
            // Identify names the user even though the event was sent anonymous.
            user_id: Some("u1".into()),
            device_id: Some("anon-1".into()),
            session_id: Some("s1".into()),
            group_id: None,
            previous_id: None,
            timestamp: NOW,
            received_at: NOW,
            properties: map(json!({
                "token": "phc_x", "distinct_id": "u1", "$anon_distinct_id": "anon-1",
                "$device_id": "anon-1", "$session_id": "s1", "$is_identified": false,
                "$set_once": {"first_seen": "2024-04-01"},
            })),
            // The top-level `$set` wins per key over `properties.$set`.
            traits: map(json!({"email": "a@b.co", "plan": "pro"})),
            context: server_context(),
        };
        assert_eq!(event, expected);

        // `/engage` person updates without a name are identifies.
        let event = one(
            "/engage/",
            json!({"$set": {"plan": "team"}, "$token": "phc_x", "$distinct_id": "u1"}),
        );
        assert_eq!(
            (event.kind, event.event.as_str(), event.user_id.as_deref()),
            (EventType::Identify, "$identify", Some("u1"))
        );
        assert_eq!(event.traits, map(json!({"plan": "team"})));
    }

    #[test]
    fn group_identify_maps_every_field() {
        let event = one(
            "/batch/",
            json!({"api_key": "phc_x", "batch": [{
                "event": "$groupidentify",
                "distinct_id": "$company_acme",
                "uuid": ID,
                "properties": {
                    "$group_type": "company", "$group_key": "acme",
                    "$group_set": {"name": "Acme", "employees": 40},
                },
            }]}),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Group,
            event: "$groupidentify".into(),
            // `$company_acme` is the server SDKs' stand-in, not a user.
            user_id: None,
            device_id: None,
            session_id: None,
            group_id: Some("acme".into()),
            previous_id: None,
            timestamp: NOW,
            received_at: NOW,
            properties: map(json!({"$group_type": "company", "$group_key": "acme"})),
            traits: map(json!({"name": "Acme", "employees": 40, "group_type": "company"})),
            context: server_context(),
        };
        assert_eq!(event, expected);

        // From posthog-js, the sender is a real user.
        let event = one(
            "/e/",
            json!({"event": "$groupidentify", "distinct_id": "u1", "token": "phc_x",
                   "properties": {"$group_type": "company", "$group_key": 7,
                                  "$group_set": {"group_type": "Account"}}}),
        );
        assert_eq!(event.user_id.as_deref(), Some("u1"));
        assert_eq!(event.group_id.as_deref(), Some("7"));
        // A `group_type` trait the sender set wins over `$group_type`.
        assert_eq!(event.traits, map(json!({"group_type": "Account"})));
    }

    #[test]
    fn create_alias_maps_every_field() {
        let event = one(
            "/batch/",
            json!({"api_key": "phc_x", "batch": [{
                "event": "$create_alias",
                "distinct_id": "u1",
                "uuid": ID,
                "properties": {"alias": "anon-1", "distinct_id": "u1", "$device_id": "d1"},
            }]}),
        );
        let expected = Event {
            uuid: Uuid::parse_str(ID).unwrap(),
            kind: EventType::Alias,
            event: "$create_alias".into(),
            user_id: Some("u1".into()),
            device_id: Some("d1".into()),
            session_id: None,
            group_id: None,
            previous_id: Some("anon-1".into()),
            timestamp: NOW,
            received_at: NOW,
            properties: map(json!({"alias": "anon-1", "distinct_id": "u1",
                                   "$device_id": "d1"})),
            traits: Map::new(),
            context: server_context(),
        };
        assert_eq!(event, expected);
    }

    #[test]
    fn anonymous_distinct_ids_are_device_ids() {
        let ids = |properties: Value| {
            let event = one(
                "/e/",
                json!({"event": "e", "distinct_id": "x1", "token": "t",
                       "properties": properties}),
            );
            (event.user_id, event.device_id)
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(ids(json!({})), (some("x1"), None));
        assert_eq!(ids(json!({"$device_id": "x1"})), (None, some("x1")));
        assert_eq!(ids(json!({"$is_identified": false})), (None, some("x1")));
        assert_eq!(
            ids(json!({"$is_identified": false, "$device_id": "d9"})),
            (None, some("x1"))
        );
        assert_eq!(
            ids(json!({"$is_identified": true, "$device_id": "d9"})),
            (some("x1"), some("d9"))
        );
        // Only `false` itself marks an anonymous id.
        assert_eq!(ids(json!({"$is_identified": "false"})), (some("x1"), None));
    }

    #[test]
    fn bad_events_are_rejected_precisely_and_others_kept() {
        let good = json!({"event": "ok", "distinct_id": "u1"});
        let cases: &[(Value, &str, &str)] = &[
            (json!({"distinct_id": "u1"}), "event", "`event` is required"),
            (
                json!({"event": "", "distinct_id": "u1"}),
                "event",
                "`event` must not be empty",
            ),
            (
                json!({"event": 1, "distinct_id": "u1"}),
                "event",
                "`event` must be a string, found a number",
            ),
            (
                json!({"event": "e"}),
                "distinct_id",
                "`distinct_id` is required (also read from `$distinct_id` and \
                 `properties.distinct_id`)",
            ),
            (
                json!({"event": "e", "distinct_id": ""}),
                "distinct_id",
                "`distinct_id` is required (also read from `$distinct_id` and \
                 `properties.distinct_id`)",
            ),
            (
                json!({"event": "e", "distinct_id": ["a"]}),
                "distinct_id",
                "`distinct_id` must be a string or a number, found an array",
            ),
            (
                json!({"event": "$create_alias", "distinct_id": "u1"}),
                "properties.alias",
                "`properties.alias` is required for $create_alias",
            ),
            (
                json!({"event": "$groupidentify", "distinct_id": "u1",
                       "properties": {"$group_type": "company"}}),
                "properties.$group_key",
                "`properties.$group_key` is required for $groupidentify",
            ),
            (
                json!({"event": "$identify", "distinct_id": "u1", "properties": {"$set": 1}}),
                "properties.$set",
                "`properties.$set` must be an object, found a number",
            ),
            (
                json!({"event": "e", "distinct_id": "u1", "properties": []}),
                "properties",
                "`properties` must be an object, found an array",
            ),
            (
                json!({"event": "e", "distinct_id": "u1", "offset": "5"}),
                "offset",
                "`offset` must be a number of milliseconds, found a string",
            ),
            (
                json!({"event": "e", "distinct_id": "u1", "timestamp": "noon"}),
                "timestamp",
                "`timestamp` \"noon\" is not an ISO 8601 date-time (like \
                 2024-05-01T12:00:00Z) or epoch milliseconds",
            ),
            (
                json!(null),
                "",
                "an event must be a JSON object, found null",
            ),
        ];
        for (bad, field, message) in cases {
            let body = json!({"api_key": "k", "batch": [good, bad, good]}).to_string();
            let decoded = run(&post("/batch", body.as_bytes())).unwrap().decoded;
            assert_eq!(
                decoded.rejected,
                vec![ItemError {
                    index: 1,
                    field: field.to_string(),
                    message: message.to_string(),
                }],
                "{body}"
            );
            assert_eq!(decoded.events.len(), 2, "{body}");
        }
    }

    #[test]
    fn event_ids() {
        let body = json!([
            {"event": "e", "distinct_id": "u", "token": "t", "uuid": ID},
            {"event": "e", "distinct_id": "u", "token": "t", "uuid": "not-a-uuid"},
            {"event": "e", "distinct_id": "u", "token": "t"},
        ])
        .to_string();
        let first = run(&post("/e/", body.as_bytes())).unwrap().decoded.events;
        let retry = run(&post("/e/", body.as_bytes())).unwrap().decoded.events;
        assert_eq!(first[0].uuid, Uuid::parse_str(ID).unwrap());
        assert_eq!(first[1].uuid, retry[1].uuid);
        assert_eq!(first[1].uuid.get_version_num(), 8);
        assert_eq!(first[2].uuid.get_version_num(), 7);
        assert_ne!(first[2].uuid, retry[2].uuid);
    }

    fn timestamp_of(path: &str, query: Option<&str>, body: Value) -> i64 {
        let body = body.to_string();
        let req = PostHogRequest {
            query,
            ..post(path, body.as_bytes())
        };
        let decoded = run(&req).unwrap().decoded;
        assert_eq!(decoded.rejected, vec![], "{body}");
        decoded.events[0].timestamp
    }

    #[test]
    fn clock_skew_correction() {
        let event = |extra: Value| {
            let mut event = json!({"event": "e", "distinct_id": "u", "token": "t"});
            for (k, v) in map(extra) {
                event[k] = v;
            }
            event
        };
        let ts = |body: Value| timestamp_of("/e/", None, body);
        // The client's clock is 1 day fast; the event happened 1.5 s before it was sent.
        let skewed = json!({"timestamp": "2024-05-02T12:00:00.000Z"});
        assert_eq!(
            ts(
                json!({"api_key": "t", "sent_at": "2024-05-02T12:00:01.500Z",
                      "batch": [event(skewed.clone())]})
            ),
            NOW - 1_500_000
        );
        // posthog-python's `sentAt`.
        assert_eq!(
            ts(
                json!({"api_key": "t", "sentAt": "2024-05-02T12:00:01.500+00:00",
                      "batch": [event(skewed.clone())]})
            ),
            NOW - 1_500_000
        );
        // The event's own `sent_at` wins over the batch's.
        let mut own = skewed.clone();
        own["sent_at"] = json!("2024-05-02T12:00:00.250Z");
        assert_eq!(
            ts(
                json!({"api_key": "t", "sent_at": "2024-05-02T12:00:01.500Z",
                      "batch": [event(own)]})
            ),
            NOW - 250_000
        );
        // posthog-js's `_=<epoch ms>` query parameter.
        assert_eq!(
            timestamp_of(
                "/e/",
                Some("ip=1&_=1714651201500&ver=1.130.0"),
                event(skewed.clone())
            ),
            NOW - 1_500_000
        );
        // `_` in seconds (old SDKs) is ignored: no correction, and 24 h ahead is clamped.
        assert_eq!(
            timestamp_of("/e/", Some("_=1714651201"), event(skewed.clone())),
            NOW
        );
        // `offset` wins over everything: the event happened that many ms before now.
        let with_offset = json!({"timestamp": "2020-01-01T00:00:00Z", "offset": 2500});
        assert_eq!(
            ts(
                json!({"api_key": "t", "sent_at": "2024-05-02T12:00:01.500Z",
                      "batch": [event(with_offset)]})
            ),
            NOW - 2_500_000
        );
        assert_eq!(ts(event(json!({"offset": 0.5}))), NOW - 500);
        // Without a send time the timestamp is kept; epoch milliseconds work too.
        assert_eq!(
            ts(event(json!({"timestamp": "2024-05-01T11:00:00Z"}))),
            NOW - HOUR
        );
        assert_eq!(
            ts(event(json!({"timestamp": 1_714_561_200_123_i64}))),
            NOW - HOUR + 123_000
        );
        assert_eq!(ts(event(json!({}))), NOW);
        // More than 23 h in the future is clamped to now, after correction.
        assert_eq!(
            ts(event(json!({"timestamp": "2024-05-02T11:00:00Z"}))),
            NOW + 23 * HOUR
        );
        assert_eq!(
            ts(event(json!({"timestamp": "2024-05-02T11:00:00.001Z"}))),
            NOW
        );
        assert_eq!(ts(event(json!({"offset": -(23 * 3600 * 1000 + 1)}))), NOW);
    }
}
