//! A gzip bomb must be refused without inflating it: peak memory grows by about the
//! decompression bound, not by the bomb's size. Its own test binary, with one test, so
//! the process's peak resident size measures this decode alone.

use std::io::Write;

use flate2::write::GzEncoder;
use tally_ingest::posthog::{self, PostHogRequest};
use tally_ingest::{DecodeError, PostHogLimits, RequestMeta};

/// The process's peak resident set size (`VmHWM`), in bytes.
#[cfg(target_os = "linux")]
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: usize = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

#[cfg(target_os = "linux")]
#[test]
fn gzip_bomb_costs_only_the_bound() {
    const MIB: usize = 1024 * 1024;
    // 64 MiB of zeros, compressed to about 64 KiB.
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; MIB];
    for _ in 0..64 {
        encoder.write_all(&zeros).unwrap();
    }
    drop(zeros);
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < MIB, "{}", bomb.len());

    let limits = PostHogLimits {
        max_decompressed_bytes: 4 * MIB,
        ..PostHogLimits::default()
    };
    let req = PostHogRequest {
        path: "/batch/",
        body: &bomb,
        ..PostHogRequest::default()
    };
    let before = peak_rss();
    let err = posthog::decode(&req, &RequestMeta::default(), &limits).unwrap_err();
    let grew = peak_rss().saturating_sub(before);
    assert_eq!(err, DecodeError::DecompressedTooLarge { max: 4 * MIB });
    // Inflating the bomb would take 64 MiB; the bound allows 4 MiB plus small buffers.
    assert!(grew < 12 * MIB, "peak resident size grew by {grew} bytes");
}
