//! The embedded store: one DuckDB file.
//!
//! One connection belongs to the writer (inserts happen on it, one transaction per
//! batch); queries take connections from a small pool of clones of the same database,
//! so reads see committed batches without blocking the writer (DuckDB is MVCC).

mod migrate;
mod open_visits;
pub mod visits;
mod writer;

use std::path::Path;
use std::time::Duration;

use ::duckdb::types::{TimeUnit, Value as DuckValue};
use ::duckdb::{Config, Connection};
use parking_lot::Mutex;
use serde_json::Value;

use crate::{InsertStats, Lsn, Param, Rows, Sql, Store, StoreError};

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct DuckConfig {
    /// DuckDB's memory limit, e.g. "2GB".
    pub memory_limit: String,
    /// Worker threads DuckDB may use for one query.
    pub threads: u32,
    /// Queries running longer are interrupted.
    pub query_timeout: Duration,
    /// DuckDB's `checkpoint_threshold`: the size its own log may reach before its
    /// contents are written (compressed) into the database file, e.g. "16MB".
    pub checkpoint_threshold: String,
}

impl Default for DuckConfig {
    fn default() -> Self {
        Self {
            memory_limit: "2GB".into(),
            threads: 2,
            query_timeout: Duration::from_secs(30),
            // DuckDB's own default. Larger thresholds checkpoint less often (less CPU
            // under a stream of small batches) but each checkpoint then stalls the writer
            // for seconds (docs/configuration.md).
            checkpoint_threshold: "16MB".into(),
        }
    }
}

pub struct DuckStore {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    config: DuckConfig,
    /// Identity links known to be stored, so a signed-in user's every event does not
    /// cost an insert attempt. Filled only after a commit; bounded by clearing.
    linked: Mutex<writer::LinkCache>,
    /// The visits live traffic can still extend, as the table has them.
    open: Mutex<open_visits::OpenVisits>,
    /// The first fatal error DuckDB reported ([`Store::failure`]).
    failure: Mutex<Option<String>>,
}

impl DuckStore {
    /// Opens (or creates) the database file and brings its schema up to date.
    pub fn open(path: &Path, config: DuckConfig) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let duck_config = Config::default()
            .max_memory(&config.memory_limit)?
            .threads(i64::from(config.threads.max(1)))?
            .with("checkpoint_threshold", &config.checkpoint_threshold)?
            // No vacuum at checkpoints. Its only work here would be merging the partly
            // filled row groups that the writer's small batches leave behind: the store
            // never deletes, and its upserts (persons, groups, memberships, the queue
            // position) update in place. Under single-event load that merging was about a
            // tenth of the server's CPU (bench/ingest_cpu.sh), while the table it leaves
            // has 14 row groups instead of 11 per 1.2M rows, queries as fast, and is
            // smaller on disk (docs/benchmarks.md).
            .with("max_vacuum_tasks", "0")?;
        let mut conn = Connection::open_with_flags(path, duck_config)?;
        migrate::run(&conn)?;
        writer::create_stages(&conn)?;
        visits::create_work_tables(&conn)?;
        visits::backfill(&mut conn)?;
        let open = open_visits::OpenVisits::load(&conn)?;
        Ok(Self {
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            config,
            linked: Mutex::new(writer::LinkCache::default()),
            open: Mutex::new(open),
            failure: Mutex::new(None),
        })
    }

    /// Writes the WAL of DuckDB into the main file (on clean shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let done = self.writer.lock().execute_batch("CHECKPOINT");
        self.watch(done.map_err(StoreError::from))
    }

    /// Passes `result` on, remembering a fatal error: after one DuckDB has invalidated
    /// the database ("FATAL Error", then "database has been invalidated because of a
    /// previous fatal error" for every statement) and only a new process can open it.
    fn watch<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::DuckDb(e)) if is_fatal(&e.to_string()) => {
                let message = e.to_string();
                let mut failure = self.failure.lock();
                if failure.is_none() {
                    tracing::error!(error = %message, "DuckDB reported a fatal error: the database cannot be used until the process restarts");
                    *failure = Some(message.clone());
                }
                Err(StoreError::Failed(message))
            }
            other => other,
        }
    }

    fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.readers.lock().pop() {
            return Ok(conn);
        }
        Ok(self.writer.lock().try_clone()?)
    }

    fn give_back(&self, conn: Connection) {
        let mut pool = self.readers.lock();
        if pool.len() < 8 {
            pool.push(conn);
        }
    }
}

/// Whether a DuckDB error message says the database is invalidated.
fn is_fatal(message: &str) -> bool {
    message.contains("FATAL Error") || message.contains("database has been invalidated")
}

impl Store for DuckStore {
    fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    fn committed_lsn(&self) -> Result<Lsn, StoreError> {
        let conn = self.writer.lock();
        let lsn = conn.query_row(
            "SELECT max(lsn) FROM queue_offsets WHERE queue = 'wal'",
            [],
            |row| row.get::<_, Option<u64>>(0),
        );
        Ok(self.watch(lsn.map_err(StoreError::from))?.unwrap_or(0))
    }

