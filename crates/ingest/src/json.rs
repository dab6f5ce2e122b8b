//! Helpers every JSON wire format shares: reading a body into items under the request
//! limits, and lenient readers for ids and timestamps.

use chrono::{DateTime, NaiveDateTime};
use serde_json::{Map, Value};

use crate::{DecodeError, Limits};

/// Reads a body holding a JSON array of items or a single item into its items,
/// enforcing the whole-request rules: UTF-8, JSON, shape, event count and nesting depth.
pub(crate) fn parse_items(body: &[u8], limits: &Limits) -> Result<Vec<Value>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    // Some clients (and Windows tools) prefix a byte-order mark; it carries no meaning.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(DecodeError::EmptyBody);
    }
    let max_depth = limits.depth();
    let value: Value = serde_json::from_str(text).map_err(|e| parse_error(text, &e, max_depth))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(_) => vec![value],
        other => {
            return Err(DecodeError::NotArrayOrObject {
                found: type_name(&other),
            })
        }
    };
    if items.is_empty() {
        return Err(DecodeError::EmptyBatch);
    }
    if items.len() > limits.max_events {
        return Err(DecodeError::TooManyEvents {
            count: items.len(),
            max: limits.max_events,
        });
    }
    for (index, item) in items.iter().enumerate() {
        let mut path = String::new();
        if too_deep(item, 0, max_depth, &mut path) {
            return Err(DecodeError::TooDeep {
                index,
                path,
                max: max_depth,
            });
        }
    }
    Ok(items)
}

fn parse_error(text: &str, e: &serde_json::Error, max_depth: usize) -> DecodeError {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&position).unwrap_or(&full);
    // serde_json stops at 128 levels rather than overflow the stack. Our own limit is
    // lower, so the text up to that point holds a container past `max_depth`: find it
    // to name the item and path, as the check on a parsed body would.
    if reason == "recursion limit exceeded" {
        if let Some((index, path)) = find_too_deep(text, max_depth) {
            return DecodeError::TooDeep {
                index,
                path,
                max: max_depth,
            };
        }
    }
    DecodeError::MalformedJson {
        line: e.line(),
        column: e.column(),
        reason: reason.to_owned(),
    }
}

/// Whether a container below `value` (at `depth`) nests deeper than `max`; if so,
/// `path` is left naming the first such container.
fn too_deep(value: &Value, depth: usize, max: usize, path: &mut String) -> bool {
    let len = path.len();
    let found = match value {
        Value::Object(map) => map.iter().any(|(key, child)| {
            path.truncate(len);
            push_key(path, key);
            is_container(child) && (depth + 1 > max || too_deep(child, depth + 1, max, path))
        }),
        Value::Array(items) => items.iter().enumerate().any(|(i, child)| {
            path.truncate(len);
            push_index(path, i);
            is_container(child) && (depth + 1 > max || too_deep(child, depth + 1, max, path))
        }),
        _ => false,
    };
    if !found {
        path.truncate(len);
    }
    found
}

fn is_container(value: &Value) -> bool {
    matches!(value, Value::Object(_) | Value::Array(_))
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn push_index(path: &mut String, index: usize) {
    path.push_str(&format!("[{index}]"));
}

enum Frame {
    Array { index: usize },
    Object { key: Option<String>, in_key: bool },
}

/// Scans raw JSON text (valid at least up to the point of interest) for the first
/// container nested deeper than `max` inside an item, without building values, so it
/// works on bodies too deep to parse. Returns the item index and the path in the item,
/// using the same depth rule and path syntax as [`too_deep`].
fn find_too_deep(text: &str, max: usize) -> Option<(usize, String)> {
    let bytes = text.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    let mut batch = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object { key, in_key: true }) = stack.last_mut() {
                    let raw = &text[start..(i + 1).min(text.len())];
                    *key = Some(serde_json::from_str(raw).unwrap_or_else(|_| raw.to_owned()));
                }
            }
            open @ (b'{' | b'[') => {
                let batch = *batch.get_or_insert(open == b'[');
                let wrappers = usize::from(batch) + 1;
                // Depth of the new container below its item: the item is depth 0.
                if stack.len() + 1 > wrappers + max {
                    let index = match stack.first() {
                        Some(Frame::Array { index }) if batch => *index,
                        _ => 0,
                    };
                    let mut path = String::new();
                    for frame in &stack[wrappers - 1..] {
                        match frame {
                            Frame::Array { index } => push_index(&mut path, *index),
                            Frame::Object { key, .. } => {
                                push_key(&mut path, key.as_deref().unwrap_or(""))
                            }
                        }
                    }
                    return Some((index, path));
                }
                stack.push(if open == b'[' {
                    Frame::Array { index: 0 }
                } else {
                    Frame::Object {
                        key: None,
                        in_key: true,
                    }
                });
            }
            b'}' | b']' => {
                stack.pop();
            }
            b':' => {
                if let Some(Frame::Object { in_key, .. }) = stack.last_mut() {
                    *in_key = false;
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { in_key, .. }) => *in_key = true,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    None
}

