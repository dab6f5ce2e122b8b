//! The `paths` query: what people do right after (or right before) a start event.
//!
//! For each person the first start event in the range anchors the path; the events
//! that follow it (or precede it) are steps 1..depth. The answer lists, per step, the
//! most common (previous item → item) edges with how many people took them.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use tally_store::{Dialect, Store};

use crate::common::{check_keys, num, range_echo, uint_field, EventMatch, Scan};
use crate::dims::Filter;
use crate::request::{parse_date_range, parse_timezone};
use crate::{Binder, QueryError};

pub(crate) struct PathsQuery {
    start_at: EventMatch,
    next: bool,
    pages: bool,
    depth: u64,
    limit: u64,
    filters: Vec<Filter>,
    tz: Tz,
    start: i64,
    end: i64,
}

impl PathsQuery {
    pub(crate) fn parse(
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
    ) -> Result<Self, QueryError> {
        check_keys(
            obj,
            "",
            &[
                "kind",
                "date_range",
                "timezone",
                "start",
                "direction",
                "item",
                "depth",
                "limit",
                "filters",
            ],
        )?;
        let tz = parse_timezone(obj.get("timezone"))?;
        let (start, end) = parse_date_range(obj.get("date_range"), tz, now, first_event)?;
        let start_at = match obj.get("start") {
            Some(v) => EventMatch::parse(v, "start", &[])?,
            None => {
                return Err(QueryError::invalid(
                    "start",
                    "is required: the event paths start from, e.g. {\"event\": \"signup\"}",
                ))
            }
        };
        let next = match obj.get("direction").and_then(Value::as_str) {
            None if obj.get("direction").is_none() => true,
            Some("next") => true,
            Some("previous") => false,
            _ => {
                return Err(QueryError::invalid(
                    "direction",
                    "must be \"next\" or \"previous\"",
                ))
            }
        };
        let pages = match obj.get("item").and_then(Value::as_str) {
            None if obj.get("item").is_none() => false,
            Some("event") => false,
            Some("page") => true,
            _ => return Err(QueryError::invalid("item", "must be \"event\" or \"page\"")),
        };
        Ok(Self {
            start_at,
            next,
            pages,
            depth: uint_field(obj, "depth", "depth", 3, 1, 10)?,
            limit: uint_field(obj, "limit", "limit", 10, 1, 100)?,
            filters: crate::dims::parse_event_filters(obj.get("filters"), "filters")?,
            tz,
            start,
            end,
        })
    }

    pub(crate) fn compile(&self, project: &str) -> tally_store::Sql {
        let mut b = Binder::numbered();
        let scan = Scan {
            project,
            start: Some(self.start),
            end: self.end,
            tz: self.tz,
            local_range: (self.start, self.end),
            filters: &self.filters,
            persons: self.start_at.needs_persons(),
            accounts: false,
        }
        .sql(&mut b);
        let is_start = self.start_at.sql("lts", &mut b);
        let (item, keep) = if self.pages {
            ("page", "page IS NOT NULL")
        } else {
            ("event", "true")
        };
        let (offset, order) = if self.next {
            ("b.seq - s.s", "b.seq")
        } else {
            ("s.s - b.seq", "b.seq DESC")
        };
        let depth = b.int(self.depth as i64);
        let text = format!(
            "WITH base AS (SELECT person_id AS agg, {item} AS item, {is_start} AS is_s, \
                           row_number() OVER (PARTITION BY person_id ORDER BY ts, rid) AS seq \
                           FROM ({scan}) e WHERE {keep}), \
             starts AS (SELECT agg, min(seq) AS s, arg_min(item, seq) AS first_item \
                        FROM base WHERE is_s GROUP BY agg), \
             steps AS (SELECT b.agg, {offset} AS step, b.item, \
                       coalesce(lag(b.item) OVER (PARTITION BY b.agg ORDER BY {order}), s.first_item) AS prev \
                       FROM base b JOIN starts s ON s.agg = b.agg \
                       WHERE {offset} BETWEEN 1 AND {depth}) \
             SELECT step, prev, item, count(*) AS n FROM steps GROUP BY ALL \
             UNION ALL SELECT 0, NULL, first_item, count(*) FROM starts GROUP BY ALL \
             ORDER BY 1, 4 DESC, 2, 3"
        );
        b.finish(text)
    }
}

impl crate::Report for PathsQuery {
    fn reads(&self) -> crate::Reads {
        crate::Reads {
            from: self.start,
            to: self.end,
        }
    }

    fn normalized(&self) -> Value {
        json!({
            "kind": "paths",
            "start": self.start_at.normalized(),
            "direction": if self.next { "next" } else { "previous" },
            "item": if self.pages { "page" } else { "event" },
            "depth": self.depth,
            "limit": self.limit,
            "filters": self.filters.iter().map(Filter::normalized).collect::<Vec<_>>(),
            "date_range": range_echo(self.tz, self.start, self.end),
            "timezone": self.tz.name(),
        })
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let sql = match store.dialect() {
            Dialect::DuckDb => self.compile(project),
            Dialect::ClickHouse => crate::clickhouse::paths_sql(
                crate::clickhouse::PathsParts {
                    start_at: &self.start_at,
                    filters: &self.filters,
                    next: self.next,
                    pages: self.pages,
                    depth: self.depth,
                    tz: self.tz,
                },
                project,
                self.start,
                self.end,
            )?,
        };
        let rows = store.query(&sql)?;
        let people: f64 = rows
            .iter()
            .filter(|r| r[0].as_i64() == Some(0))
            .map(|r| num(&r[3]))
            .sum();
        let mut steps = Vec::new();
        for step in 1..=self.depth as i64 {
            let edges: Vec<Value> = rows
                .iter()
                .filter(|r| r[0].as_i64() == Some(step))
                .take(self.limit as usize)
                .map(|r| json!({ "from": r[1], "to": r[2], "count": num(&r[3]) as u64 }))
                .collect();
            steps.push(json!({ "step": step, "edges": edges }));
        }
        let starts: Vec<Value> = rows
            .iter()
            .filter(|r| r[0].as_i64() == Some(0))
            .map(|r| json!({ "item": r[2], "count": num(&r[3]) as u64 }))
            .collect();
        Ok(json!({ "results": { "people": people as u64, "starts": starts, "steps": steps } }))
    }
}