    fn insert(
        &self,
        batches: &[tally_model::StoredBatch<'_>],
        upto: Lsn,
    ) -> Result<InsertStats, StoreError> {
        let mut conn = self.writer.lock();
        let mut linked = self.linked.lock();
        let mut open = self.open.lock();
        self.watch(writer::insert(
            &mut conn,
            batches,
            upto,
            &mut linked,
            &mut open,
        ))
    }

    fn query(&self, sql: &Sql) -> Result<Rows, StoreError> {
        self.query_until(sql, std::time::Instant::now() + self.config.query_timeout)
    }

    fn query_until(&self, sql: &Sql, deadline: std::time::Instant) -> Result<Rows, StoreError> {
        let timeout = self
            .config
            .query_timeout
            .min(deadline.saturating_duration_since(std::time::Instant::now()));
        if timeout.is_zero() {
            return Err(StoreError::Timeout(timeout));
        }
        let conn = self.reader()?;
        let interrupt = conn.interrupt_handle();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(timeout).is_err() {
                interrupt.interrupt();
                true
            } else {
                false
            }
        });
        let started = std::time::Instant::now();
        let result = run_query(&conn, sql);
        let _ = done_tx.send(());
        tracing::debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            sql = %sql.text,
            params = ?sql.params,
            "store query"
        );
        let interrupted = watchdog.join().unwrap_or(false);
        match result {
            Ok(rows) => {
                self.give_back(conn);
                Ok(rows)
            }
            Err(_) if interrupted => Err(StoreError::Timeout(timeout)),
            Err(e) => {
                self.give_back(conn);
                self.watch(Err(e))
            }
        }
    }
}

fn run_query(conn: &Connection, sql: &Sql) -> Result<Rows, StoreError> {
    let mut stmt = conn.prepare(&sql.text)?;
    let params: Vec<DuckValue> = sql.params.iter().map(to_duck).collect();
    let mut rows = stmt.query(::duckdb::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let n = row.as_ref().column_count();
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(to_json(row.get::<_, DuckValue>(i)?));
        }
        out.push(values);
    }
    Ok(out)
}

fn to_duck(param: &Param) -> DuckValue {
    match param {
        Param::Text(s) => DuckValue::Text(s.clone()),
        Param::Int(i) => DuckValue::BigInt(*i),
        Param::Float(f) => DuckValue::Double(*f),
        Param::Timestamp(us) => DuckValue::Timestamp(TimeUnit::Microsecond, *us),
    }
}

fn to_json(value: DuckValue) -> Value {
    use DuckValue as D;
    match value {
        D::Null => Value::Null,
        D::Boolean(b) => Value::Bool(b),
        D::TinyInt(i) => i.into(),
        D::SmallInt(i) => i.into(),
        D::Int(i) => i.into(),
        D::BigInt(i) => i.into(),
        D::UTinyInt(i) => i.into(),
        D::USmallInt(i) => i.into(),
        D::UInt(i) => i.into(),
        D::UBigInt(i) => i.into(),
        D::HugeInt(i) => i64::try_from(i)
            .map(Value::from)
            .unwrap_or_else(|_| (i as f64).into()),
        D::UHugeInt(i) => u64::try_from(i)
            .map(Value::from)
            .unwrap_or_else(|_| (i as f64).into()),
        D::Float(f) => finite(f64::from(f)),
        D::Double(f) => finite(f),
        D::Decimal(d) => d
            .to_string()
            .parse::<f64>()
            .map(finite)
            .unwrap_or(Value::Null),
        D::Text(s) | D::Enum(s) => Value::String(s),
        D::Timestamp(unit, v) => {
            let micros = match unit {
                TimeUnit::Second => v.saturating_mul(1_000_000),
                TimeUnit::Millisecond => v.saturating_mul(1_000),
                TimeUnit::Microsecond => v,
                TimeUnit::Nanosecond => v / 1_000,
            };
            Value::String(format_micros(micros))
        }
        D::Date32(days) => Value::String(
            (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
                + chrono::Duration::days(i64::from(days)))
            .format("%Y-%m-%d")
            .to_string(),
        ),
        D::List(items) | D::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        other => Value::String(format!("{other:?}")),
    }
}

fn finite(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a timestamp in microseconds.
pub fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duck_error(message: &str) -> StoreError {
        StoreError::DuckDb(::duckdb::Error::DuckDBFailure(
            ::duckdb::ffi::Error::new(1),
            Some(message.to_owned()),
        ))
    }

    /// DuckDB's own words: the first statement that fails says "FATAL Error", every
    /// later one that the database "has been invalidated".
    #[test]
    fn a_fatal_error_marks_the_store_failed_and_an_ordinary_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = DuckStore::open(&dir.path().join("t.duckdb"), DuckConfig::default()).unwrap();
        let ordinary = store.watch::<()>(Err(duck_error(
            "Binder Error: Referenced column \"nope\" not found",
        )));
        assert!(matches!(ordinary, Err(StoreError::DuckDb(_))));
        assert_eq!(store.failure(), None);

        let fatal = store.watch::<()>(Err(duck_error(
            "FATAL Error: Failed to create checkpoint because of error: Could not write file \"t.duckdb\": No space left on device",
        )));
        assert!(matches!(fatal, Err(StoreError::Failed(_))), "{fatal:?}");
        let later = store.watch::<()>(Err(duck_error(
            "Invalid Input Error: database has been invalidated because of a previous fatal error. The database must be restarted prior to being used again.",
        )));
        assert!(matches!(later, Err(StoreError::Failed(_))));
        let failure = store.failure().expect("failed");
        assert!(
            failure.contains("No space left"),
            "the first error is kept: {failure}"
        );
        assert!(store.watch(Ok(7)).is_ok_and(|v| v == 7));
    }
}
