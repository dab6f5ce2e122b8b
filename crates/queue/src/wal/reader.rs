//! Reading durable records in LSN order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

use super::segment::Cursor;
use super::{Durable, Lsn, Record, Shared, WalError};

/// Hands out the durable records after a given LSN, in order, in batches.
///
/// Reading goes through the segment files (normally still in the page cache) with a
/// buffered cursor kept open between batches; new durable records are announced on a
/// `watch` channel. Dropping a pending [`WalReader::next_batch`] loses nothing: the next
/// call returns the same records.
pub struct WalReader {
    shared: Arc<Shared>,
    durable: watch::Receiver<Durable>,
    /// LSN of the next record to hand out.
    next_lsn: Lsn,
    cursor: Option<Cursor>,
    linger: Duration,
}

impl WalReader {
    pub(crate) fn new(shared: Arc<Shared>, after: Lsn) -> WalReader {
        let durable = shared.durable.subscribe();
        WalReader {
            shared,
            durable,
            next_lsn: after.saturating_add(1),
            cursor: None,
            linger: Duration::ZERO,
        }
    }

    /// After the first record of a batch is available, wait up to `linger` for the batch to
    /// fill to `max_records` before returning it. The default is zero: return at once.
    pub fn with_linger(mut self, linger: Duration) -> WalReader {
        self.linger = linger;
        self
    }

    /// Waits until at least one durable record is available (then up to the linger time for
    /// more), and returns up to `max_records` records and, beyond the first, about
    /// `max_bytes` of payload, in LSN order.
    ///
    /// Returns an empty `Vec` if `wait` elapses with nothing available, or if the log is
    /// closed and everything has been read.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, WalError> {
        if max_records == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            let Some(limit) = self.wait_for_records(max_records, deadline).await else {
                return Ok(Vec::new());
            };
            let records = self.read(limit, max_records, max_bytes).await?;
            if !records.is_empty() {
                return Ok(records);
            }
            // Only possible when the records we were after had been committed and deleted
            // and the cursor skipped ahead of `limit`; wait for newer ones.
        }
    }

    /// The durable LSN to read up to, once at least one record after `next_lsn` is durable
    /// and the linger time is over; `None` on timeout or when the log is closed and drained.
    async fn wait_for_records(&mut self, max_records: usize, deadline: Instant) -> Option<Lsn> {
        let mut linger_until = None;
        loop {
            let durable = *self.durable.borrow_and_update();
            let available = (durable.lsn + 1).saturating_sub(self.next_lsn);
            let until = if available == 0 {
                if durable.closed {
                    return None;
                }
                deadline
            } else {
                if available >= max_records as u64 || durable.closed || self.linger.is_zero() {
                    return Some(durable.lsn);
                }
                *linger_until.get_or_insert_with(|| Instant::now() + self.linger)
            };
            match timeout_at(until, self.durable.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `Shared`, which we hold, so it cannot be dropped.
                Ok(Err(_)) => return None,
                Err(_) if available == 0 => return None,
                Err(_) => return Some(durable.lsn),
            }
        }
    }

    async fn read(
        &mut self,
        limit: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, WalError> {
        let shared = self.shared.clone();
        let from = self.next_lsn;
        let cursor = self
            .cursor
            .take()
            .filter(|cursor| cursor.next_lsn() == from);
        // File reads block; keep them off the async worker. If this future is dropped the
        // cursor goes with the task and the next call opens a new one at `next_lsn`.
        let (cursor, records) = tokio::task::spawn_blocking(move || {
            let read = |cursor: Option<Cursor>| {
                let mut cursor = match cursor {
                    Some(cursor) => cursor,
                    None => Cursor::open(&shared, from)?,
                };
                let records = cursor.read_batch(&shared, limit, max_records, max_bytes)?;
                Ok::<_, WalError>((cursor, records))
            };
            let reused = cursor.is_some();
            match read(cursor) {
                // A kept cursor can hold bytes read ahead of a write that then failed and was
                // cut off; read again with a fresh one before calling it corruption.
                Err(WalError::Corrupt { .. }) if reused => read(None),
                result => result,
            }
        })
        .await
        .map_err(|e| WalError::Io(std::io::Error::other(e)))??;
        self.next_lsn = cursor.next_lsn();
        self.cursor = Some(cursor);
        Ok(records)
    }
}
