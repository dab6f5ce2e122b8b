//! Helpers every wire format uses on one item: reading ids and names, filling the
//! context from the request, the event id, and the timestamp rules.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::json::{id_field, timestamp_micros, type_name};
use crate::{DecodeError, RequestMeta};

/// A rejected item: the field at fault and why.
pub(crate) type Reject = (&'static str, String);

/// The item as an object, or the rejection every format gives for anything else.
pub(crate) fn event_object(item: Value) -> Result<Map<String, Value>, Reject> {
    match item {
        Value::Object(item) => Ok(item),
        other => Err((
            "",
            format!(
                "an event must be a JSON object, found {}",
                type_name(&other)
            ),
        )),
    }
}

pub(crate) fn id(
    map: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<String>, Reject> {
    id_field(map, key, field).map_err(|m| (field, m))
}

/// The first id present among `(map, key, field)` candidates, in order. A candidate of
/// the wrong type rejects the item even when an earlier one is present.
pub(crate) fn first_id(
    candidates: &[(&Map<String, Value>, &str, &'static str)],
) -> Result<Option<String>, Reject> {
    let mut found = None;
    for &(map, key, field) in candidates {
        let value = id(map, key, field)?;
        found = found.or(value);
    }
    Ok(found)
}

/// A string field; absent or `null` is `None`, any other type rejects the item.
pub(crate) fn string(
    map: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<String>, Reject> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err((field, not_a_string(field, other))),
    }
}

pub(crate) fn not_a_string(field: &str, value: &Value) -> String {
    format!("`{field}` must be a string, found {}", type_name(value))
}

/// Reads a project key (Segment's `writeKey`, PostHog's `api_key`/`token`) from a
/// request-level or per-item field. Absent, `null` and `""` mean "no key"; any other
/// non-string refuses the request, because the server could not authenticate it.
/// `path` names the field, `index` the item it is in (if any).
pub(crate) fn key_field(
    map: &Map<String, Value>,
    key: &str,
    path: &str,
    index: Option<usize>,
) -> Result<Option<String>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => {
            let at = index.map(|i| format!("item {i}: ")).unwrap_or_default();
            Err(DecodeError::InvalidField {
                field: path.to_owned(),
                message: format!(
                    "{at}`{path}` must be a string holding the project key, found {}",
                    type_name(other)
                ),
            })
        }
    }
}

/// Records a key found in one item; every item of a request must carry the same one.
pub(crate) fn agree(found: &mut Option<String>, key: String) -> Result<(), DecodeError> {
    match found {
        Some(first) if *first != key => Err(DecodeError::MixedKeys {
            first: first.clone(),
            second: key,
        }),
        Some(_) => Ok(()),
        None => {
            *found = Some(key);
            Ok(())
        }
    }
}

/// Copies the connection's IP and `User-Agent` into `context` unless the item carries
/// its own, under `ip` or under one of `user_agent_keys` (the first is the one written).
pub(crate) fn fill_context(
    context: &mut Map<String, Value>,
    meta: &RequestMeta,
    user_agent_keys: &[&str],
) {
    let present = |context: &Map<String, Value>, key: &str| {
        context.get(key).is_some_and(|value| !value.is_null())
    };
    if let Some(ip) = &meta.ip {
        if !present(context, "ip") {
            context.insert("ip".into(), ip.clone().into());
        }
    }
    if let (Some(user_agent), Some(first)) = (&meta.user_agent, user_agent_keys.first()) {
        if !user_agent_keys.iter().any(|key| present(context, key)) {
            context.insert((*first).into(), user_agent.clone().into());
        }
    }
}

/// The earliest event time accepted: 2000-01-01T00:00:00Z, in microseconds. Earlier
/// times are a client bug (a zero or negative epoch, year 0), never an event, and one
/// such event would stretch every `date_range: "all"` report back to it.
pub(crate) const EARLIEST_EVENT_MICROS: i64 = 946_684_800_000_000;

/// Applies the accepted window to an event time (after clock-skew correction): before
/// [`EARLIEST_EVENT_MICROS`] the item is refused; more than `max_future_skew_s` after
/// `received_at` it is replaced by `received_at` (the sender's clock is wrong, and a
/// future event would sit at the edge of every report).
pub(crate) fn accepted_time(
    timestamp: i64,
    meta: &RequestMeta,
    max_future_skew_s: i64,
) -> Result<i64, Reject> {
    if timestamp < EARLIEST_EVENT_MICROS {
        let when = chrono::DateTime::from_timestamp_micros(timestamp)
            .map_or_else(|| format!("{timestamp} µs"), |t| t.to_rfc3339());
        return Err((
            "timestamp",
            format!("`timestamp` {when} is before 2000-01-01T00:00:00Z, the earliest accepted"),
        ));
    }
    let latest = meta
        .received_at
        .saturating_add(max_future_skew_s.saturating_mul(1_000_000));
    Ok(if timestamp > latest {
        meta.received_at
    } else {
        timestamp
    })
}

/// Reads an optional timestamp field (see [`timestamp_micros`]).
pub(crate) fn timestamp(
    map: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<i64>, Reject> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => timestamp_micros(value, field)
            .map(Some)
            .map_err(|m| (field, m)),
    }
}

