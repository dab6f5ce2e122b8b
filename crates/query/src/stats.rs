//! The `stats` query: aggregates, breakdowns and time series in one shape, modelled on
//! Plausible's Stats API v2 (`metrics`, `date_range`, `dimensions`, `filters`,
//! `order_by`, `pagination`, `include`; results as `{"dimensions": [...], "metrics": [...]}`).
//!
//! Two plans: event metrics (events, visitors, pageviews, property sums...) aggregate the
//! events directly. Visit metrics (visits, bounce rate, visit duration, views per visit)
//! and the entry/exit page dimensions first cut each person's events into visits — each
//! session id a client sent is one; a person's events without one are cut by 30 minutes
//! without such an event — then aggregate per visit. A visit counts in every row (time
//! bucket, page...) it has an event in.
//!
//! On DuckDB, visit queries by nothing, page, or entry or exit page without filters read
//! the `visits` table the writer keeps (tally_store::duckdb::visits) for the visits inside
//! the range, and cut only the visits crossing its edges from their events, so the
//! answer equals the raw cut.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use tally_store::duckdb::visits::VISIT_TIMEOUT_MINUTES;
use tally_store::sql::json_key_path;
use tally_store::{Dialect, Rows, Store};

use crate::dims::{dimension_expr, parse_filters_for, Dimension, Filter};
use crate::request::{parse_date_range, parse_pagination_with, parse_timezone, string_list};

use crate::common::{num, Interval, Scan, WeekStart};
use crate::time::{self, MICROS_PER_SEC};
use crate::{Binder, QueryError};

/// Metrics a stats query may ask for, besides `sum|avg|min|max|p50|p90|p95|p99:<property>`.
pub const STATS_METRICS: &[&str] = &[
    "visitors",
    "visits",
    "pageviews",
    "events",
    "views_per_visit",
    "bounce_rate",
    "visit_duration",
    "percentage",
    "conversion_rate",
];

const DEFAULT_LIMIT: u64 = 10_000;
const MAX_LIMIT: u64 = 10_000;
const MAX_DIMENSIONS: usize = 4;
const PAGEVIEW: &str = "(type = 'page' OR event = 'page_visit')";

#[derive(Debug, Clone, PartialEq)]
enum Metric {
    Visitors,
    Visits,
    Pageviews,
    Events,
    ViewsPerVisit,
    BounceRate,
    VisitDuration,
    Percentage,
    ConversionRate,
    /// An aggregate of a numeric event property: (function, property).
    Prop(&'static str, String),
}

const PROP_AGGS: &[&str] = &["sum", "avg", "min", "max", "p50", "p90", "p95", "p99"];

impl Metric {
    fn parse(m: &str, field: &str) -> Result<Self, QueryError> {
        Ok(match m {
            "visitors" => Metric::Visitors,
            "visits" => Metric::Visits,
            "pageviews" => Metric::Pageviews,
            "events" => Metric::Events,
            "views_per_visit" => Metric::ViewsPerVisit,
            "bounce_rate" => Metric::BounceRate,
            "visit_duration" => Metric::VisitDuration,
            "percentage" => Metric::Percentage,
            "conversion_rate" => Metric::ConversionRate,
            _ => {
                let parsed = m.split_once(':').and_then(|(f, p)| {
                    let f = PROP_AGGS.iter().find(|a| **a == f)?;
                    (!p.is_empty() && p.len() <= 200).then(|| Metric::Prop(f, p.to_owned()))
                });
                return parsed.ok_or_else(|| {
                    QueryError::invalid(
                        field,
                        format!(
                            "unknown metric {m:?}; supported: {}, or sum|avg|min|max|p50|p90|p95|p99:<property>",
                            STATS_METRICS.join(", ")
                        ),
                    )
                });
            }
        })
    }

    fn name(&self) -> String {
        match self {
            Metric::Visitors => "visitors".into(),
            Metric::Visits => "visits".into(),
            Metric::Pageviews => "pageviews".into(),
            Metric::Events => "events".into(),
            Metric::ViewsPerVisit => "views_per_visit".into(),
            Metric::BounceRate => "bounce_rate".into(),
            Metric::VisitDuration => "visit_duration".into(),
            Metric::Percentage => "percentage".into(),
            Metric::ConversionRate => "conversion_rate".into(),
            Metric::Prop(f, p) => format!("{f}:{p}"),
        }
    }

    fn needs_visits(&self) -> bool {
        matches!(
            self,
            Metric::Visits | Metric::ViewsPerVisit | Metric::BounceRate | Metric::VisitDuration
        )
    }

