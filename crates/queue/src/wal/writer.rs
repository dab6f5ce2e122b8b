//! The writer thread: owns the segment being written and group-commits appends.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
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

/// The zero-filled file that becomes the next segment. Not a segment name, so recovery and
/// readers ignore it; a leftover from a crash is replaced.
pub(crate) const SPARE_NAME: &str = "spare-segment.tmp";

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
    /// Bytes of records in the segment: where the next write goes.
    segment_len: u64,
    /// The segment file's length: past `segment_len` it holds zeros written ahead, so
    /// that an fsync of records written there need not also write the file's new size.
    allocated: u64,
    /// The thread zero-filling the spare segment, when one is being prepared or is ready.
    spare: Option<JoinHandle<io::Result<()>>>,
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
        allocated: u64,
        next_lsn: Lsn,
    ) -> Writer {
        Writer {
            shared,
            rx,
            file,
            segment,
            segment_len,
            allocated,
            spare: None,
            next_lsn,
            buf: Vec::new(),
            dirty: false,
            last_sync: Instant::now(),
            no_roll_until: None,
        }
    }

    pub(crate) fn run(mut self) {
        self.prepare_spare();
        let result = self.serve();
        let result = result.and_then(|()| if self.dirty { self.sync() } else { Ok(()) });
        if let Some(spare) = self.spare.take() {
            // Only the zero-filling is lost; the next open prepares a new spare. Removed
            // so a stopped process holds no disk it does not need.
            let _ = spare.join();
            let _ = fs::remove_file(self.shared.config.dir.join(SPARE_NAME));
        }
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
        // A segment without space written ahead (the first after an open, or one whose
        // spare was not ready) is left as soon as a spare is.
        if self.segment_len > 0
            && self.allocated <= self.segment_len
            && self.spare_ready()
            && self.may_roll()
        {
            self.roll()?;
        }
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
        if let Err(e) = self.file.write_all_at(&self.buf, self.segment_len) {
            // Cut whatever part made it to the file so the next record follows a valid one,
            // and hand the LSNs out again: nobody has seen them.
            warn!(error = %e, records = count, "wal write failed");
            let rollback = self.file.set_len(self.segment_len);
            self.allocated = self.segment_len;
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
        self.allocated = self.allocated.max(self.segment_len);
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
    ///
    /// The finished segment is first cut to its records (readers find its end at the end
    /// of the file) and fsynced. The new one is the spare, if its zero-filling is done,
    /// else an empty file.
    fn roll(&mut self) -> Result<(), Fatal> {
        let policy = self.shared.config.fsync;
        if self.allocated > self.segment_len {
            // fsync, not fdatasync: the shorter length must be on disk before the next
            // segment is (readers take a segment's end for its last record's).
            self.file.set_len(self.segment_len).map_err(Fatal)?;
            self.allocated = self.segment_len;
            if policy != FsyncPolicy::Never {
                self.file.sync_all().map_err(Fatal)?;
                self.dirty = false;
            }
        }
        if self.dirty && policy != FsyncPolicy::Never {
            self.sync()?;
        }
        let path = self.shared.segment_path(self.next_lsn);
        let (file, allocated) = match self.take_spare(&path) {
            Some(taken) => taken,
            None => match OpenOptions::new().create_new(true).write(true).open(&path) {
                Ok(file) => (file, 0),
                Err(e) => {
                    warn!(segment = %path.display(), error = %e, "could not start a new wal segment");
                    self.no_roll_until = Some(Instant::now() + ROLL_RETRY);
                    return Ok(());
                }
            },
        };
        if policy != FsyncPolicy::Never {
            segment::sync_dir(&self.shared.config.dir).map_err(Fatal)?;
        }
        self.file = file;
        self.segment = self.next_lsn;
        self.segment_len = 0;
        self.allocated = allocated;
        self.dirty = false;
        self.no_roll_until = None;
        self.prepare_spare();
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

impl Writer {
    /// Starts zero-filling the spare segment in the background, unless one is already
    /// being prepared or ready. Without fsyncs there is nothing to gain from it.
    fn prepare_spare(&mut self) {
        if self.spare.is_some() || self.shared.config.fsync == FsyncPolicy::Never {
            return;
        }
        let path = self.shared.config.dir.join(SPARE_NAME);
        let len = self.shared.config.segment_bytes;
        let spawned = std::thread::Builder::new()
            .name("tally-wal-spare".into())
            .spawn(move || zero_fill(&path, len));
        match spawned {
            Ok(handle) => self.spare = Some(handle),
            Err(e) => warn!(error = %e, "could not start preparing a spare wal segment"),
        }
    }

    fn spare_ready(&self) -> bool {
        self.spare.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// The spare, renamed to `path` and opened, with its length, if it is ready.
    fn take_spare(&mut self, path: &Path) -> Option<(File, u64)> {
        if !self.spare_ready() {
            return None;
        }
        let spare = self.shared.config.dir.join(SPARE_NAME);
        let taken = match self.spare.take().map(JoinHandle::join) {
            Some(Ok(Ok(()))) => rename_open(&spare, path),
            Some(Ok(Err(e))) => Err(e),
            _ => Err(io::Error::other("the spare segment's thread panicked")),
        };
        match taken {
            Ok(file) => Some((file, self.shared.config.segment_bytes)),
            Err(e) => {
                if e.kind() == io::ErrorKind::StorageFull {
                    debug!(error = %e, "no spare wal segment; starting an empty one");
                } else {
                    warn!(error = %e, "could not use the spare wal segment; starting an empty one");
                }
                let _ = fs::remove_file(&spare);
                None
            }
        }
    }
}

/// Writes a file of `len` zero bytes at `path` and fsyncs it, if the volume has room for
/// it and as much again (the segments themselves and the store's commits need the rest).
/// A spare that cannot be finished is removed, never left behind half written.
fn zero_fill(path: &Path, len: u64) -> io::Result<()> {
    let free = crate::free_bytes(path.parent().unwrap_or(Path::new(".")))?;
    if free < len.saturating_mul(2) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{free} bytes free; a spare segment of {len} bytes is made only with twice that free"
            ),
        ));
    }
    let written = write_zeros(path, len);
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

fn write_zeros(path: &Path, len: u64) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Renames the spare to the new segment's name (never over an existing file) and opens it.
fn rename_open(spare: &Path, path: &Path) -> io::Result<File> {
    if path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists", path.display()),
        ));
    }
    fs::rename(spare, path)?;
    OpenOptions::new().write(true).open(path)
}

fn copy_io_error(e: &io::Error) -> WalError {
    WalError::Io(io::Error::new(e.kind(), e.to_string()))
}
