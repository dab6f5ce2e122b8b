//! What the decoders' unit tests share: a fixed clock, a request, an event id.

use serde_json::{Map, Value};

use crate::RequestMeta;

/// 2024-05-01T12:00:00Z
pub(crate) const NOW: i64 = 1_714_564_800_000_000;
pub(crate) const SECOND: i64 = 1_000_000;
pub(crate) const HOUR: i64 = 3_600 * SECOND;
pub(crate) const ID: &str = "0190a9e2-7c3e-7b6e-9a5e-2f1c0d3b4a59";

/// A request received at [`NOW`] from a browser.
pub(crate) fn meta() -> RequestMeta {
    RequestMeta {
        received_at: NOW,
        ip: Some("203.0.113.7".into()),
        user_agent: Some("Mozilla/5.0".into()),
    }
}

/// The object inside `value`.
pub(crate) fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}
