//! Helpers every JSON wire format shares: reading a body into items under the request
//! limits, and lenient readers for ids and timestamps.

use chrono::{DateTime, NaiveDateTime};
use serde_json::{Map, Value};

use crate::{DecodeError, Limits};

/// Reads a body holding a JSON array of items or a single item into its items,
/// enforcing the whole-request rules: UTF-8, JSON, shape, event count and nesting depth.
pub(crate) fn parse_items(body: &[u8], limits: &Limits) -> Result<Vec<Value>, DecodeError> {
    Ok(parse_body(body, None, limits)?.items)
}

/// How a body held its items.
#[derive(Debug, PartialEq)]
pub(crate) enum Shape {
    /// A JSON array of items.
    Array,
    /// A single item object.
    Object,
    /// An object whose `batch_key` field holds the items; the map is the envelope's
    /// other fields (shared context, key, `sentAt`...).
    Envelope(Map<String, Value>),
}

#[derive(Debug)]
pub(crate) struct Body {
    pub(crate) items: Vec<Value>,
    pub(crate) shape: Shape,
}

/// Like [`parse_items`], and when `batch_key` is given, an object with that field is an
/// envelope whose field is the array of items (Segment's and PostHog's
/// `{"batch": [...]}`). Each item is depth 0 for the nesting limit; so are the
/// envelope's other fields, whose errors name item 0.
pub(crate) fn parse_body(
    body: &[u8],
    batch_key: Option<&str>,
    limits: &Limits,
) -> Result<Body, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    // Some clients (and Windows tools) prefix a byte-order mark; it carries no meaning.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(DecodeError::EmptyBody);
    }
    let max_depth = limits.depth();
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => match replace_lone_surrogates(text) {
            Some(fixed) => serde_json::from_str(&fixed)
                .map_err(|e| parse_error(&fixed, &e, max_depth, batch_key))?,
            None => return Err(parse_error(text, &e, max_depth, batch_key)),
        },
    };
    let (items, shape) = match value {
        Value::Array(items) => (items, Shape::Array),
        Value::Object(mut map) => match batch_key.and_then(|key| map.remove(key)) {
            Some(Value::Array(items)) => (items, Shape::Envelope(map)),
            Some(other) => {
                return Err(DecodeError::BatchNotArray {
                    found: type_name(&other),
                })
            }
            None => (vec![Value::Object(map)], Shape::Object),
        },
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
    if let Some((index, path)) = first_too_deep(&items, &shape, max_depth) {
        return Err(DecodeError::TooDeep {
            index,
            path,
            max: max_depth,
        });
    }
    Ok(Body { items, shape })
}

/// `text` with every lone UTF-16 surrogate escape (`\ud83d` not followed by a low
/// surrogate escape, or a low one with no high one before it) replaced by `\ufffd`, or
/// `None` when it has none. Browsers' `JSON.stringify` writes them when a string is cut
/// in the middle of an emoji; serde_json refuses them, which would cost the whole batch,
/// so they become U+FFFD as browsers and most JSON libraries read them. Each escape is
/// replaced by one of the same length, so error positions in the result are the
/// original's. Only called after a failed parse: valid bodies never pay for it.
fn replace_lone_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let escape_at = |i: usize| -> Option<u16> {
        let hex = bytes.get(i..i + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let mut lone = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape_at(i) {
            Some(0xD800..=0xDBFF) => match escape_at(i + 6) {
                Some(0xDC00..=0xDFFF) => i += 12,
                _ => {
                    lone.push(i);
                    i += 6;
                }
            },
            Some(0xDC00..=0xDFFF) => {
                lone.push(i);
                i += 6;
            }
            Some(_) => i += 6,
            // `\\`, `\"` and the other two-character escapes.
            None => i += 2,
        }
    }
    if lone.is_empty() {
        return None;
    }
    let mut fixed = String::with_capacity(text.len());
    let mut from = 0;
    for at in lone {
        fixed.push_str(&text[from..at]);
        fixed.push_str("\\ufffd");
        from = at + 6;
    }
    fixed.push_str(&text[from..]);
    Some(fixed)
}