    /// The aggregate over event rows (the event plan).
    fn event_sql(&self, goal: Option<&str>) -> String {
        match self {
            Metric::Visitors => "count(DISTINCT person_id)".into(),
            Metric::Events => "count(*)".into(),
            Metric::Pageviews => format!("count(*) FILTER (WHERE {PAGEVIEW})"),
            Metric::Percentage => {
                "round(100.0 * count(DISTINCT person_id) / nullif((SELECT count(DISTINCT person_id) FROM e), 0), 2)".into()
            }
            Metric::ConversionRate => format!(
                "round(100.0 * count(DISTINCT person_id) FILTER (WHERE event = {}) / nullif(count(DISTINCT person_id), 0), 2)",
                goal.unwrap_or("NULL")
            ),
            Metric::Prop(f, p) => {
                let v = format!(
                    "TRY_CAST(json_extract_string(properties, {}) AS DOUBLE)",
                    json_key_path(p)
                );
                match *f {
                    "p50" => format!("quantile_cont({v}, 0.5)"),
                    "p90" => format!("quantile_cont({v}, 0.9)"),
                    "p95" => format!("quantile_cont({v}, 0.95)"),
                    "p99" => format!("quantile_cont({v}, 0.99)"),
                    f => format!("{f}({v})"),
                }
            }
            _ => unreachable!("visit metrics use the visit plan"),
        }
    }

    /// The aggregate over per-visit rows (the visit plan).
    /// `conversion_rate` reads the per-visit `converted` flag, which the goal sets.
    fn visit_sql(&self) -> Option<String> {
        Some(match self {
            Metric::Visitors => "count(DISTINCT person_id)".into(),
            Metric::Visits => "count(*)".into(),
            Metric::Events => "sum(n_events)".into(),
            Metric::Pageviews => "sum(n_pageviews)".into(),
            Metric::ViewsPerVisit => "round(sum(n_pageviews) / count(*), 2)".into(),
            Metric::BounceRate => "round(100.0 * avg(CASE WHEN visit_pageviews <= 1 AND visit_events <= 1 THEN 1 ELSE 0 END))".into(),
            Metric::VisitDuration => "round(avg(visit_duration))".into(),
            Metric::Percentage => {
                "round(100.0 * count(DISTINCT person_id) / nullif((SELECT count(DISTINCT person_id) FROM pv), 0), 2)".into()
            }
            Metric::ConversionRate => {
                "round(100.0 * count(DISTINCT person_id) FILTER (WHERE converted) / nullif(count(DISTINCT person_id), 0), 2)".into()
            }
            Metric::Prop(..) => return None,
        })
    }
}

/// What the response may include besides results.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Include {
    time_labels: bool,
    total_rows: bool,
}

/// A validated, normalized stats query.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsQuery {
    metrics: Vec<Metric>,
    dimensions: Vec<Dimension>,
    filters: Vec<Filter>,
    order_by: Vec<(String, bool)>,
    goal: Option<String>,
    include: Include,
    compare: bool,
    tz: Tz,
    /// UTC micros, half-open.
    start: i64,
    end: i64,
    limit: u64,
    offset: u64,
}

impl StatsQuery {
    /// Validates `obj`. `first_event` tells when the project's data begins, for "all".
    pub fn parse(
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
    ) -> Result<Self, QueryError> {
        const KEYS: &[&str] = &[
            "kind",
            "metrics",
            "date_range",
            "dimensions",
            "filters",
            "order_by",
            "timezone",
            "pagination",
            "goal",
            "include",
            "compare",
        ];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(QueryError::invalid(
                k.as_str(),
                format!("unknown key; a stats query has: {}", KEYS.join(", ")),
            ));
        }

        let tz = parse_timezone(obj.get("timezone"))?;
        let metrics = parse_metrics(obj.get("metrics"))?;
        let (start, end) = parse_date_range(obj.get("date_range"), tz, now, first_event)?;

        let mut dimensions = Vec::new();
        for (i, d) in string_list(obj.get("dimensions"), "dimensions")?
            .iter()
            .enumerate()
        {
            let field = format!("dimensions[{i}]");
            let dim = if d == "time" {
                Dimension::Time(auto_grain(end - start))
            } else {
                Dimension::parse(d, &field)?
            };
            if dimensions.contains(&dim) {
                return Err(QueryError::invalid(field, format!("{d:?} is listed twice")));
            }
            if matches!(dim, Dimension::Time(_))
                && dimensions.iter().any(|x| matches!(x, Dimension::Time(_)))
            {
                return Err(QueryError::invalid(
                    field,
                    "only one time dimension is allowed",
                ));
            }
            if dim == Dimension::Time(Interval::Minute) && end - start > 2 * 86_400 * MICROS_PER_SEC
            {
                return Err(QueryError::invalid(
                    field,
                    "time:minute is for ranges of up to 2 days",
                ));
            }
            dimensions.push(dim);
        }
        if dimensions.len() > MAX_DIMENSIONS {
            return Err(QueryError::invalid(
                "dimensions",
                format!("at most {MAX_DIMENSIONS} dimensions"),
            ));
        }

