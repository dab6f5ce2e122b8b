use serde::Serialize;

/// Why a whole request was refused. Every message says what is wrong and where, because
/// it goes back to the sender as the 400 response's `message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request body is not valid UTF-8: invalid byte sequence at byte offset {offset}")]
    InvalidUtf8 { offset: usize },

    #[error("request body is empty: expected a JSON array of events or a single event object")]
    EmptyBody,

    /// `line` and `column` are serde_json's: both 1-based, the column counted in bytes.
    #[error("malformed JSON at line {line}, column {column}: {reason}")]
    MalformedJson {
        line: usize,
        column: usize,
        reason: String,
    },

    #[error(
        "request body must be a JSON array of event objects or a single event object, \
         found {found}"
    )]
    NotArrayOrObject { found: &'static str },

    #[error("request body is an empty array: send at least one event")]
    EmptyBatch,

    #[error("too many events: the request has {count}, the limit is {max}")]
    TooManyEvents { count: usize, max: usize },

    /// `path` is relative to the item, like `properties.cart[0].sku`.
    #[error("item {index}: `{path}` is nested more than {max} levels deep")]
    TooDeep {
        index: usize,
        path: String,
        max: usize,
    },
}

/// Why one item of a request was rejected; the other items are still accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemError {
    /// The item's position in the request's array (0 for a single object).
    pub index: usize,
    /// Path of the offending field inside the item, like `event_name` or
    /// `context.device_id`; empty when the item itself is wrong.
    pub field: String,
    pub message: String,
}