/// The first container nested deeper than `max`: the item it is in and its path there.
/// The envelope's own fields count as item 0's, as the envelope's `context` becomes
/// part of every item.
fn first_too_deep(items: &[Value], shape: &Shape, max: usize) -> Option<(usize, String)> {
    let mut path = String::new();
    for (index, item) in items.iter().enumerate() {
        if too_deep(item, 0, max, &mut path) {
            return Some((index, path));
        }
    }
    match shape {
        Shape::Envelope(envelope) if too_deep_map(envelope, 0, max, &mut path) => Some((0, path)),
        _ => None,
    }
}

fn parse_error(
    text: &str,
    e: &serde_json::Error,
    max_depth: usize,
    batch_key: Option<&str>,
) -> DecodeError {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&position).unwrap_or(&full);
    // serde_json stops at 128 levels rather than overflow the stack. Our own limit is
    // lower, so the text up to that point holds a container past `max_depth`: find it
    // to name the item and path, as the check on a parsed body would.
    if reason == "recursion limit exceeded" {
        if let Some((index, path)) = find_too_deep(text, max_depth, batch_key) {
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
    match value {
        Value::Object(map) => too_deep_map(map, depth, max, path),
        Value::Array(items) => {
            let len = path.len();
            let found = items.iter().enumerate().any(|(i, child)| {
                path.truncate(len);
                push_index(path, i);
                is_container(child) && (depth + 1 > max || too_deep(child, depth + 1, max, path))
            });
            if !found {
                path.truncate(len);
            }
            found
        }
        _ => false,
    }
}

fn too_deep_map(map: &Map<String, Value>, depth: usize, max: usize, path: &mut String) -> bool {
    let len = path.len();
    let found = map.iter().any(|(key, child)| {
        path.truncate(len);
        push_key(path, key);
        is_container(child) && (depth + 1 > max || too_deep(child, depth + 1, max, path))
    });
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
/// using the same depth rule, path syntax and envelope rule (`batch_key`) as
/// [`parse_body`].
fn find_too_deep(text: &str, max: usize, batch_key: Option<&str>) -> Option<(usize, String)> {
    let bytes = text.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
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
                // Where the item holding the new container sits on the stack (its depth
                // is 0), and its index in the request.
                let in_envelope = match stack.first() {
                    Some(Frame::Object { key, .. }) => {
                        batch_key.is_some() && key.as_deref() == batch_key
                    }
                    _ => false,
                };
                let root = match (stack.first(), stack.get(1)) {
                    (Some(Frame::Array { index }), _) => Some((1, *index)),
                    (_, Some(Frame::Array { index })) if in_envelope => Some((2, *index)),
                    // The envelope's item array itself is not part of any item.
                    (_, None) if in_envelope && open == b'[' => None,
                    _ => Some((0, 0)),
                };
                if let Some((root, index)) = root {
                    if stack.len() > root + max {
                        let mut path = String::new();
                        for frame in &stack[root..] {
                            match frame {
                                Frame::Array { index } => push_index(&mut path, *index),
                                Frame::Object { key, .. } => {
                                    push_key(&mut path, key.as_deref().unwrap_or(""))
                                }
                            }
                        }
                        return Some((index, path));
                    }
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
    take_object_at(map, key, key)
}

/// [`take_object`], with `field` (like `properties.$set`) naming the value in errors.
pub(crate) fn take_object_at(
    map: &mut Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Map<String, Value>, String> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(object)) => Ok(object),
        Some(other) => Err(format!(
            "`{field}` must be an object, found {}",
            type_name(&other)
        )),
    }
}

/// The length of a value's compact JSON text, computed without building the text.
pub(crate) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("a JSON value always serializes");
    count.0
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

/// Whether the first character after whitespace (and a byte-order mark) opens a JSON
/// object or array.
pub(crate) fn looks_like_json(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
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
            // Envelopes: items are depth 0, and so are the envelope's other fields.
            r#"{"batch": [{"a": 1}, {"b": {"c": {"d": [{}]}}}], "sentAt": "x"}"#,
            r#"{"api_key": "k", "batch": [[[[]]], {"p": {}}]}"#,
            r#"{"api": {"a": {"b": {"c": {}}}}, "batch": [1, 2]}"#,
            r#"{"batch": [{"a": 1}], "context": {"page": [[[]]]}}"#,
            r#"{"batch": {"a": {"b": {"c": {}}}}, "x": 1}"#,
        ];
        for body in bodies {
            for batch_key in [None, Some("batch")] {
                let (items, shape) = match serde_json::from_str::<Value>(body).unwrap() {
                    Value::Array(items) => (items, Shape::Array),
                    Value::Object(mut map) => match batch_key.and_then(|k| map.remove(k)) {
                        Some(Value::Array(items)) => (items, Shape::Envelope(map)),
                        // Not an envelope after all (the body is refused for that, not
                        // for its depth): compare as a single item.
                        Some(other) => {
                            map.insert("batch".into(), other);
                            (vec![Value::Object(map)], Shape::Object)
                        }
                        None => (vec![Value::Object(map)], Shape::Object),
                    },
                    single => (vec![single], Shape::Object),
                };
                for max in 0..4 {
                    assert_eq!(
                        find_too_deep(body, max, batch_key),
                        first_too_deep(&items, &shape, max),
                        "max {max}, batch key {batch_key:?}, body {body}"
                    );
                }
            }
        }
    }

    #[test]
    fn envelopes() {
        let limits = Limits::default();
        let body = parse_body(
            br#"{"batch": [{"a": 1}, {"b": 2}], "writeKey": "k"}"#,
            Some("batch"),
            &limits,
        )
        .unwrap();
        assert_eq!(body.items.len(), 2);
        assert_eq!(
            body.shape,
            Shape::Envelope(match serde_json::json!({"writeKey": "k"}) {
                Value::Object(map) => map,
                _ => unreachable!(),
            })
        );
        // Without a batch key the same body is one item.
        let body = parse_body(br#"{"batch": [1]}"#, None, &limits).unwrap();
        assert_eq!((body.items.len(), body.shape), (1, Shape::Object));
        assert_eq!(
            parse_body(br#"{"batch": {"a": 1}}"#, Some("batch"), &limits).unwrap_err(),
            DecodeError::BatchNotArray { found: "an object" }
        );
        assert_eq!(
            parse_body(br#"{"batch": []}"#, Some("batch"), &limits).unwrap_err(),
            DecodeError::EmptyBatch
        );
        // Too deep to parse, inside an envelope: the item and path are still exact.
        let deep = format!(
            r#"{{"sentAt": "x", "batch": [{{"a": 1}}, {{"properties": {}1"#,
            r#"{"k": "#.repeat(200)
        );
        assert_eq!(
            parse_body(deep.as_bytes(), Some("batch"), &limits).unwrap_err(),
            DecodeError::TooDeep {
                index: 1,
                path: format!("properties{}", ".k".repeat(16)),
                max: 16
            }
        );
    }

    #[test]
    fn lone_surrogates_become_the_replacement_character() {
        let cases = [
            (r#"["a\ud83d"]"#, "a\u{fffd}"),
            (r#"["\udc00b"]"#, "\u{fffd}b"),
            (r#"["\ud83d\u0041"]"#, "\u{fffd}A"),
            (r#"["\ud83d\ud83d\ude00"]"#, "\u{fffd}\u{1f600}"),
            (r#"["\\ud83d", "\ud83d"]"#, "\\ud83d"),
        ];
        for (body, first) in cases {
            let body = parse_body(body.as_bytes(), None, &Limits::default())
                .unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(body.items[0], Value::String(first.into()), "{body:?}");
        }
        // A pair stays a pair, and a text without lone ones is left alone.
        assert_eq!(
            replace_lone_surrogates(r#"["\ud83d\ude00", "\\ud83d"]"#),
            None
        );
        // Other bad JSON is still reported where it is.
        let err = parse_body(br#"[{"a": "\ud83d"}, {"b": ]"#, None, &Limits::default());
        assert!(
            matches!(
                err,
                Err(DecodeError::MalformedJson {
                    line: 1,
                    column: 25,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn json_len_is_the_compact_length() {
        let value: Value = serde_json::from_str(r#"{ "a" : [1, 2], "b": "é\n" }"#).unwrap();
        assert_eq!(json_len(&value), serde_json::to_vec(&value).unwrap().len());
        assert_eq!(json_len(&value), r#"{"a":[1,2],"b":"é\n"}"#.len());
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