        let filters = parse_filters_for(obj.get("filters"))?;
        let names: Vec<String> = metrics.iter().map(Metric::name).collect();
        let order_by = parse_order_by(obj.get("order_by"), &names, &dimensions)?;
        let (limit, offset) = parse_pagination(obj.get("pagination"))?;
        let goal = match obj.get("goal") {
            None | Some(Value::Null) => None,
            Some(Value::String(g)) if !g.is_empty() => Some(g.clone()),
            Some(_) => return Err(QueryError::invalid("goal", "must be an event name")),
        };
        if metrics.contains(&Metric::ConversionRate) && goal.is_none() {
            let i = metrics
                .iter()
                .position(|m| *m == Metric::ConversionRate)
                .unwrap_or(0);
            return Err(QueryError::invalid(
                format!("metrics[{i}]"),
                "conversion_rate needs a \"goal\": the event name that counts as converted",
            ));
        }
        let include = parse_include(obj.get("include"))?;
        let compare = match obj.get("compare") {
            None | Some(Value::Null) => false,
            Some(Value::String(s)) if s == "previous_period" => true,
            _ => {
                return Err(QueryError::invalid(
                    "compare",
                    "must be \"previous_period\"",
                ))
            }
        };

        let query = Self {
            metrics,
            dimensions,
            filters,
            order_by,
            goal,
            include,
            compare,
            tz,
            start,
            end,
            limit,
            offset,
        };
        if query.uses_visits() {
            let props = query
                .metrics
                .iter()
                .position(|m| matches!(m, Metric::Prop(..)));
            if let Some(i) = props {
                return Err(QueryError::invalid(
                    format!("metrics[{i}]"),
                    "property aggregates cannot be mixed with visit metrics or entry/exit pages; ask in a second query",
                ));
            }
        }
        Ok(query)
    }

    /// The query as understood, with every default filled in.
    pub fn normalized(&self) -> Value {
        let filters: Vec<Value> = self.filters.iter().map(Filter::normalized).collect();
        let mut v = json!({
            "kind": "stats",
            "metrics": self.metrics.iter().map(Metric::name).collect::<Vec<_>>(),
            "date_range": [
                time::rfc3339_in(self.tz, self.start),
                time::rfc3339_in(self.tz, self.end - MICROS_PER_SEC),
            ],
            "dimensions": self.dimensions.iter().map(Dimension::name).collect::<Vec<_>>(),
            "filters": filters,
            "order_by": self.order_by.iter()
                .map(|(k, desc)| json!([k, if *desc { "desc" } else { "asc" }]))
                .collect::<Vec<_>>(),
            "timezone": self.tz.name(),
            "pagination": { "limit": self.limit, "offset": self.offset },
            "include": { "time_labels": self.include.time_labels, "total_rows": self.include.total_rows },
        });
        if let Some(g) = &self.goal {
            v["goal"] = json!(g);
        }
        if self.compare {
            v["compare"] = json!("previous_period");
        }
        v
    }

    fn uses_visits(&self) -> bool {
        self.metrics.iter().any(Metric::needs_visits)
            || self.dimensions.iter().any(Dimension::needs_visits)
            || self
                .filters
                .iter()
                .flat_map(Filter::dimensions)
                .any(Dimension::needs_visits)
    }

    fn uses_persons(&self) -> bool {
        self.dimensions.iter().any(Dimension::needs_person)
            || self
                .filters
                .iter()
                .flat_map(Filter::dimensions)
                .any(Dimension::needs_person)
    }

    /// Whether the visits table answers this query (with the visits that cross the
    /// range's edges cut from their events in it): visit metrics without filters or a
    /// goal, by nothing, by page or by entry or exit page.
    fn reads_visits_table(&self) -> bool {
        self.uses_visits()
            && self.filters.is_empty()
            && self.goal.is_none()
            && !self.metrics.contains(&Metric::ConversionRate)
            && self.dimensions.iter().all(|d| {
                matches!(
                    d,
                    Dimension::Page | Dimension::EntryPage | Dimension::ExitPage
                )
            })
    }

    /// The statement that finds the time slices of `[start, end)` holding the events of
    /// the visits that cross its edges: `(end of the last visit that started before
    /// start, start of the first that ends at or after end)`, in micros.
    fn edge_visits_sql(project: &str, start: i64, end: i64) -> tally_store::Sql {
        let mut b = Binder::numbered();
        let (p, s, e) = (b.text(project), b.ts(start), b.ts(end));
        b.finish(format!(
            "SELECT epoch_us(max(end_ts) FILTER (WHERE start_ts < {s})), \
                    epoch_us(min(start_ts) FILTER (WHERE end_ts >= {e})) \
             FROM visits WHERE project_id = {p} AND start_ts < {e} AND end_ts >= {s} \
               AND (start_ts < {s} OR end_ts >= {e})"
        ))
    }

    /// Compiles the query over `[start, end)` to DuckDB SQL. `edges`: for a query the
    /// visits table answers, the slices of the range whose events are cut into the
    /// visits that cross its edges (from [`Self::edge_visits_sql`]).
    fn compile_range(
        &self,
        project: &str,
        start: i64,
        end: i64,
        edges: Option<&[(i64, i64)]>,
    ) -> tally_store::Sql {
        let mut b = Binder::numbered();
        let visits = self.uses_visits();
        let scan_of = |b: &mut Binder, from: i64, to: i64| {
            Scan {
                project,
                start: Some(from),
                end: to,
                tz: self.tz,
                local_range: (start, end),
                // The visit plan cuts visits from all events first, then filters.
                filters: if visits { &[] } else { &self.filters },
                persons: self.uses_persons(),
                accounts: false,
            }
            .sql(b)
        };
        let scan = match edges {
            None => scan_of(&mut b, start, end),
            Some([]) => format!(
                "SELECT * FROM ({}) WHERE false",
                scan_of(&mut b, start, end)
            ),
            Some(slices) => slices
                .iter()
                .map(|&(from, to)| format!("SELECT * FROM ({})", scan_of(&mut b, from, to)))
                .collect::<Vec<_>>()
                .join(" UNION ALL "),
        };
        let goal = self.goal.as_ref().map(|g| b.text(g));
        // Time dimensions group on the truncated time; labels are formatted after
        // aggregating (formatting every row costs as much as the aggregation).
        let dims: Vec<String> = self
            .dimensions
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dimension::Time(g) => format!("{} AS d{i}", time_group_expr(*g)),
                d => format!("{} AS d{i}", dimension_expr(d, "lts")),
            })
            .collect();
        let outer: Vec<String> = self
            .dimensions
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dimension::Time(g) => {
                    format!("strftime(d{i}, '{}') AS d{i}", time_label_format(*g))
                }
                _ => format!("d{i}"),
            })
            .chain((0..self.metrics.len()).map(|i| format!("m{i}")))
            .collect();
        let group: Vec<String> = (0..self.dimensions.len())
            .map(|i| format!("d{i}"))
            .collect();
        let metrics: Vec<String> = self
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let sql = if visits {
                    m.visit_sql()
                        .expect("validated: no property metrics with visits")
                } else {
                    m.event_sql(goal.as_deref())
                };
                format!("{sql} AS m{i}")
            })
            .collect();
        let select = dims_then(&group, &metrics);
        let body = if visits {
            let filters: Vec<String> = self
                .filters
                .iter()
                .map(|f| f.sql_with("lts", &mut b))
                .collect();
            let where_ = if filters.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", filters.join(" AND "))
            };
            let converted = match &goal {
                Some(g) => format!("bool_or(event = {g})"),
                None => "false".into(),
            };
            let per_visit_dims = if dims.is_empty() {
                String::new()
            } else {
                format!("{}, ", dims.join(", "))
            };
            // Each person's events without a session id are cut by 30 minutes without
            // such an event; each session id is a visit. Then the visit's whole-visit
            // figures join its events, which are filtered and grouped per row.
            let cut = |pv: &str| {
                format!(
                    "marked AS (SELECT *, CASE WHEN lag(ts) OVER w IS NULL \
                                  OR ts - lag(ts) OVER w > INTERVAL {VISIT_TIMEOUT_MINUTES} MINUTE THEN 1 ELSE 0 END AS brk \
                                FROM e WINDOW w AS (PARTITION BY person_id, session_id IS NULL ORDER BY ts, rid)), \
                     numbered AS (SELECT *, coalesce('s:' || session_id, 'v:' || person_id || ':' || \
                                  sum(brk) OVER (PARTITION BY person_id, session_id IS NULL ORDER BY ts, rid ROWS UNBOUNDED PRECEDING)) AS visit_id \
                                  FROM marked), \
                     visits_cut AS (SELECT visit_id, epoch(max(ts) - min(ts)) AS visit_duration, \
                                  count(*) FILTER (WHERE {PAGEVIEW}) AS visit_pageviews, count(*) AS visit_events, \
                                  (list(person_id ORDER BY ts, person_id))[1] AS visit_person, \
                                  (list(page ORDER BY ts, page) FILTER (WHERE page IS NOT NULL))[1] AS entry_page, \
                                  (list(page ORDER BY ts DESC, page DESC) FILTER (WHERE page IS NOT NULL))[1] AS exit_page \
                                FROM numbered GROUP BY visit_id), \
                     ev AS (SELECT n.*, v.* EXCLUDE (visit_id) FROM numbered n JOIN visits_cut v USING (visit_id)), \
                     {pv} AS (SELECT {per_visit_dims}visit_id, any_value(visit_person) AS person_id, \
                              any_value(visit_duration) AS visit_duration, any_value(visit_pageviews) AS visit_pageviews, \
                              any_value(visit_events) AS visit_events, count(*) AS n_events, \
                              count(*) FILTER (WHERE {PAGEVIEW}) AS n_pageviews, {converted} AS converted \
                            FROM ev {where_} GROUP BY ALL)"
                )
            };
            if edges.is_some() {
                // Visits inside the range from the table; those crossing its edges cut
                // from their events in the range, as the raw plan would.
                let (p, s, e) = (b.text(project), b.ts(start), b.ts(end));
                let (from, per_row) = if self.dimensions.contains(&Dimension::Page) {
                    (
                        format!("(SELECT *, unnest(pages) AS pg FROM visits WHERE project_id = {p} AND start_ts >= {s} AND end_ts < {e})"),
                        ("pg.events", "pg.pageviews"),
                    )
                } else {
                    (
                        format!("(SELECT * FROM visits WHERE project_id = {p} AND start_ts >= {s} AND end_ts < {e})"),
                        ("events", "pageviews"),
                    )
                };
                let table_dims: Vec<String> = self
                    .dimensions
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Dimension::Page => format!("pg.page AS d{i}, "),
                        d => format!("{} AS d{i}, ", dimension_expr(d, "lts")),
                    })
                    .collect();
                format!(
                    "WITH cx AS (SELECT session_id AS cx_session, person_id AS cx_person, \
                                   start_ts AS cx_start, end_ts AS cx_end FROM visits \
                                 WHERE project_id = {p} AND start_ts < {e} AND end_ts >= {s} \
                                   AND (start_ts < {s} OR end_ts >= {e})), \
                     sl AS ({scan}), \
                     e AS (SELECT sl.* FROM sl JOIN cx ON cx.cx_session = sl.session_id \
                           UNION ALL SELECT sl.* FROM sl JOIN cx ON cx.cx_session IS NULL AND sl.session_id IS NULL \
                             AND cx.cx_person = sl.person_id AND sl.ts BETWEEN cx.cx_start AND cx.cx_end), \
                     {}, \
                     pv_table AS (SELECT {}NULL AS visit_id, person_id, epoch(end_ts - start_ts) AS visit_duration, \
                                    pageviews AS visit_pageviews, events AS visit_events, {} AS n_events, \
                                    {} AS n_pageviews, false AS converted FROM {from}), \
                     pv AS (SELECT * FROM pv_edges UNION ALL BY NAME SELECT * FROM pv_table) \
                     SELECT {select} FROM pv",
                    cut("pv_edges"),
                    table_dims.concat(),
                    per_row.0,
                    per_row.1,
                )
            } else {
                format!("WITH e AS ({scan}), {} SELECT {select} FROM pv", cut("pv"))
            }
        } else {
            format!(
                "WITH e AS ({scan}) SELECT {} FROM e",
                dims_then(&dims, &metrics)
            )
        };
        let mut text = body;
        if !self.dimensions.is_empty() {
            text.push_str(" GROUP BY ALL");
            let mut order: Vec<String> = self
                .order_by
                .iter()
                .map(|(key, desc)| {
                    let col = self.column_of(key);
                    format!("{col} {}", if *desc { "DESC" } else { "ASC" })
                })
                .collect();
            // Ties break on the dimensions so pages are stable.
            order.extend(group.iter().map(|g| format!("{g} ASC NULLS LAST")));
            let (limit, offset) = (b.int(self.limit as i64), b.int(self.offset as i64));
            let counted = self.counted_metrics();
            let where_ = if counted.is_empty() {
                String::new()
            } else {
                let nonzero: Vec<String> = counted
                    .iter()
                    .map(|i| format!("coalesce(m{i}, 0) <> 0"))
                    .collect();
                format!(" WHERE {}", nonzero.join(" OR "))
            };
            text = format!(
                "SELECT {}, count(*) OVER () AS total_rows FROM ({text}){where_} ORDER BY {} LIMIT {limit} OFFSET {offset}",
                outer.join(", "),
                order.join(", ")
            );
        }
        b.finish(text)
    }

    /// Compiles the query to DuckDB SQL.
    /// (The raw plan: visits cut from the events, not read from the visits table.)
    pub fn compile(&self, project: &str) -> tally_store::Sql {
        self.compile_range(project, self.start, self.end, None)
    }

    /// Runs the query: its SQL in the store's dialect, then the labels, comparison and
    /// paging every store shares.
    fn fetch(
        &self,
        store: &dyn Store,
        project: &str,
        start: i64,
        end: i64,
    ) -> Result<(Vec<Value>, u64), QueryError> {
        match store.dialect() {
            Dialect::DuckDb => {
                let edges = if self.reads_visits_table() {
                    let row = store.query(&Self::edge_visits_sql(project, start, end))?;
                    let at = |i: usize| row.first().and_then(|r| r.get(i)).and_then(Value::as_i64);
                    Some(edge_slices(start, end, at(0), at(1)))
                } else {
                    None
                };
                let sql = self.compile_range(project, start, end, edges.as_deref());
                Ok(self.shape(store.query(&sql)?))
            }
            Dialect::ClickHouse => {
                let sql = crate::clickhouse::stats_sql(
                    crate::clickhouse::StatsParts {
                        metrics: &self.metrics.iter().map(Metric::name).collect::<Vec<_>>(),
                        dimensions: &self.dimensions,
                        filters: &self.filters,
                        order: &self
                            .order_by
                            .iter()
                            .map(|(key, desc)| (self.column_of(key), *desc))
                            .collect::<Vec<_>>(),
                        tz: self.tz,
                        rollups: store.rollups(),
                        goal: self.goal.as_deref(),
                    },
                    project,
                    start,
                    end,
                )?;
                // Every group comes back, in order; the page is cut here (18.16 has no
                // window function for the total).
                let counted = self.counted_metrics();
                let n_dims = self.dimensions.len();
                let rows: Rows = store
                    .query(&sql)?
                    .into_iter()
                    .filter(|row| {
                        counted.is_empty() || counted.iter().any(|i| num(&row[n_dims + i]) != 0.0)
                    })
                    .collect();
                let total = rows.len() as u64;
                let mut rows: Vec<_> = rows
                    .into_iter()
                    .skip(self.offset as usize)
                    .take(self.limit as usize)
                    .collect();
                if !self.dimensions.is_empty() {
                    for row in &mut rows {
                        row.push(json!(total));
                    }
                }
                Ok(self.shape(rows))
            }
        }
    }

    pub fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let (mut results, total_rows) = self.fetch(store, project, self.start, self.end)?;
        let labels = self.time_labels();
        if let (Some(labels), [Dimension::Time(_)]) = (&labels, self.dimensions.as_slice()) {
            if self.include.time_labels && self.offset == 0 {
                results = fill_time(results, labels, self.metrics.len());
            }
        }
        if self.compare {
            let span = self.end - self.start;
            let (previous, _) = self.fetch(store, project, self.start - span, self.start)?;
            attach_comparison(&mut results, &previous, &self.dimensions);
        }
        let mut meta = Map::new();
        if self.include.total_rows {
            meta.insert("total_rows".into(), json!(total_rows));
        }
        if self.include.time_labels {
            meta.insert("time_labels".into(), json!(labels));
        }
        let mut out = json!({ "results": results });
        if !meta.is_empty() {
            out["meta"] = Value::Object(meta);
        }
        Ok(out)
    }

    fn shape(&self, rows: Rows) -> (Vec<Value>, u64) {
        let n_dims = self.dimensions.len();
        let n_metrics = self.metrics.len();
        let mut total = if n_dims == 0 { rows.len() as u64 } else { 0 };
        let results = rows
            .into_iter()
            .map(|row| {
                if n_dims > 0 {
                    total = row
                        .get(n_dims + n_metrics)
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                }
                let mut row = row.into_iter();
                let dims: Vec<Value> = row
                    .by_ref()
                    .take(n_dims)
                    .map(|v| {
                        if v.is_null() {
                            Value::String("(none)".into())
                        } else {
                            v
                        }
                    })
                    .collect();
                let metrics: Vec<Value> = row
                    .take(n_metrics)
                    .zip(&self.metrics)
                    .map(|(v, m)| match (v.is_null(), m) {
                        (true, Metric::Prop(..)) => Value::Null,
                        (true, _) => Value::from(0),
                        (false, _) => whole(v),
                    })
                    .collect();
                json!({ "dimensions": dims, "metrics": metrics })
            })
            .collect();
        (results, total)
    }

    /// The positions of the requested counts (visitors, visits, pageviews, events) when a
    /// row in which all of them are 0 is left out: a breakdown by something other than
    /// time, such as `event:page` for pageviews, whose `(none)` row holds only the events
    /// the dimension does not apply to. Empty when every row is kept.
    fn counted_metrics(&self) -> Vec<usize> {
        if self
            .dimensions
            .iter()
            .all(|d| matches!(d, Dimension::Time(_)))
        {
            return Vec::new();
        }
        self.metrics
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                matches!(
                    m,
                    Metric::Visitors | Metric::Visits | Metric::Pageviews | Metric::Events
                )
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Every bucket label of the time dimension over the range, if there is one.
    fn time_labels(&self) -> Option<Vec<String>> {
        let grain = self.dimensions.iter().find_map(|d| match d {
            Dimension::Time(g) => Some(*g),
            _ => None,
        })?;
        let labels = grain.labels(self.tz, self.start, self.end, WeekStart::Monday);
        Some(match grain {
            Interval::Month => labels
                .into_iter()
                .map(|l| format!("{}-01", &l[..7]))
                .collect(),
            _ => labels,
        })
    }

    fn column_of(&self, key: &str) -> String {
        if let Some(i) = self.metrics.iter().position(|m| m.name() == key) {
            return format!("m{i}");
        }
        let i = self
            .dimensions
            .iter()
            .position(|d| d.name() == key)
            .expect("validated");
        format!("d{i}")
    }
}

