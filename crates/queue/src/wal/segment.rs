//! Segment files: naming, recovery scans and the sequential cursor readers use.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use super::record::{self, Header, HEADER_LEN};
use super::{Lsn, Pending, Record, Shared, WalError};

const EXTENSION: &str = ".wal";
const READ_BUFFER: usize = 256 * 1024;

pub(crate) fn file_name(first: Lsn) -> String {
    format!("{first:020}{EXTENSION}")
}

fn parse_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(EXTENSION)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// First LSNs of the segment files in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<Lsn>> {
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_file_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Makes creations and deletions of files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The first invalid record found by [`scan`].
#[derive(Debug)]
pub(crate) struct Damage {
    pub(crate) offset: u64,
    pub(crate) reason: String,
}

/// What a recovery scan found in one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// One past the LSN of the last valid record (`first` if there is none).
    pub(crate) end_lsn: Lsn,
    /// Bytes up to the end of the last valid record.
    pub(crate) valid_len: u64,
    pub(crate) file_len: u64,
    pub(crate) damage: Option<Damage>,
}

/// Reads and verifies every record of the segment starting at `first`, adding those after
/// `committed` to `pending`. Stops at the first invalid or partial record, or at zeros:
/// space written ahead of the records, which is not damage.
pub(crate) fn scan(
    path: &Path,
    first: Lsn,
    committed: Lsn,
    pending: &mut Pending,
) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut payload = Vec::new();
    let mut offset = 0;
    let mut next_lsn = first;
    let damage = loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            break None;
        }
        let mut buf = [0; HEADER_LEN];
        if remaining < HEADER_LEN as u64 {
            let partial = &mut buf[..remaining as usize];
            reader.read_exact(partial)?;
            if record::is_unwritten(partial) {
                break None;
            }
            break Some(format!("partial header of {remaining} bytes"));
        }
        reader.read_exact(&mut buf)?;
        if record::is_unwritten(&buf) {
            break None;
        }
        let header = match Header::decode(&buf) {
            Ok(header) => header,
            Err(reason) => break Some(reason),
        };
        if header.lsn != next_lsn {
            break Some(format!("lsn {} where {next_lsn} was expected", header.lsn));
        }
        if header.record_len() > remaining {
            break Some(format!(
                "partial record: {} of {} bytes",
                remaining,
                header.record_len()
            ));
        }
        payload.resize(header.payload_len as usize, 0);
        reader.read_exact(&mut payload)?;
        if let Err(reason) = header.verify(&payload) {
            break Some(reason);
        }
        if header.lsn > committed {
            pending.bytes += header.record_len();
            pending.records += 1;
            pending.events += u64::from(header.events);
            pending.oldest_ms.get_or_insert(header.appended_at_ms);
        }
        offset += header.record_len();
        next_lsn += 1;
    };
    Ok(Scan {
        end_lsn: next_lsn,
        valid_len: offset,
        file_len,
        damage: damage.map(|reason| Damage { offset, reason }),
    })
}

/// Reads records in LSN order across segments, never past a limit the caller knows to be
/// fully written. Any error leaves it in an unknown position: callers drop it and open a new
/// one.
pub(crate) struct Cursor {
    /// First LSN of the open segment.
    segment: Lsn,
    reader: BufReader<File>,
    /// Offset in the segment of the record at `next_lsn`.
    offset: u64,
    next_lsn: Lsn,
    /// Header of the record at `next_lsn`, read but its payload not yet consumed.
    peeked: Option<Header>,
    /// The buffer was dropped and the record at `next_lsn` read again from the file.
    refreshed: bool,
    /// The last header read was 32 zero bytes.
    zero_header: bool,
}

impl Cursor {
    /// A cursor at `lsn`, which must be at most one past the last durable LSN. If `lsn` was
    /// already deleted, the cursor starts at the oldest record on disk.
    pub(crate) fn open(shared: &Shared, lsn: Lsn) -> Result<Cursor, WalError> {
        let mut candidate = shared.segment_for(lsn);
        loop {
            let Some(first) = candidate else {
                return Err(io::Error::new(io::ErrorKind::NotFound, "wal has no segments").into());
            };
            let file = match File::open(shared.segment_path(first)) {
                Ok(file) => file,
                // A commit deleted it after the lookup, so all of it is committed: move on.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    candidate = shared.segment_after(first);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut cursor = Cursor {
                segment: first,
                reader: BufReader::with_capacity(READ_BUFFER, file),
                offset: 0,
                next_lsn: first,
                peeked: None,
                refreshed: false,
                zero_header: false,
            };
            // Records before `lsn` are durable, hence complete; stop at the segment's end,
            // `next_header` moves on from there.
            while cursor.next_lsn < lsn && cursor.has_more()? {
                cursor.read_header()?;
                cursor.skip_payload()?;
            }
            return Ok(cursor);
        }
    }

