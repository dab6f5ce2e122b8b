//! Tally's query engine: typed JSON queries → validated, normalized → SQL → results.
//!
//! A request is parsed from JSON by hand rather than by derive, so every error names the
//! offending field (`filters[1][2]`) and says what was expected. Parsing also normalizes:
//! date presets become absolute times in the query's timezone and defaults are filled
//! in; the normalized query is echoed in the response (and is what a cache would key on).

mod accounts;
mod cohorts;
mod common;
mod dims;
mod error;
mod events;
mod formula;
mod funnel;
mod paths;
mod realtime;
mod stats;
mod time;
mod trends;

pub use error::QueryError;
pub use stats::{StatsQuery, STATS_METRICS};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tally_store::{Param, Sql, Store};

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
    "realtime",
];

/// Adds the normalized query to a kind's response object.
fn with_query(mut body: Value, query: Value) -> Result<Value, QueryError> {
    body["query"] = query;
    Ok(body)
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
    match kind {
        "stats" => {
            let query = StatsQuery::parse(obj, now, |p| first_event_time(store, p), project)?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        "events" => {
            let query = events::EventsQuery::parse(obj, now, || first_event_time(store, project))?;
            let results = query.execute(store, project)?;
            Ok(json!({ "results": results, "query": query.normalized() }))
        }
        "trends" => {
            let query = trends::TrendsQuery::parse(obj, now, || first_event_time(store, project))?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        "funnel" => {
            let query = funnel::FunnelQuery::parse(obj, now, || first_event_time(store, project))?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        "retention" => {
            let query =
                cohorts::RetentionQuery::parse(obj, now, || first_event_time(store, project))?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        "lifecycle" => {
            let query =
                cohorts::LifecycleQuery::parse(obj, now, || first_event_time(store, project))?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        "stickiness" => {
            let query =
                cohorts::StickinessQuery::parse(obj, now, || first_event_time(store, project))?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        "paths" => {
            let query = paths::PathsQuery::parse(obj, now, || first_event_time(store, project))?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        "accounts" => {
            let query =
                accounts::AccountsQuery::parse(obj, now, || first_event_time(store, project))?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        "realtime" => {
            let query = realtime::RealtimeQuery::parse(obj, now)?;
            with_query(query.execute(store, project)?, query.normalized())
        }
        other => Err(QueryError::invalid(
            "kind",
            format!(
                "unknown query kind {other:?}; supported kinds: {}",
                KINDS.join(", ")
            ),
        )),
    }
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
fn first_event_time(store: &dyn Store, project: &str) -> Result<Option<i64>, QueryError> {
    let sql = tally_store::Sql {
        text: "SELECT epoch_us(min(ts)) FROM events WHERE project_id = ?".into(),
        params: vec![tally_store::Param::Text(project.into())],
    };
    let rows = store.query(&sql)?;
    Ok(rows.first().and_then(|r| r.first()).and_then(Value::as_i64))
}