impl crate::Report for StatsQuery {
    fn normalized(&self) -> Value {
        StatsQuery::normalized(self)
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        StatsQuery::execute(self, store, project)
    }

    fn reads(&self) -> crate::Reads {
        // `compare` also reads the period before, as long as this one.
        let span = self.end - self.start;
        crate::Reads {
            from: if self.compare {
                self.start - span
            } else {
                self.start
            },
            to: self.end,
        }
    }
}

/// What a time dimension groups on (a date or a truncated timestamp).
fn time_group_expr(g: Interval) -> &'static str {
    match g {
        Interval::Minute => "date_trunc('minute', lts)",
        Interval::Hour => "date_trunc('hour', lts)",
        Interval::Day => "CAST(lts AS DATE)",
        Interval::Week => "CAST(date_trunc('week', lts) AS DATE)",
        Interval::Month => "CAST(date_trunc('month', lts) AS DATE)",
    }
}

/// The label format of a time dimension's group value.
fn time_label_format(g: Interval) -> &'static str {
    match g {
        Interval::Minute => "%Y-%m-%d %H:%M:00",
        Interval::Hour => "%Y-%m-%d %H:00:00",
        _ => "%Y-%m-%d",
    }
}

fn dims_then(dims: &[String], metrics: &[String]) -> String {
    dims.iter()
        .chain(metrics)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Integral floats print as integers (DuckDB returns doubles for rounded values).
fn whole(v: Value) -> Value {
    match v.as_f64() {
        Some(f) if v.is_f64() && f.fract() == 0.0 && f.abs() < 9e15 => json!(f as i64),
        _ => v,
    }
}

/// A time series with a row for every bucket, zeros where nothing happened.
fn fill_time(results: Vec<Value>, labels: &[String], n_metrics: usize) -> Vec<Value> {
    labels
        .iter()
        .map(|l| {
            results
                .iter()
                .find(|r| r["dimensions"][0].as_str() == Some(l))
                .cloned()
                .unwrap_or_else(|| json!({ "dimensions": [l], "metrics": vec![0; n_metrics] }))
        })
        .collect()
}

/// Adds each row's previous-period metrics and their change in percent. Rows match on
/// their non-time dimensions; a time bucket matches the bucket at the same position.
fn attach_comparison(results: &mut [Value], previous: &[Value], dims: &[Dimension]) {
    let time_at = dims.iter().position(|d| matches!(d, Dimension::Time(_)));
    let key = |r: &Value| -> Vec<Value> {
        r["dimensions"]
            .as_array()
            .map(|d| {
                d.iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != time_at)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut seen: std::collections::HashMap<Vec<Value>, usize> = Default::default();
    for r in results.iter_mut() {
        let k = key(r);
        let nth = *seen.entry(k.clone()).and_modify(|n| *n += 1).or_insert(0);
        let prev = previous.iter().filter(|p| key(p) == k).nth(nth);
        let metrics = r["metrics"].as_array().cloned().unwrap_or_default();
        let (prev_metrics, change): (Vec<Value>, Vec<Value>) = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let p = prev.map(|p| p["metrics"][i].clone()).unwrap_or(json!(0));
                let change = match (m.as_f64(), p.as_f64()) {
                    (Some(now), Some(before)) if before != 0.0 => {
                        json!(((now - before) / before * 10_000.0).round() / 100.0)
                    }
                    _ => Value::Null,
                };
                (p, change)
            })
            .unzip();
        r["comparison"] = json!({
            "dimensions": prev.map(|p| p["dimensions"].clone()),
            "metrics": prev_metrics,
            "change": change,
        });
    }
}

fn parse_include(v: Option<&Value>) -> Result<Include, QueryError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(Include::default()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(QueryError::invalid(
                "include",
                "must be {\"time_labels\": bool, \"total_rows\": bool}",
            ))
        }
    };
    let mut inc = Include::default();
    for (k, v) in obj {
        let b = v
            .as_bool()
            .ok_or_else(|| QueryError::invalid(format!("include.{k}"), "must be true or false"))?;
        match k.as_str() {
            "time_labels" => inc.time_labels = b,
            "total_rows" => inc.total_rows = b,
            _ => {
                return Err(QueryError::invalid(
                    format!("include.{k}"),
                    "unknown key; use time_labels, total_rows",
                ))
            }
        }
    }
    Ok(inc)
}