    pub(crate) fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The header of the next record if its LSN is at most `limit`, without consuming it.
    /// Everything up to `limit` must be completely written.
    pub(crate) fn next_header(
        &mut self,
        shared: &Shared,
        limit: Lsn,
    ) -> Result<Option<Header>, WalError> {
        loop {
            if self.next_lsn > limit {
                return Ok(None);
            }
            if let Some(header) = self.peeked {
                return Ok(Some(header));
            }
            if self.has_more()? {
                match self.read_header() {
                    Ok(header) => return Ok(Some(header)),
                    // The buffer may hold what the file had when it was filled: the zeros
                    // written ahead of the newest segment's records, or the end of a
                    // segment since cut to its records. Read once more from the file
                    // (a reader keeping up meets this at almost every read; the callers'
                    // fallback, a fresh cursor, would walk the segment from its start).
                    Err(_) if !self.refreshed => {
                        self.refresh(0)?;
                        continue;
                    }
                    // Zeros still on disk after a finished segment's records (its cut
                    // did not reach the disk before a crash): the records go on in the
                    // next segment, as at its end.
                    Err(_) if self.zero_header => {}
                    Err(e) => return Err(e),
                }
            }
            // The end of this segment, and the record is durable: it is in a later segment.
            let Some(next) = shared.segment_after(self.segment) else {
                return Err(self.corrupt(format!("durable record {} is missing", self.next_lsn)));
            };
            if next < self.next_lsn {
                return Err(self.corrupt(format!("next segment starts at lsn {next}")));
            }
            match File::open(shared.segment_path(next)) {
                Ok(file) => {
                    self.segment = next;
                    self.reader = BufReader::with_capacity(READ_BUFFER, file);
                    self.offset = 0;
                    self.refreshed = false;
                    // Past a gap left when the store was ahead of the log; all committed.
                    self.next_lsn = next;
                }
                // Committed and deleted under us: we are behind the store, restart at the
                // oldest record left.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    *self = Cursor::open(shared, next)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Consumes the payload of the record returned by [`Cursor::next_header`].
    pub(crate) fn take_payload(&mut self) -> Result<Bytes, WalError> {
        let header = self.peeked.expect("take_payload without next_header");
        let mut payload = vec![0; header.payload_len as usize];
        self.read_exact(&mut payload)?;
        if header.verify(&payload).is_err() && !self.refreshed {
            // As in `next_header`: the buffer may predate the payload.
            self.refresh(HEADER_LEN as u64)?;
            self.read_exact(&mut payload)?;
        }
        header
            .verify(&payload)
            .map_err(|reason| self.corrupt(reason))?;
        self.advance(header);
        Ok(Bytes::from(payload))
    }

    /// Skips the payload of the record returned by [`Cursor::next_header`], unverified: it
    /// was verified when recovered or written by this process.
    pub(crate) fn skip_payload(&mut self) -> Result<(), WalError> {
        let header = self.peeked.expect("skip_payload without next_header");
        self.reader.seek_relative(i64::from(header.payload_len))?;
        self.advance(header);
        Ok(())
    }

    /// Reads up to `max_records` records with LSN at most `limit` and, beyond the first,
    /// about `max_bytes` of payload.
    pub(crate) fn read_batch(
        &mut self,
        shared: &Shared,
        limit: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, WalError> {
        let mut records = Vec::new();
        let mut bytes = 0;
        while records.len() < max_records {
            let Some(header) = self.next_header(shared, limit)? else {
                break;
            };
            let len = header.payload_len as usize;
            if !records.is_empty() && bytes + len > max_bytes {
                break;
            }
            let payload = self.take_payload()?;
            bytes += len;
            records.push(Record {
                lsn: header.lsn,
                appended_at_ms: header.appended_at_ms,
                events: header.events,
                payload,
            });
        }
        Ok(records)
    }

    fn advance(&mut self, header: Header) {
        self.peeked = None;
        self.refreshed = false;
        self.offset += header.record_len();
        self.next_lsn += 1;
    }

    /// Drops the buffer and positions the file `skip` bytes into the record at `next_lsn`.
    fn refresh(&mut self, skip: u64) -> io::Result<()> {
        self.reader.seek(SeekFrom::Start(self.offset + skip))?;
        self.refreshed = true;
        Ok(())
    }

    fn has_more(&mut self) -> io::Result<bool> {
        Ok(!self.reader.fill_buf()?.is_empty())
    }

    fn read_header(&mut self) -> Result<Header, WalError> {
        let mut buf = [0; HEADER_LEN];
        self.read_exact(&mut buf)?;
        self.zero_header = record::is_unwritten(&buf);
        let header = Header::decode(&buf).map_err(|reason| self.corrupt(reason))?;
        if header.lsn != self.next_lsn {
            return Err(self.corrupt(format!(
                "lsn {} where {} was expected",
                header.lsn, self.next_lsn
            )));
        }
        self.peeked = Some(header);
        Ok(header)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), WalError> {
        self.reader.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.corrupt("record cut short".into())
            } else {
                e.into()
            }
        })
    }

    fn corrupt(&self, reason: String) -> WalError {
        WalError::Corrupt {
            segment: file_name(self.segment),
            offset: self.offset,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_like_lsns_and_parse_back() {
        assert_eq!(file_name(1), "00000000000000000001.wal");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        for bad in [
            "1.wal",
            "0000000000000000000x.wal",
            "00000000000000000001.tmp",
            "",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
