//! Tally's query engine: typed JSON queries → validated, normalized → SQL → results.
//!
//! A request is parsed from JSON by hand rather than by derive, so every error names the
//! offending field (`filters[1][2]`) and says what was expected. Parsing also normalizes:
//! date presets become absolute times in the query's timezone and defaults are filled
//! in; the normalized query is echoed in the response (and is what a cache would key on).

mod accounts;
mod clickhouse;
mod cohorts;
mod common;
mod dims;
mod error;
mod events;
mod formula;
mod funnel;
mod paths;
mod person;
mod realtime;
mod request;
mod stats;
mod time;
mod trends;

pub use error::QueryError;
pub use stats::{StatsQuery, STATS_METRICS};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_store::{Dialect, Param, Sql, Store};

/// The query kinds `run` answers.
pub const KINDS: &[&str] = &[
    "stats",
    "events",
    "trends",
    "funnel",
    "retention",
    "lifecycle",
    "stickiness",
    "paths",
    "accounts",
    "person",
    "realtime",
];

/// A parsed query of one kind.
trait Report: Send + Sync {
    /// The response body: `results`, and whatever else the kind answers with.
    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError>;

    /// The query as understood, defaults filled in; echoed as `query`.
    fn normalized(&self) -> Value;

    /// The span of event times the answer can depend on.
    fn reads(&self) -> Reads;
}

/// The event times `[from, to)` (UTC microseconds) an answer can depend on: an event
/// stored later with a time in the span may change it, one outside cannot. `i64::MIN`
/// and `i64::MAX` stand for no bound (reports that look at people's whole history, such
/// as first-time retention or lifecycle's "new").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    pub from: i64,
    pub to: i64,
}

impl Reads {
    /// Every event time.
    pub const ALL: Reads = Reads {
        from: i64::MIN,
        to: i64::MAX,
    };
}

/// A query parsed and normalized, not yet run: what a cache keys on and checks, and
/// what [`Plan::execute`] answers.
pub struct Plan {
    kind: &'static str,
    report: Box<dyn Report>,
}

impl Plan {
    /// One of [`KINDS`].
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The query as understood: defaults filled in, its date range resolved to absolute
    /// times in its timezone (whole days, so equal questions asked the same day have
    /// equal normalized forms). Echoed in the response as `query`.
    pub fn normalized(&self) -> Value {
        self.report.normalized()
    }

    /// The span of event times the answer depends on.
    pub fn reads(&self) -> Reads {
        self.report.reads()
    }

    /// Whether an answer may be kept and served again: every kind but `realtime`, whose
    /// answer is about the last minutes and is always computed.
    pub fn cacheable(&self) -> bool {
        self.kind != "realtime"
    }

    /// Runs the query for `project`; the response body, `query` included.
    ///
    /// Blocks on the store: call it from a blocking thread.
    pub fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let mut body = self.report.execute(store, project)?;
        body["query"] = self.report.normalized();
        Ok(body)
    }
}

/// Runs one query for `project` and returns the response body.
///
/// Blocks on the store: call it from a blocking thread.
pub fn run(
    store: &dyn Store,
    project: &str,
    request: &Value,
    now: DateTime<Utc>,
) -> Result<Value, QueryError> {
    plan(request, now, || first_event_time(store, project))?.execute(store, project)
}

/// Parses and normalizes one query, without running it. `first_event` says when the
/// project's first event happened; it is asked only for `date_range: "all"` (a cache may
/// answer it, or [`first_event_time`] from the store).
pub fn plan(
    request: &Value,
    now: DateTime<Utc>,
    first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
) -> Result<Plan, QueryError> {
    let obj = request
        .as_object()
        .ok_or_else(|| QueryError::invalid("", "the query must be a JSON object"))?;
    let kind = match obj.get("kind") {
        None => "stats",
        Some(Value::String(k)) => k.as_str(),
        Some(_) => {
            return Err(QueryError::invalid(
                "kind",
                "must be a string such as \"stats\"",
            ))
        }
    };
    let report: Box<dyn Report> = match kind {
        "stats" => Box::new(StatsQuery::parse(obj, now, first_event)?),
        "events" => Box::new(events::EventsQuery::parse(obj, now, first_event)?),
        "trends" => Box::new(trends::TrendsQuery::parse(obj, now, first_event)?),
        "funnel" => Box::new(funnel::FunnelQuery::parse(obj, now, first_event)?),
        "retention" => Box::new(cohorts::RetentionQuery::parse(obj, now, first_event)?),
        "lifecycle" => Box::new(cohorts::LifecycleQuery::parse(obj, now, first_event)?),
        "stickiness" => Box::new(cohorts::StickinessQuery::parse(obj, now, first_event)?),
        "paths" => Box::new(paths::PathsQuery::parse(obj, now, first_event)?),
        "accounts" => Box::new(accounts::AccountsQuery::parse(obj, now, first_event)?),
        "person" => Box::new(person::PersonQuery::parse(obj, now, first_event)?),
        "realtime" => Box::new(realtime::RealtimeQuery::parse(obj, now)?),
        other => {
            return Err(QueryError::invalid(
                "kind",
                format!(
                    "unknown query kind {other:?}; supported kinds: {}",
                    KINDS.join(", ")
                ),
            ))
        }
    };
    let kind = KINDS
        .iter()
        .copied()
        .find(|k| *k == kind)
        .expect("every kind parsed above is listed");
    Ok(Plan { kind, report })
}

/// Collects the bound values of a query as its SQL text is written, so a placeholder
/// and its value can never drift apart. Positional mode writes `?` (the text must then be
/// assembled in the order values were bound); numbered mode writes `$1`, `$2`... and a
/// fragment may be placed anywhere, or twice.
pub(crate) struct Binder {
    params: Vec<Param>,
    numbered: bool,
}

impl Binder {
    pub(crate) fn positional(params: Vec<Param>) -> Self {
        Self {
            params,
            numbered: false,
        }
    }

    pub(crate) fn numbered() -> Self {
        Self {
            params: Vec::new(),
            numbered: true,
        }
    }

    pub(crate) fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        if self.numbered {
            format!("${}", self.params.len())
        } else {
            "?".into()
        }
    }

    pub(crate) fn text(&mut self, s: &str) -> String {
        self.bind(Param::Text(s.to_owned()))
    }

    pub(crate) fn ts(&mut self, micros: i64) -> String {
        self.bind(Param::Timestamp(micros))
    }

    pub(crate) fn int(&mut self, i: i64) -> String {
        self.bind(Param::Int(i))
    }

    pub(crate) fn into_params(self) -> Vec<Param> {
        self.params
    }

    pub(crate) fn finish(self, text: String) -> Sql {
        Sql {
            text,
            params: self.params,
        }
    }
}

/// When the project's first event happened (for the "all" date range).
pub fn first_event_time(store: &dyn Store, project: &str) -> Result<Option<i64>, QueryError> {
    let text = match store.dialect() {
        Dialect::DuckDb => "SELECT epoch_us(min(ts)) FROM events WHERE project_id = ?",
        // `ts` is microseconds there already; an empty table answers 0, not NULL.
        Dialect::ClickHouse => "SELECT min(ts) FROM events WHERE project_id = ? HAVING count() > 0",
    };
    let sql = tally_store::Sql {
        text: text.into(),
        params: vec![tally_store::Param::Text(project.into())],
    };
    let rows = store.query(&sql)?;
    Ok(rows.first().and_then(|r| r.first()).and_then(Value::as_i64))
}