fn parse_metrics(v: Option<&Value>) -> Result<Vec<Metric>, QueryError> {
    let list = match v {
        None => {
            return Err(QueryError::invalid(
                "metrics",
                "is required, e.g. [\"visitors\"]",
            ))
        }
        Some(v) => string_list(Some(v), "metrics")?,
    };
    if list.is_empty() {
        return Err(QueryError::invalid(
            "metrics",
            "must name at least one metric",
        ));
    }
    let mut out: Vec<Metric> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let field = format!("metrics[{i}]");
        let metric = Metric::parse(m, &field)?;
        if out.contains(&metric) {
            return Err(QueryError::invalid(field, format!("{m:?} is listed twice")));
        }
        out.push(metric);
    }
    Ok(out)
}

fn auto_grain(span_micros: i64) -> Interval {
    let days = span_micros / (86_400 * MICROS_PER_SEC);
    if days <= 2 {
        Interval::Hour
    } else if days <= 92 {
        Interval::Day
    } else {
        Interval::Month
    }
}

fn parse_order_by(
    v: Option<&Value>,
    metrics: &[String],
    dimensions: &[Dimension],
) -> Result<Vec<(String, bool)>, QueryError> {
    let items = match v {
        None | Some(Value::Null) => {
            // Time series read in time order; breakdowns lead with the biggest.
            return Ok(
                match dimensions.iter().find(|d| matches!(d, Dimension::Time(_))) {
                    Some(t) => vec![(t.name(), false)],
                    None if dimensions.is_empty() => Vec::new(),
                    None => vec![(metrics[0].clone(), true)],
                },
            );
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(QueryError::invalid(
                "order_by",
                "must be a list of [key, direction]",
            ))
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("order_by[{i}]");
        let (key, dir) = match item {
            Value::Array(p) if p.len() == 2 => (p[0].as_str(), p[1].as_str()),
            _ => {
                return Err(QueryError::invalid(
                    field,
                    "must be [key, \"asc\" | \"desc\"]",
                ))
            }
        };
        let key =
            key.ok_or_else(|| QueryError::invalid(format!("{field}[0]"), "must be a string"))?;
        let known = metrics.iter().any(|m| m == key) || dimensions.iter().any(|d| d.name() == key);
        if !known {
            return Err(QueryError::invalid(
                format!("{field}[0]"),
                format!("{key:?} is not one of this query's metrics or dimensions"),
            ));
        }
        let desc = match dir {
            Some("asc") => false,
            Some("desc") => true,
            _ => {
                return Err(QueryError::invalid(
                    format!("{field}[1]"),
                    "must be \"asc\" or \"desc\"",
                ))
            }
        };
        out.push((key.to_owned(), desc));
    }
    Ok(out)
}

fn parse_pagination(v: Option<&Value>) -> Result<(u64, u64), QueryError> {
    parse_pagination_with(v, DEFAULT_LIMIT, MAX_LIMIT)
}

/// The slices of `[start, end)` that hold the events of the visits crossing its edges:
/// from `start` to the end of the last visit begun before it (`head`), and from the start
/// of the first visit ending at or after `end` (`tail`) to `end`. Disjoint, in order.
fn edge_slices(start: i64, end: i64, head: Option<i64>, tail: Option<i64>) -> Vec<(i64, i64)> {
    let mut slices = Vec::new();
    let mut from = start;
    if let Some(h) = head {
        let to = (h + 1).min(end);
        slices.push((start, to));
        from = to;
    }
    if let Some(t) = tail {
        let t = t.max(from).max(start);
        if t < end {
            slices.push((t, end));
        }
    }
    slices
}