/// Reads a client's send time. Unreadable values are ignored rather than rejecting the
/// event, as PostHog does: without it the event keeps its own timestamp uncorrected.
pub(crate) fn sent_at(map: &Map<String, Value>, keys: &[&str]) -> Option<i64> {
    keys.iter()
        .filter_map(|key| map.get(*key))
        .find(|value| !value.is_null())
        .and_then(|value| timestamp_micros(value, "sentAt").ok())
}

/// Moves a client timestamp onto the server's clock: the event happened
/// `sent_at - timestamp` before the client sent it, so it is stored that long before the
/// server received it. Out-of-range results reject the item.
pub(crate) fn correct_skew(
    timestamp: i64,
    sent_at: i64,
    meta: &RequestMeta,
    field: &'static str,
) -> Result<i64, Reject> {
    let corrected = i128::from(meta.received_at) - (i128::from(sent_at) - i128::from(timestamp));
    i64::try_from(corrected)
        .ok()
        .filter(|micros| chrono::DateTime::from_timestamp_micros(*micros).is_some())
        .ok_or_else(|| {
            (
                field,
                format!("`{field}` corrected for the client's clock is out of range"),
            )
        })
}

/// The event id for a client-chosen id: the id itself when it is a UUID; otherwise a
/// UUID derived from it, so a retried request with the same id gives the same event id
/// (the store deduplicates on it); a new time-ordered UUID when there is none.
pub(crate) fn event_uuid(client_id: Option<&Value>, namespace: &str) -> Uuid {
    let id = match client_id {
        Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
        _ => return Uuid::now_v7(),
    };
    Uuid::parse_str(id).unwrap_or_else(|_| derived_uuid(namespace, id))
}

/// A UUID (version 8, "custom") from two 64-bit FNV-1a hashes of `namespace`, a
/// separator and `id`. The uuid crate's SHA-1 based v5 needs a feature this workspace
/// does not enable; FNV is enough here because the input is the sender's own id within
/// its own project, so there is no third party to engineer collisions against, and two
/// independently seeded 64-bit hashes make an accidental collision (about 2^-61 per
/// pair once the version and variant bits are set) negligible. Stable across builds
/// and platforms: the hash is defined here, not by the standard library.
fn derived_uuid(namespace: &str, id: &str) -> Uuid {
    let input = || namespace.bytes().chain([0]).chain(id.bytes());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv1a(FNV_BASIS, input()).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv1a(SECOND_BASIS, input()).to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The standard FNV-1a 64-bit offset basis.
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a of the byte 0xff from the standard basis: a second, unrelated starting point.
const SECOND_BASIS: u64 = 0xaf64_724c_8602_eb6e;

fn fnv1a(basis: u64, bytes: impl Iterator<Item = u8>) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.fold(basis, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn derived_uuids_are_stable_and_distinct() {
        let a = event_uuid(Some(&json!("ajs-next-1a2b3c")), "segment");
        assert_eq!(a, event_uuid(Some(&json!("ajs-next-1a2b3c")), "segment"));
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        // Pinned: the derivation must never change, or retries after an upgrade would
        // be stored twice.
        assert_eq!(a, derived_uuid("segment", "ajs-next-1a2b3c"));
        assert_eq!(
            derived_uuid("segment", "ajs-next-1a2b3c").to_string(),
            PINNED_SEGMENT
        );
        assert_ne!(a, event_uuid(Some(&json!("ajs-next-1a2b3d")), "segment"));
        assert_ne!(a, event_uuid(Some(&json!("ajs-next-1a2b3c")), "posthog"));
        // A namespace/id split cannot be shifted to forge the same input.
        assert_ne!(derived_uuid("ab", "c"), derived_uuid("a", "bc"));

        let valid = "0190a9e2-7c3e-7b6e-9a5e-2f1c0d3b4a59";
        assert_eq!(
            event_uuid(Some(&json!(valid)), "segment").to_string(),
            valid
        );
        for none in [None, Some(json!("")), Some(json!(" ")), Some(json!(7))] {
            assert_eq!(event_uuid(none.as_ref(), "segment").get_version_num(), 7);
        }
    }

    const PINNED_SEGMENT: &str = "fb3d898e-9cb2-832b-937a-26a9dfce74ae";

    #[test]
    fn fnv_matches_the_published_vectors() {
        assert_eq!(fnv1a(FNV_BASIS, b"".iter().copied()), FNV_BASIS);
        assert_eq!(
            fnv1a(FNV_BASIS, b"a".iter().copied()),
            0xaf63_dc4c_8601_ec8c
        );
        assert_eq!(
            fnv1a(FNV_BASIS, b"foobar".iter().copied()),
            0x8594_4171_f739_67e8
        );
        assert_eq!(fnv1a(FNV_BASIS, [0xff].into_iter()), SECOND_BASIS);
    }

    #[test]
    fn skew_correction() {
        let meta = RequestMeta {
            received_at: 1_000_000_000,
            ..RequestMeta::default()
        };
        // Sent 5 s after it happened: stored 5 s before it was received.
        assert_eq!(
            correct_skew(10_000_000, 15_000_000, &meta, "timestamp"),
            Ok(995_000_000)
        );
        assert!(correct_skew(i64::MIN, i64::MAX, &meta, "timestamp").is_err());
    }
}
