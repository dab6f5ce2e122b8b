//! Wire formats decoded into Tally [`Event`]s.
//!
//! Each wire format has its own module ([`thrivestack`], [`segment`], [`posthog`]) whose
//! `decode` is a pure function from one HTTP request's parts to a [`Decoded`]: the events
//! that passed, plus one [`ItemError`] per item that did not, so one bad event in a batch
//! does not cost the others. Problems with the request as a whole (too large, not UTF-8,
//! not JSON, too many events, nested too deeply, mixed keys) are a [`DecodeError`] and
//! reject the request. Segment and PostHog carry their key in the body, so their decoders
//! also return the key they found; the server authenticates with it.

mod content;
mod error;
mod item;
mod json;
mod limits;
pub mod posthog;
pub mod segment;
#[cfg(test)]
mod test_support;
pub mod thrivestack;

pub use content::decode_content;
pub use error::{DecodeError, ItemError};
pub use limits::{Limits, PostHogLimits, SegmentLimits};

use tally_model::Event;

/// What the server knows about a request besides its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    /// When the server accepted the request, in microseconds since the Unix epoch.
    pub received_at: i64,
    /// The client's IP address; copied into `context.ip` unless the event carries one.
    pub ip: Option<String>,
    /// The `User-Agent` header; copied into `context.user_agent` unless the event
    /// carries one.
    pub user_agent: Option<String>,
}

/// The outcome of decoding one request body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// Accepted events, in request order.
    pub events: Vec<Event>,
    /// One entry per rejected item, in request order, so `events.len() + rejected.len()`
    /// is the number of items in the request.
    pub rejected: Vec<ItemError>,
}
