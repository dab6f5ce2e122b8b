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