/// The JSON type of a value, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads an id field: a string, or a number (some SDKs send numeric user ids), turned
/// into a string. Absent, `null` and `""` all mean "no id". `field` names it in errors.
pub(crate) fn id_field(
    map: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "`{field}` must be a string or a number, found {}",
            type_name(other)
        )),
    }
}

/// Takes an object-valued field out of `map`; absent or `null` is an empty object.
pub(crate) fn take_object(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Map<String, Value>, String> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(object)) => Ok(object),
        Some(other) => Err(format!(
            "`{key}` must be an object, found {}",
            type_name(&other)
        )),
    }
}

/// Reads a timestamp as microseconds since the epoch. Accepted: an RFC 3339 string
/// (`2024-05-01T12:00:00.123+02:00`, `...Z`), a naive `YYYY-MM-DDTHH:MM:SS[.fff]` taken
/// as UTC, or a number of epoch milliseconds.
pub(crate) fn timestamp_micros(value: &Value, field: &str) -> Result<i64, String> {
    let out_of_range = || format!("`{field}` {value} is out of range");
    match value {
        Value::String(s) => {
            let s = s.trim();
            let micros = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                t.timestamp_micros()
            } else if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
                t.and_utc().timestamp_micros()
            } else {
                return Err(format!(
                    "`{field}` {value} is not an ISO 8601 date-time \
                     (like 2024-05-01T12:00:00Z) or epoch milliseconds"
                ));
            };
            Ok(micros)
        }
        Value::Number(n) => {
            let micros = if let Some(ms) = n.as_i64() {
                ms.checked_mul(1000).ok_or_else(out_of_range)?
            } else {
                // Fractional (or beyond i64) milliseconds; the cast saturates and the
                // range check below catches the saturated values.
                (n.as_f64().ok_or_else(out_of_range)? * 1000.0).round() as i64
            };
            DateTime::from_timestamp_micros(micros)
                .filter(|_| micros != i64::MIN && micros != i64::MAX)
                .ok_or_else(out_of_range)?;
            Ok(micros)
        }
        other => Err(format!(
            "`{field}` must be an ISO 8601 string or epoch milliseconds, found {}",
            type_name(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text scanner, used when the parser gives up, must agree with the check on
    /// parsed values, so a body gets the same error whatever its depth.
    #[test]
    fn scanner_agrees_with_parsed_depth_check() {
        let bodies = [
            r#"[{"a": 1}, {"b": {"c": [1, {"d": {"e": {}}}]}}]"#,
            r#"{"x": "}{][", "y\"z": {"w": [[{"v": {}}]]}}"#,
            r#"[{"a": [1, 2, [3, [4]]]}, [[[]]], {"p": {"q": {}}, "r": {"s": {"t": {}}}}]"#,
            r#"{"a": {"b": 1}, "c": {"d": {"e": 2}}}"#,
            r#"[{"k": "\\"}, {"m\\": {"n": {"o": []}}}]"#,
        ];
        for body in bodies {
            let items = match serde_json::from_str::<Value>(body).unwrap() {
                Value::Array(items) => items,
                single => vec![single],
            };
            for max in 0..4 {
                let parsed = items.iter().enumerate().find_map(|(index, item)| {
                    let mut path = String::new();
                    too_deep(item, 0, max, &mut path).then_some((index, path))
                });
                assert_eq!(find_too_deep(body, max), parsed, "max {max}, body {body}");
            }
        }
    }

    #[test]
    fn recursion_limit_message_is_recognized() {
        let e = serde_json::from_str::<Value>(&"[".repeat(200)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("recursion limit exceeded at line 1"),
            "{e}"
        );
    }

    #[test]
    fn ids() {
        let map = match serde_json::json!({"s": "a", "e": "", "n": 7, "f": 1.5, "z": null, "b": false})
        {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        assert_eq!(id_field(&map, "s", "s"), Ok(Some("a".into())));
        assert_eq!(id_field(&map, "e", "e"), Ok(None));
        assert_eq!(id_field(&map, "n", "n"), Ok(Some("7".into())));
        assert_eq!(id_field(&map, "f", "f"), Ok(Some("1.5".into())));
        assert_eq!(id_field(&map, "z", "z"), Ok(None));
        assert_eq!(id_field(&map, "missing", "m"), Ok(None));
        assert_eq!(
            id_field(&map, "b", "ctx.b"),
            Err("`ctx.b` must be a string or a number, found a boolean".into())
        );
    }

    #[test]
    fn default_limits() {
        let limits = Limits::default();
        assert_eq!(
            (
                limits.max_events,
                limits.max_depth,
                limits.max_future_skew_s
            ),
            (1000, 16, 82_800)
        );
    }
}
