/// Bounds on what one request may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most events (array items) one request may carry.
    pub max_events: usize,
    /// How deeply objects and arrays may nest inside one event. The event object itself
    /// is depth 0, so `properties` is depth 1 and `properties.cart` depth 2. Values above
    /// [`Limits::MAX_DEPTH`] count as `MAX_DEPTH`.
    pub max_depth: usize,
    /// Timestamps more than this many seconds after `received_at` are replaced by
    /// `received_at`: the sender's clock is wrong, and a future event would sit at the
    /// edge of every report.
    pub max_future_skew_s: i64,
}

impl Limits {
    /// The deepest nesting `max_depth` can allow. The JSON parser refuses anything past
    /// 128 levels (that keeps deep bodies from overflowing the stack); staying well
    /// below it means the parser never fails before our own, more precise, depth check.
    pub const MAX_DEPTH: usize = 100;

    pub(crate) fn depth(&self) -> usize {
        self.max_depth.min(Self::MAX_DEPTH)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 1000,
            max_depth: 16,
            max_future_skew_s: 23 * 3600,
        }
    }
}

/// Bounds on a Segment HTTP Tracking API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimits {
    /// Largest single call, measured as its compact JSON; a larger item is rejected and
    /// the others kept. Segment's limit is 32 KB.
    pub max_event_bytes: usize,
    /// Largest request body; a larger body is refused whole. Segment's limit is 500 KB
    /// per batch; it applies to single calls too.
    pub max_batch_bytes: usize,
    /// Most calls one batch may carry.
    pub max_events: usize,
    /// As [`Limits::max_depth`].
    pub max_depth: usize,
    /// As [`Limits::max_future_skew_s`].
    pub max_future_skew_s: i64,
}

impl SegmentLimits {
    pub(crate) fn base(&self) -> Limits {
        Limits {
            max_events: self.max_events,
            max_depth: self.max_depth,
            max_future_skew_s: self.max_future_skew_s,
        }
    }
}

impl Default for SegmentLimits {
    fn default() -> Self {
        let base = Limits::default();
        SegmentLimits {
            max_event_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            max_events: base.max_events,
            max_depth: base.max_depth,
            max_future_skew_s: base.max_future_skew_s,
        }
    }
}

/// Bounds on a PostHog capture request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostHogLimits {
    /// Largest raw body (or `?data=` value) on every route but `/batch`.
    pub max_body_bytes: usize,
    /// Largest raw body on `/batch`.
    pub max_batch_body_bytes: usize,
    /// Most bytes a gzip payload may inflate to. Decompression stops as soon as it
    /// passes this, so a small "gzip bomb" costs no more memory than the bound.
    pub max_decompressed_bytes: usize,
    /// Most events one request may carry.
    pub max_events: usize,
    /// As [`Limits::max_depth`].
    pub max_depth: usize,
    /// As [`Limits::max_future_skew_s`]; PostHog's own cut-off is 23 h.
    pub max_future_skew_s: i64,
}

impl PostHogLimits {
    pub(crate) fn base(&self) -> Limits {
        Limits {
            max_events: self.max_events,
            max_depth: self.max_depth,
            max_future_skew_s: self.max_future_skew_s,
        }
    }
}

impl Default for PostHogLimits {
    fn default() -> Self {
        let base = Limits::default();
        PostHogLimits {
            max_body_bytes: 2 * 1024 * 1024,
            max_batch_body_bytes: 20 * 1024 * 1024,
            max_decompressed_bytes: 20 * 1024 * 1024,
            max_events: base.max_events,
            max_depth: base.max_depth,
            max_future_skew_s: base.max_future_skew_s,
        }
    }
}
