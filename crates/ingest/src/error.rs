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

    /// The server answers 413.
    #[error("request body is {size} bytes, over the limit of {max} bytes")]
    BodyTooLarge { size: usize, max: usize },

    /// A compressed payload inflates past the limit; decompression stopped there. The
    /// server answers 413.
    #[error("decompressed request body is over the limit of {max} bytes")]
    DecompressedTooLarge { max: usize },

    #[error("request body is not valid gzip data: {reason}")]
    InvalidGzip { reason: String },

    /// A `deflate` or `br` body that does not decompress.
    #[error("request body is not valid {encoding} data: {reason}")]
    InvalidEncoded {
        encoding: &'static str,
        reason: String,
    },

    #[error("request payload is marked base64 but is not valid base64: {reason}")]
    InvalidBase64 { reason: String },

    #[error(
        "unsupported Content-Encoding `{encoding}`: send gzip, deflate, br or an uncompressed body"
    )]
    UnsupportedEncoding { encoding: String },

    #[error("unsupported compression `{name}`: send gzip-js, base64 or uncompressed JSON")]
    UnsupportedCompression { name: String },

    #[error("form body has no `data` field: send the JSON events as `data=...`")]
    MissingFormData,

    #[error("`batch` must be a JSON array of events, found {found}")]
    BatchNotArray { found: &'static str },

    /// A request-level field (a key, the batch's shared `context`) has the wrong type.
    /// `message` names the field.
    #[error("{message}")]
    InvalidField { field: String, message: String },

    /// The events of one request name different projects; the server cannot tell which
    /// key to check.
    #[error(
        "the request carries two different project keys, `{first}` and `{second}`: \
         send each project's events in its own request"
    )]
    MixedKeys { first: String, second: String },
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
