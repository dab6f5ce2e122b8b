//! The writer thread: owns the segment being written and group-commits appends.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use super::record::{self, HEADER_LEN};
use super::{now_ms, record_gauges, segment, Durable, FsyncPolicy, Lsn, Shared, WalError};

/// Upper bound on the appends taken into one write, so one huge burst cannot delay the
/// first callers' replies indefinitely.
const MAX_GROUP_RECORDS: usize = 4096;
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// How often an idle writer wakes to refresh the oldest-pending-age gauge.
const TICK: Duration = Duration::from_secs(1);

/// After failing to create a segment, keep writing to the current one for this long.
const ROLL_RETRY: Duration = Duration::from_secs(5);

pub(crate) struct Append {
    pub(crate) payload: Bytes,
    pub(crate) events: u32,
    pub(crate) reply: oneshot::Sender<Result<Lsn, WalError>>,
}

/// An error after which the log's on-disk state is unknown (a failed fsync may have dropped
/// dirty pages), so the writer stops rather than acknowledge anything else.
struct Fatal(io::Error);

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Append>,
    file: File,
    /// First LSN of the segment being written.
    segment: Lsn,
    segment_len: u64,
    next_lsn: Lsn,
    buf: Vec<u8>,
    /// Written since the last fsync.
    dirty: bool,
    last_sync: Instant,
    no_roll_until: Option<Instant>,
}

