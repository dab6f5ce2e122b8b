//! Tally's query engine: typed JSON queries → validated, normalized → SQL → results.
//!
//! A request is parsed from JSON by hand rather than by derive, so every error names the
//! offending field (`filters[1][2]`) and says what was expected. Parsing also normalizes:
//! date presets become absolute times in the query's timezone and defaults are filled
//! in; the normalized query is echoed in the response (and is what a cache would key on).

mod error;
mod events;
mod stats;
mod time;

pub use error::QueryError;
pub use stats::{StatsQuery, STATS_METRICS};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tally_store::Store;

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
            let results = query.execute(store, project)?;
            Ok(json!({ "results": results, "query": query.normalized() }))
        }
        "events" => {
            let query = events::EventsQuery::parse(obj, now, || first_event_time(store, project))?;
            let results = query.execute(store, project)?;
            Ok(json!({ "results": results, "query": query.normalized() }))
        }
        other => Err(QueryError::invalid(
            "kind",
            format!("unknown query kind {other:?}; supported kinds: \"stats\", \"events\""),
        )),
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
