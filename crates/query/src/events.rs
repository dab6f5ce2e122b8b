//! The `events` query: the raw events of a period, newest last, for inspecting what
//! arrived (a live-events view, SDK debugging, exports in pages).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tally_store::{Dialect, Param, Sql, Store};

use crate::dims::{parse_filters_for, Filter};
use crate::request::{parse_date_range, parse_pagination_with, parse_timezone};
use crate::time::{self, MICROS_PER_SEC};
use crate::QueryError;

const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1_000;

const COLUMNS: &[&str] = &[
    "uuid",
    "type",
    "event",
    "user_id",
    "device_id",
    "session_id",
    "group_id",
    "timestamp",
    "received_at",
    "properties",
    "traits",
    "context",
];

pub(crate) struct EventsQuery {
    tz: chrono_tz::Tz,
    start: i64,
    end: i64,
    filters: Vec<Filter>,
    limit: u64,
    offset: u64,
}

impl EventsQuery {
    pub(crate) fn parse(
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
    ) -> Result<Self, QueryError> {
        const KEYS: &[&str] = &["kind", "date_range", "filters", "timezone", "pagination"];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(QueryError::invalid(
                k.as_str(),
                format!("unknown key; an events query has: {}", KEYS.join(", ")),
            ));
        }
        let tz = parse_timezone(obj.get("timezone"))?;
        let (start, end) = parse_date_range(obj.get("date_range"), tz, now, first_event)?;
        let filters = parse_filters_for(obj.get("filters"))?;
        let dims: Vec<&crate::dims::Dimension> =
            filters.iter().flat_map(Filter::dimensions).collect();
        crate::dims::no_visit_dims(dims.iter().copied(), "filters")?;
        if let Some(d) = dims.iter().find(|d| d.needs_person()) {
            return Err(QueryError::invalid(
                "filters",
                format!(
                    "{} is not available for raw events; use a report kind",
                    d.name()
                ),
            ));
        }
        let (limit, offset) =
            parse_pagination_with(obj.get("pagination"), DEFAULT_LIMIT, MAX_LIMIT)?;
        Ok(Self {
            tz,
            start,
            end,
            filters,
            limit,
            offset,
        })
    }

    fn normalized_query(&self) -> Value {
        json!({
            "kind": "events",
            "date_range": [
                time::rfc3339_in(self.tz, self.start),
                time::rfc3339_in(self.tz, self.end - MICROS_PER_SEC),
            ],
            "filters": self.filters.iter().map(Filter::normalized).collect::<Vec<_>>(),
            "timezone": self.tz.name(),
            "pagination": { "limit": self.limit, "offset": self.offset },
        })
    }

    /// The events of the page, oldest first.
    fn rows(&self, store: &dyn Store, project: &str) -> Result<Vec<Value>, QueryError> {
        let sql = match store.dialect() {
            Dialect::DuckDb => self.duckdb_sql(project),
            Dialect::ClickHouse => crate::clickhouse::events_sql(
                project,
                self.start,
                self.end,
                &self.filters,
                self.limit,
                self.offset,
            )?,
        };
        Ok(event_objects(store.query(&sql)?))
    }

    fn duckdb_sql(&self, project: &str) -> Sql {
        let mut params = vec![
            Param::Text(project.to_owned()),
            Param::Timestamp(self.start),
            Param::Timestamp(self.end),
        ];
        let mut wheres = vec![
            "project_id = ?".to_owned(),
            "ts >= ?".into(),
            "ts < ?".into(),
        ];
        for f in &self.filters {
            // Raw events are shown in UTC; filters do not use the local clock.
            wheres.push(f.sql("ts", &mut params));
        }
        params.push(Param::Int(self.limit as i64));
        params.push(Param::Int(self.offset as i64));
        let text = format!(
            "SELECT {} FROM events WHERE {} ORDER BY ts, lsn, uuid LIMIT ? OFFSET ?",
            event_columns_sql(Dialect::DuckDb),
            wheres.join(" AND ")
        );
        Sql { text, params }
    }
}

/// Rows of [`COLUMNS`] as the JSON objects the `events` kind answers (and a person's
/// timeline): the JSON columns parsed, a missing one as `{}`.
pub(crate) fn event_objects(rows: Vec<Vec<Value>>) -> Vec<Value> {
    rows.into_iter()
        .map(|row| {
            let mut obj = Map::new();
            for (name, value) in COLUMNS.iter().zip(row) {
                let value = match (*name, value) {
                    ("properties" | "traits" | "context", Value::String(s)) => {
                        serde_json::from_str(&s).unwrap_or(Value::String(s))
                    }
                    ("properties" | "traits" | "context", Value::Null) => json!({}),
                    (_, v) => v,
                };
                obj.insert((*name).to_owned(), value);
            }
            Value::Object(obj)
        })
        .collect()
}

/// The select list of [`COLUMNS`] over the `events` table in `dialect`, times as
/// RFC 3339 UTC with microseconds.
pub(crate) fn event_columns_sql(dialect: Dialect) -> String {
    match dialect {
        Dialect::DuckDb => "uuid, type, event, user_id, device_id, session_id, group_id,              strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ'), strftime(received_at, '%Y-%m-%dT%H:%M:%S.%fZ'),              CAST(properties AS VARCHAR), CAST(traits AS VARCHAR), CAST(context AS VARCHAR)"
            .to_owned(),
        Dialect::ClickHouse => format!(
            "uuid, type, event, user_id, device_id, session_id, group_id, {}, {}, \
             properties, traits, context",
            crate::clickhouse::iso_sql("ts"),
            crate::clickhouse::iso_sql("received_at")
        ),
    }
}

impl crate::Report for EventsQuery {
    fn reads(&self) -> crate::Reads {
        crate::Reads {
            from: self.start,
            to: self.end,
        }
    }

    fn normalized(&self) -> Value {
        self.normalized_query()
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        Ok(json!({ "results": self.rows(store, project)? }))
    }
}