struct Waiter {
    lsn: Lsn,
    reply: oneshot::Sender<Result<Lsn, WalError>>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Append>,
        file: File,
        segment: Lsn,
        segment_len: u64,
        next_lsn: Lsn,
    ) -> Writer {
        Writer {
            shared,
            rx,
            file,
            segment,
            segment_len,
            next_lsn,
            buf: Vec::new(),
            dirty: false,
            last_sync: Instant::now(),
            no_roll_until: None,
        }
    }

    pub(crate) fn run(mut self) {
        let result = self.serve();
        let result = result.and_then(|()| if self.dirty { self.sync() } else { Ok(()) });
        let mut state = self.shared.state.lock();
        state.closed = true;
        let durable = Durable {
            lsn: state.last_lsn,
            closed: true,
        };
        drop(state);
        self.shared.durable.send_replace(durable);
        match result {
            Ok(()) => debug!(last_lsn = durable.lsn, "wal writer stopped"),
            Err(Fatal(e)) => error!(error = %e, "wal writer stopped after an i/o error"),
        }
    }

    /// Handles appends until every sender is gone.
    fn serve(&mut self) -> Result<(), Fatal> {
        loop {
            match self.rx.recv_timeout(self.tick()) {
                Ok(first) => {
                    let mut group = vec![first];
                    let mut bytes = group[0].payload.len();
                    while group.len() < MAX_GROUP_RECORDS && bytes < MAX_GROUP_BYTES {
                        let Ok(next) = self.rx.try_recv() else { break };
                        bytes += next.payload.len();
                        group.push(next);
                    }
                    self.write_group(group)?;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let FsyncPolicy::Interval(interval) = self.shared.config.fsync {
                        if self.dirty && self.last_sync.elapsed() >= interval {
                            self.sync()?;
                        }
                    }
                    record_gauges(&self.shared.state.lock().stats());
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }

    fn tick(&self) -> Duration {
        match self.shared.config.fsync {
            FsyncPolicy::Interval(interval) if self.dirty => {
                interval.saturating_sub(self.last_sync.elapsed()).min(TICK)
            }
            _ => TICK,
        }
    }

    fn write_group(&mut self, group: Vec<Append>) -> Result<(), Fatal> {
        let now = now_ms();
        let segment_bytes = self.shared.config.segment_bytes;
        let mut waiters = Vec::with_capacity(group.len());
        let mut events = 0;
        self.buf.clear();
        for append in group {
            let len = (HEADER_LEN + append.payload.len()) as u64;
            let used = self.segment_len + self.buf.len() as u64;
            if used > 0 && used + len > segment_bytes && self.may_roll() {
                self.flush(&mut waiters, events, now)?;
                events = 0;
                self.roll()?;
            }
            record::encode(
                &mut self.buf,
                self.next_lsn,
                now,
                append.events,
                &append.payload,
            );
            waiters.push(Waiter {
                lsn: self.next_lsn,
                reply: append.reply,
            });
            self.next_lsn += 1;
            events += u64::from(append.events);
        }
        self.flush(&mut waiters, events, now)
    }

    /// Writes the buffered records, fsyncs as the policy asks, publishes them and completes
    /// their appends.
    fn flush(&mut self, waiters: &mut Vec<Waiter>, events: u64, now: u64) -> Result<(), Fatal> {
        if waiters.is_empty() {
            return Ok(());
        }
        let bytes = self.buf.len() as u64;
        let count = waiters.len() as u64;
        if let Err(e) = self.file.write_all(&self.buf) {
            // Cut whatever part made it to the file so the next record follows a valid one,
            // and hand the LSNs out again: nobody has seen them.
            warn!(error = %e, records = count, "wal write failed");
            let rollback = self.file.set_len(self.segment_len);
            self.next_lsn -= count;
            self.buf.clear();
            self.shared.state.lock().inflight_bytes -= bytes;
            for waiter in waiters.drain(..) {
                let _ = waiter.reply.send(Err(copy_io_error(&e)));
            }
            return rollback.map_err(Fatal);
        }
        self.buf.clear();
        self.segment_len += bytes;
        self.dirty = true;
        let must_sync = match self.shared.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(interval) => self.last_sync.elapsed() >= interval,
            FsyncPolicy::Never => false,
        };
        if must_sync {
            if let Err(Fatal(e)) = self.sync() {
                for waiter in waiters.drain(..) {
                    let _ = waiter.reply.send(Err(copy_io_error(&e)));
                }
                return Err(Fatal(e));
            }
        }
        metrics::histogram!("tally_wal_group_commit_records").record(count as f64);

        let last = self.next_lsn - 1;
        let stats = {
            let mut state = self.shared.state.lock();
            state.last_lsn = last;
            state.inflight_bytes -= bytes;
            state.pending_bytes += bytes;
            state.pending_records += count;
            state.pending_events += events;
            state.oldest_pending_ms.get_or_insert(now);
            state.stats()
        };
        self.shared.durable.send_replace(Durable {
            lsn: last,
            closed: false,
        });
        for waiter in waiters.drain(..) {
            let _ = waiter.reply.send(Ok(waiter.lsn));
        }
        record_gauges(&stats);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Fatal> {
        let started = Instant::now();
        self.file.sync_data().map_err(Fatal)?;
        self.dirty = false;
        self.last_sync = Instant::now();
        metrics::counter!("tally_wal_fsyncs_total").increment(1);
        metrics::histogram!("tally_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn may_roll(&self) -> bool {
        self.no_roll_until
            .is_none_or(|until| Instant::now() >= until)
    }

    /// Starts a new segment at `next_lsn`. Failing to create it is not fatal: the current
    /// segment just grows past its target size for a while.
    fn roll(&mut self) -> Result<(), Fatal> {
        let policy = self.shared.config.fsync;
        if self.dirty && policy != FsyncPolicy::Never {
            self.sync()?;
        }
        let path = self.shared.segment_path(self.next_lsn);
        let file = match OpenOptions::new().create_new(true).append(true).open(&path) {
            Ok(file) => file,
            Err(e) => {
                warn!(segment = %path.display(), error = %e, "could not start a new wal segment");
                self.no_roll_until = Some(Instant::now() + ROLL_RETRY);
                return Ok(());
            }
        };
        if policy != FsyncPolicy::Never {
            segment::sync_dir(&self.shared.config.dir).map_err(Fatal)?;
        }
        self.file = file;
        self.segment = self.next_lsn;
        self.segment_len = 0;
        self.dirty = false;
        self.no_roll_until = None;
        let all_committed = {
            let mut state = self.shared.state.lock();
            state.segments.push(self.segment);
            state.committed + 1 >= self.segment
        };
        debug!(segment = %path.display(), "started wal segment");
        // The store may have caught up while the old segment was still being written; then
        // no commit would come to delete it.
        let stats = if all_committed {
            self.shared.delete_done_segments().0
        } else {
            self.shared.state.lock().stats()
        };
        record_gauges(&stats);
        Ok(())
    }
}

fn copy_io_error(e: &io::Error) -> WalError {
    WalError::Io(io::Error::new(e.kind(), e.to_string()))
}
