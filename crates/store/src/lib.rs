//! Tally's event store.
//!
//! A store takes batches of normalized events from the writer and answers compiled SQL
//! from the query engine. The one implementation today is embedded DuckDB
//! ([`duckdb::DuckStore`]); [`clickhouse::ClickHouseStore`] is the scale-out one, behind
//! the same [`Store`] trait (its writes are complete; the query engine does not compile
//! ClickHouse SQL yet).
//!
//! Exactly-once: [`Store::insert`] writes the events *and* the queue position they came
//! from in one transaction, so after a crash the writer resumes from
//! [`Store::committed_lsn`] and neither loses nor repeats a batch.

pub mod clickhouse;
mod derived;
pub mod duckdb;
mod error;
pub mod sql;

pub use error::StoreError;
use serde_json::Value;
use tally_model::StoredBatch;

/// A queue position: the last queue record whose events are in the store.
pub type Lsn = u64;

/// A bound parameter of a compiled query.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    Int(i64),
    Float(f64),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
}

/// A compiled query: SQL text with `?` placeholders and their values, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sql {
    pub text: String,
    pub params: Vec<Param>,
}

/// Rows of a query result, each a list of JSON values in select-list order.
pub type Rows = Vec<Vec<Value>>;

/// What one insert wrote, for metrics and for result caches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InsertStats {
    pub events: usize,
    pub persons: usize,
    pub groups: usize,
    /// The projects whose people, accounts, memberships or identity links this insert
    /// wrote: any answer of theirs may have changed, whatever its date range (a link
    /// merges a device's whole history into a person). Events alone change only the
    /// answers whose ranges hold their times.
    pub identities: std::collections::BTreeSet<String>,
    /// How the visits table took in the insert.
    pub visits: VisitsPath,
}

/// How a store kept its visits table up to date for one insert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VisitsPath {
    /// The store keeps no visits table (ClickHouse).
    #[default]
    None,
    /// Cut in the writer's memory: the insert only appended to open visits.
    Memory,
    /// Re-derived with SQL from the stored events (late events, links, sessions not
    /// seen recently).
    Sql,
}

impl VisitsPath {
    pub fn as_str(self) -> &'static str {
        match self {
            VisitsPath::None => "none",
            VisitsPath::Memory => "memory",
            VisitsPath::Sql => "sql",
        }
    }
}

/// The SQL a store speaks, for the query engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    DuckDb,
    ClickHouse,
}

/// An event store. Calls block: run them on a blocking thread.
pub trait Store: Send + Sync + 'static {
    /// The SQL [`Store::query`] takes.
    fn dialect(&self) -> Dialect {
        Dialect::DuckDb
    }

    /// Whether reads may use the pre-aggregated rollups (ClickHouse's `events_hourly`),
    /// which are exact only where the server drops a replayed insert.
    fn rollups(&self) -> bool {
        false
    }

    /// Why the store cannot work again until the process restarts, once it has said so
    /// (DuckDB invalidates a database after a fatal error, such as a write that failed
    /// halfway on a full disk: every later statement fails); `None` while it can.
    fn failure(&self) -> Option<String> {
        None
    }

    /// The highest queue position whose events are committed (0 when empty).
    fn committed_lsn(&self) -> Result<Lsn, StoreError>;

    /// Inserts the events of `batches` and records `upto` as committed, atomically.
    /// (Tests and tools holding an [`tally_model::EventBatch`] use its `as_stored`.)
    fn insert(&self, batches: &[StoredBatch<'_>], upto: Lsn) -> Result<InsertStats, StoreError>;

    /// Runs a compiled read-only query.
    fn query(&self, sql: &Sql) -> Result<Rows, StoreError>;

    /// Runs a compiled read-only query that must end by `deadline`, the end of the
    /// request's time budget (one request may run several statements). A store that
    /// can stop a running statement (DuckDB) stops it there; the default refuses a
    /// statement that would start after the deadline, and bounds a running one by the
    /// store's own statement timeout.
    fn query_until(&self, sql: &Sql, deadline: std::time::Instant) -> Result<Rows, StoreError> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(StoreError::Timeout(left));
        }
        self.query(sql)
    }
}
