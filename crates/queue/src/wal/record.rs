//! Encoding and decoding of one record: a fixed 32-byte header followed by the payload.

use super::Lsn;

/// `b"TWL"` plus the format version in the high byte, read as a little-endian `u32`.
pub(crate) const MAGIC: u32 = u32::from_le_bytes([b'T', b'W', b'L', 1]);

/// Size of the fixed header that precedes every payload.
pub(crate) const HEADER_LEN: usize = 32;

/// Largest payload a record may carry. A header claiming more is corrupt, and larger appends
/// are refused, so a damaged length can never make recovery allocate gigabytes.
pub(crate) const MAX_PAYLOAD_LEN: usize = 64 * 1024 * 1024;

/// Offset of the first byte covered by the checksum (everything after the crc field).
const CRC_START: usize = 12;

/// The decoded fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) payload_len: u32,
    pub(crate) crc: u32,
    pub(crate) lsn: Lsn,
    pub(crate) appended_at_ms: u64,
    pub(crate) events: u32,
}

impl Header {
    /// Total bytes the record occupies on disk.
    pub(crate) fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    /// Parses a header, checking what can be checked without the payload.
    pub(crate) fn decode(buf: &[u8; HEADER_LEN]) -> Result<Header, String> {
        let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#010x}"));
        }
        let payload_len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
        if payload_len as usize > MAX_PAYLOAD_LEN {
            return Err(format!(
                "payload length {payload_len} exceeds {MAX_PAYLOAD_LEN}"
            ));
        }
        Ok(Header {
            payload_len,
            crc: u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")),
            lsn: u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes")),
            appended_at_ms: u64::from_le_bytes(buf[20..28].try_into().expect("8 bytes")),
            events: u32::from_le_bytes(buf[28..32].try_into().expect("4 bytes")),
        })
    }

    /// Checks the payload against the header's checksum.
    pub(crate) fn verify(&self, payload: &[u8]) -> Result<(), String> {
        let actual = checksum(self.lsn, self.appended_at_ms, self.events, payload);
        if actual == self.crc {
            Ok(())
        } else {
            Err(format!(
                "checksum mismatch: stored {:#010x}, computed {actual:#010x}",
                self.crc
            ))
        }
    }
}

fn checksum(lsn: Lsn, appended_at_ms: u64, events: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(&appended_at_ms.to_le_bytes());
    hasher.update(&events.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Whether `bytes`, where a header would start, are zeros: space written ahead of the
/// records, which ends a segment's records (no header is zeros: the magic is not).
pub(crate) fn is_unwritten(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Appends the encoded record to `out`. The payload must not exceed [`MAX_PAYLOAD_LEN`].
pub(crate) fn encode(
    out: &mut Vec<u8>,
    lsn: Lsn,
    appended_at_ms: u64,
    events: u32,
    payload: &[u8],
) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN);
    let start = out.len();
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&appended_at_ms.to_le_bytes());
    out.extend_from_slice(&events.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + CRC_START..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 1_700_000_000_000, 3, payload);
        buf
    }

    fn decode_all(buf: &[u8]) -> Result<Header, String> {
        let header = Header::decode(buf[..HEADER_LEN].try_into().unwrap())?;
        let payload = &buf[HEADER_LEN..];
        if payload.len() != header.payload_len as usize {
            return Err("length".into());
        }
        header.verify(payload)?;
        Ok(header)
    }

    #[test]
    fn round_trip() {
        let buf = encoded(b"hello");
        assert_eq!(buf.len(), HEADER_LEN + 5);
        let header = decode_all(&buf).unwrap();
        assert_eq!(header.lsn, 42);
        assert_eq!(header.appended_at_ms, 1_700_000_000_000);
        assert_eq!(header.events, 3);
        assert_eq!(header.payload_len, 5);
        assert_eq!(header.record_len(), buf.len() as u64);
    }

    #[test]
    fn checksum_matches_the_documented_layout() {
        let buf = encoded(b"abc");
        let stored = u32::from_le_bytes(buf[8..12].try_into().unwrap());
        assert_eq!(stored, crc32fast::hash(&buf[12..]));
        assert_eq!(&buf[0..4], b"TWL\x01");
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let clean = encoded(b"some payload bytes");
        for at in 0..clean.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut buf = clean.clone();
                buf[at] ^= mask;
                assert!(
                    decode_all(&buf).is_err(),
                    "flip {mask:#x} at {at} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_reading_the_payload() {
        let mut buf = encoded(b"");
        buf[4..8].copy_from_slice(&(MAX_PAYLOAD_LEN as u32 + 1).to_le_bytes());
        let err = Header::decode(buf[..HEADER_LEN].try_into().unwrap()).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
    }
}
