//! `Content-Encoding` undone once, for every wire format.
//!
//! SDKs of the Segment family gzip their batches (analytics-node, analytics-python with
//! `gzip=True`), posthog-js gzips with a query hint, and some clients send gzip with no
//! header at all. [`decode_content`] undoes the codings a request names (gzip, deflate,
//! br, identity, in the order they were applied), and also a gzip body that lost its
//! header (by its magic bytes 1f 8b: JSON never starts with them). Output is bounded by
//! one cap for every route, so a small "bomb" costs no more memory than the cap.

use std::borrow::Cow;
use std::io::Read;

use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};

use crate::json::looks_like_json;
use crate::DecodeError;

pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Undoes `content_encoding` (the header's value, if any) on `body`, refusing output past
/// `max_decompressed` bytes. A body with no (or an `identity`) coding is returned as it
/// is, unless it starts with the gzip magic bytes.
pub fn decode_content<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    max_decompressed: usize,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let codings = parse_codings(content_encoding)?;
    let mut out = Cow::Borrowed(body);
    // Codings are listed in the order they were applied: undo them last first.
    for coding in codings.iter().rev() {
        out = Cow::Owned(match coding {
            // A client that labels plain JSON as gzip loses nothing by it: JSON never
            // starts with the magic bytes, so there is nothing to undo.
            Coding::Gzip if !out.starts_with(&GZIP_MAGIC) && looks_like_json(&out) => continue,
            Coding::Gzip => gunzip(&out, max_decompressed)?,
            Coding::Deflate => inflate(&out, max_decompressed)?,
            Coding::Brotli => unbrotli(&out, max_decompressed)?,
        });
    }
    if codings.is_empty() && out.starts_with(&GZIP_MAGIC) {
        out = Cow::Owned(gunzip(&out, max_decompressed)?);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

fn parse_codings(header: Option<&str>) -> Result<Vec<Coding>, DecodeError> {
    let mut codings = Vec::new();
    for coding in header.unwrap_or("").split(',') {
        let coding = match coding.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            "br" => Coding::Brotli,
            _ => {
                return Err(DecodeError::UnsupportedEncoding {
                    encoding: header.unwrap_or("").trim().to_owned(),
                })
            }
        };
        codings.push(coding);
    }
    Ok(codings)
}

/// Inflates a gzip member, refusing output past `max` bytes.
pub(crate) fn gunzip(compressed: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    read_bounded(GzDecoder::new(compressed), max).map_err(|e| match e {
        Bounded::TooLarge => DecodeError::DecompressedTooLarge { max },
        Bounded::Io(e) => DecodeError::InvalidGzip {
            reason: e.to_string(),
        },
    })
}

/// `deflate` is zlib-wrapped by the HTTP spec, but some clients send raw deflate: the
/// zlib header (a first byte with compression method 8 and a valid check) tells which.
fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let zlib = compressed.len() >= 2
        && compressed[0] & 0x0f == 8
        && (u16::from(compressed[0]) << 8 | u16::from(compressed[1])) % 31 == 0;
    let result = if zlib {
        read_bounded(ZlibDecoder::new(compressed), max)
    } else {
        read_bounded(DeflateDecoder::new(compressed), max)
    };
    result.map_err(|e| invalid("deflate", max, e))
}

fn unbrotli(compressed: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    read_bounded(brotli::Decompressor::new(compressed, 16 * 1024), max)
        .map_err(|e| invalid("br", max, e))
}

fn invalid(encoding: &'static str, max: usize, e: Bounded) -> DecodeError {
    match e {
        Bounded::TooLarge => DecodeError::DecompressedTooLarge { max },
        Bounded::Io(e) => DecodeError::InvalidEncoded {
            encoding,
            reason: e.to_string(),
        },
    }
}

enum Bounded {
    TooLarge,
    Io(std::io::Error),
}

/// Reads all of `reader`, stopping with [`Bounded::TooLarge`] as soon as the output
/// passes `max`. The buffer never grows past `max` either, so a bomb of any ratio costs
/// at most `max` bytes before it is refused.
fn read_bounded(reader: impl Read, max: usize) -> Result<Vec<u8>, Bounded> {
    let mut reader = reader.take(max as u64 + 1);
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Bounded::Io(e)),
        };
        if out.len() + n > max {
            return Err(Bounded::TooLarge);
        }
        if out.capacity() - out.len() < n {
            let target = (out.capacity() * 2).max(64 * 1024).min(max);
            out.reserve_exact(target.max(out.len() + n) - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const BODY: &[u8] = br#"{"batch":[{"type":"track","event":"a","userId":"u1"}]}"#;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn every_coding_is_undone() {
        let cases: [(&str, Vec<u8>); 6] = [
            ("gzip", gzip(BODY)),
            ("x-gzip", gzip(BODY)),
            ("GZIP", gzip(BODY)),
            ("deflate", zlib(BODY)),
            ("deflate", raw_deflate(BODY)),
            ("identity", BODY.to_vec()),
        ];
        for (coding, body) in cases {
            let out = decode_content(&body, Some(coding), 1 << 20).unwrap();
            assert_eq!(&*out, BODY, "{coding}");
        }
        // Applied in order: gzip, then deflate; undone in reverse.
        let twice = zlib(&gzip(BODY));
        let out = decode_content(&twice, Some("gzip, deflate"), 1 << 20).unwrap();
        assert_eq!(&*out, BODY);
    }

    #[test]
    fn brotli_is_undone() {
        let mut compressed = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut compressed, 4096, 5, 22);
            w.write_all(BODY).unwrap();
        }
        assert_eq!(
            &*decode_content(&compressed, Some("br"), 1 << 20).unwrap(),
            BODY
        );
        let err = decode_content(b"not brotli at all", Some("br"), 1024).unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidEncoded { encoding: "br", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_gzip_body_without_its_header_is_undone() {
        let body = gzip(BODY);
        assert_eq!(&*decode_content(&body, None, 1 << 20).unwrap(), BODY);
        assert!(matches!(
            decode_content(BODY, None, 1 << 20).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn bombs_bad_data_and_unknown_codings_are_refused() {
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert_eq!(
            decode_content(&bomb, Some("gzip"), 1000).unwrap_err(),
            DecodeError::DecompressedTooLarge { max: 1000 }
        );
        let bomb = zlib(&vec![b' '; 1 << 20]);
        assert_eq!(
            decode_content(&bomb, Some("deflate"), 1000).unwrap_err(),
            DecodeError::DecompressedTooLarge { max: 1000 }
        );
        assert!(matches!(
            decode_content(b"\x1f\x8bnot gzip", Some("gzip"), 1000).unwrap_err(),
            DecodeError::InvalidGzip { .. }
        ));
        assert!(matches!(
            decode_content(b"plain text", Some("gzip"), 1000).unwrap_err(),
            DecodeError::InvalidGzip { .. }
        ));
        // Plain JSON labelled gzip is read as it is.
        assert_eq!(&*decode_content(BODY, Some("gzip"), 1000).unwrap(), BODY);
        assert!(matches!(
            decode_content(BODY, Some("deflate"), 1000).unwrap_err(),
            DecodeError::InvalidEncoded { .. }
        ));
        assert_eq!(
            decode_content(BODY, Some("zstd"), 1000).unwrap_err(),
            DecodeError::UnsupportedEncoding {
                encoding: "zstd".into()
            }
        );
    }
}
