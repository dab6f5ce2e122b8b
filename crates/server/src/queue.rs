//! The queue ingest appends to: the embedded WAL, or a Redis stream in scale-out mode.

use bytes::Bytes;
use tally_queue::{RedisStreams, StreamError, Wal, WalError};

/// Where accepted events go. An enum rather than a trait object: two backends, and
/// `append` is async.
#[derive(Clone)]
pub(crate) enum Queue {
    Wal(Wal),
    Redis(RedisStreams),
}

/// Why an append failed, as ingest answers it (always a 503: nothing is accepted).
pub(crate) enum AppendError {
    Full,
    Closed,
    Other(String),
}

/// What `/metrics` and `/readyz` report about the queue.
pub(crate) struct QueueGauges {
    pub pending_bytes: Option<u64>,
    pub pending_events: Option<u64>,
    pub pending_records: u64,
    pub oldest_age_secs: f64,
    /// Entries not yet read by the writers (Redis only).
    pub lag: Option<u64>,
    /// Whether appends would be accepted now.
    pub ok: bool,
}

impl Queue {
    pub(crate) async fn append(&self, payload: Bytes, events: u32) -> Result<(), AppendError> {
        match self {
            Queue::Wal(wal) => wal
                .append(payload, events)
                .await
                .map(drop)
                .map_err(|e| match e {
                    WalError::Full { .. } => AppendError::Full,
                    WalError::Closed => AppendError::Closed,
                    other => AppendError::Other(other.to_string()),
                }),
            Queue::Redis(streams) => streams
                .append(&[(payload, events)])
                .await
                .map(drop)
                .map_err(|e| match e {
                    StreamError::Full { .. } => AppendError::Full,
                    other => AppendError::Other(other.to_string()),
                }),
        }
    }

    pub(crate) async fn gauges(&self, max_pending_bytes: u64) -> QueueGauges {
        match self {
            Queue::Wal(wal) => {
                let s = wal.stats();
                QueueGauges {
                    pending_bytes: Some(s.pending_bytes),
                    pending_events: Some(s.pending_events),
                    pending_records: s.pending_records,
                    oldest_age_secs: s.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()),
                    lag: None,
                    ok: s.pending_bytes < max_pending_bytes,
                }
            }
            Queue::Redis(streams) => match streams.stats().await {
                Ok(s) => QueueGauges {
                    pending_bytes: None,
                    pending_events: None,
                    pending_records: s.pending + s.lag.unwrap_or(0),
                    oldest_age_secs: s.oldest_age.map_or(0.0, |d| d.as_secs_f64()),
                    lag: s.lag,
                    ok: s.length < streams.config().max_len,
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the redis stream's statistics");
                    QueueGauges {
                        pending_bytes: None,
                        pending_events: None,
                        pending_records: 0,
                        oldest_age_secs: 0.0,
                        lag: None,
                        ok: false,
                    }
                }
            },
        }
    }
}
