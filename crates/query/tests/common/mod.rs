//! What the property tests over one shared DuckDB store have in common: the store (one
//! per test binary, each case in a project of its own), its counter for projects and
//! queue positions, and the dataset's origin and "now".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use tally_store::duckdb::{DuckConfig, DuckStore};

pub(crate) const MINUTE: i64 = 60_000_000;

/// 2026-11-02T00:00:00Z, minute 0 of the generated streams.
pub(crate) fn origin() -> i64 {
    DateTime::parse_from_rfc3339("2026-11-02T00:00:00Z")
        .unwrap()
        .timestamp_micros()
}

/// The queries' "now": 2026-11-20T00:00:00Z.
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub(crate) struct Shared {
    _dir: tempfile::TempDir,
    pub(crate) store: DuckStore,
    next: AtomicU64,
}

impl Shared {
    /// A number not given before in this binary: a project's suffix or a queue position.
    pub(crate) fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }
}

pub(crate) fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = DuckStore::open(&dir.path().join("t.duckdb"), DuckConfig::default()).unwrap();
        Shared {
            _dir: dir,
            store,
            next: AtomicU64::new(1),
        }
    })
}
