//! The `stats` query: aggregates, breakdowns and time series in one shape, modelled on
//! Plausible's Stats API v2 (`metrics`, `date_range`, `dimensions`, `filters`,
//! `order_by`, `pagination`; results as `{"dimensions": [...], "metrics": [...]}`).

use chrono::{DateTime, Datelike, Duration, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use tally_store::sql::json_key_path;
use tally_store::{Param, Sql, Store};

use crate::time::{self, Bound, MICROS_PER_SEC};
use crate::{Binder, QueryError};

/// Metrics a stats query may ask for.
pub const STATS_METRICS: &[&str] = &["visitors", "events", "pageviews"];

const DEFAULT_LIMIT: u64 = 10_000;
const MAX_LIMIT: u64 = 10_000;
const MAX_DIMENSIONS: usize = 4;
const MAX_FILTER_VALUES: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeGrain {
    Hour,
    Day,
    Week,
    Month,
}

impl TimeGrain {
    fn name(self) -> &'static str {
        match self {
            TimeGrain::Hour => "time:hour",
            TimeGrain::Day => "time:day",
            TimeGrain::Week => "time:week",
            TimeGrain::Month => "time:month",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Dimension {
    Name,
    Page,
    Prop(String),
    Time(TimeGrain),
}

impl Dimension {
    pub(crate) fn parse(s: &str, field: &str) -> Result<Self, QueryError> {
        Ok(match s {
            "event:name" => Dimension::Name,
            "event:page" => Dimension::Page,
            "time:hour" => Dimension::Time(TimeGrain::Hour),
            "time:day" => Dimension::Time(TimeGrain::Day),
            "time:week" => Dimension::Time(TimeGrain::Week),
            "time:month" => Dimension::Time(TimeGrain::Month),
            _ => match s.strip_prefix("event:props:") {
                Some(name) => Dimension::Prop(prop_name(name, field)?),
                None => {
                    return Err(QueryError::invalid(
                        field,
                        format!(
                            "unknown dimension {s:?}; use event:name, event:page, \
                             event:props:<name>, time, time:hour, time:day, time:week or time:month"
                        ),
                    ))
                }
            },
        })
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Dimension::Name => "event:name".into(),
            Dimension::Page => "event:page".into(),
            Dimension::Prop(p) => format!("event:props:{p}"),
            Dimension::Time(g) => g.name().into(),
        }
    }
}

fn prop_name(name: &str, field: &str) -> Result<String, QueryError> {
    if name.is_empty() || name.len() > 200 {
        return Err(QueryError::invalid(
            field,
            "a property name must be 1 to 200 characters",
        ));
    }
    Ok(name.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterOp {
    Is,
    IsNot,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Filter {
    op: FilterOp,
    dimension: Dimension,
    values: Vec<String>,
}

/// A validated, normalized stats query.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsQuery {
    metrics: Vec<&'static str>,
    dimensions: Vec<Dimension>,
    filters: Vec<Filter>,
    order_by: Vec<(String, bool)>,
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
        first_event: impl FnOnce(&str) -> Result<Option<i64>, QueryError>,
        project: &str,
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
        ];
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(QueryError::invalid(
                k.as_str(),
                format!("unknown key; a stats query has: {}", KEYS.join(", ")),
            ));
        }

        let tz = parse_timezone(obj.get("timezone"))?;

        let metrics = parse_metrics(obj.get("metrics"))?;
        let (start, end) =
            parse_date_range(obj.get("date_range"), tz, now, || first_event(project))?;

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
            dimensions.push(dim);
        }
        if dimensions.len() > MAX_DIMENSIONS {
            return Err(QueryError::invalid(
                "dimensions",
                format!("at most {MAX_DIMENSIONS} dimensions"),
            ));
        }

        let filters = parse_filters_for(obj.get("filters"))?;
        let order_by = parse_order_by(obj.get("order_by"), &metrics, &dimensions)?;
        let (limit, offset) = parse_pagination(obj.get("pagination"))?;

        Ok(Self {
            metrics,
            dimensions,
            filters,
            order_by,
            tz,
            start,
            end,
            limit,
            offset,
        })
    }

    /// The query as understood, with every default filled in.
    pub fn normalized(&self) -> Value {
        let filters: Vec<Value> = self.filters.iter().map(Filter::normalized).collect();
        json!({
            "kind": "stats",
            "metrics": self.metrics,
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
        })
    }

    /// Compiles the query to DuckDB SQL.
    pub fn compile(&self, project: &str) -> Sql {
        let mut params = vec![
            Param::Text(project.to_owned()),
            Param::Timestamp(self.start),
            Param::Timestamp(self.end),
        ];
        let local = self.local_ts_expr();
        let mut select = Vec::new();
        for (i, d) in self.dimensions.iter().enumerate() {
            select.push(format!("{} AS d{i}", dimension_expr(d, &local)));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            select.push(format!("{} AS m{i}", metric_expr(m)));
        }
        let mut wheres = vec![
            "project_id = ?".to_owned(),
            "ts >= ?".to_owned(),
            "ts < ?".to_owned(),
            "type IN ('track', 'page', 'screen')".to_owned(),
        ];
        for f in &self.filters {
            wheres.push(filter_sql(f, &local, &mut params));
        }
        let mut text = format!(
            "SELECT {} FROM events WHERE {}",
            select.join(", "),
            wheres.join(" AND ")
        );
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
            for i in 0..self.dimensions.len() {
                order.push(format!("d{i} ASC NULLS LAST"));
            }
            text.push_str(&format!(" ORDER BY {} LIMIT ? OFFSET ?", order.join(", ")));
            params.push(Param::Int(self.limit as i64));
            params.push(Param::Int(self.offset as i64));
        }
        Sql { text, params }
    }

    pub fn execute(&self, store: &dyn Store, project: &str) -> Result<Vec<Value>, QueryError> {
        let rows = store.query(&self.compile(project))?;
        let n_dims = self.dimensions.len();
        Ok(rows
            .into_iter()
            .map(|row| {
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
                    .map(|v| if v.is_null() { Value::from(0) } else { v })
                    .collect();
                json!({ "dimensions": dims, "metrics": metrics })
            })
            .collect())
    }

    fn column_of(&self, key: &str) -> String {
        if let Some(i) = self.metrics.iter().position(|m| *m == key) {
            return format!("m{i}");
        }
        let i = self
            .dimensions
            .iter()
            .position(|d| d.name() == key)
            .expect("validated");
        format!("d{i}")
    }

    /// `ts` shifted to local wall-clock time in the query's timezone.
    fn local_ts_expr(&self) -> String {
        time::local_ts_sql(self.tz, self.start, self.end)
    }
}

pub(crate) fn parse_timezone(v: Option<&Value>) -> Result<Tz, QueryError> {
    match v {
        None | Some(Value::Null) => Ok(Tz::UTC),
        Some(Value::String(s)) => s.parse().map_err(|_| {
            QueryError::invalid("timezone", format!("{s:?} is not an IANA timezone name"))
        }),
        Some(_) => Err(QueryError::invalid("timezone", "must be a string")),
    }
}

fn auto_grain(span_micros: i64) -> TimeGrain {
    let days = span_micros / (86_400 * MICROS_PER_SEC);
    if days <= 2 {
        TimeGrain::Hour
    } else if days <= 92 {
        TimeGrain::Day
    } else {
        TimeGrain::Month
    }
}

pub(crate) fn dimension_expr(d: &Dimension, local: &str) -> String {
    match d {
        Dimension::Name => "event".into(),
        Dimension::Page => "page".into(),
        Dimension::Prop(p) => format!("json_extract_string(properties, {})", json_key_path(p)),
        Dimension::Time(TimeGrain::Hour) => {
            format!("strftime(date_trunc('hour', {local}), '%Y-%m-%d %H:00:00')")
        }
        Dimension::Time(TimeGrain::Day) => format!("strftime({local}, '%Y-%m-%d')"),
        Dimension::Time(TimeGrain::Week) => {
            format!("strftime(date_trunc('week', {local}), '%Y-%m-%d')")
        }
        Dimension::Time(TimeGrain::Month) => {
            format!("strftime(date_trunc('month', {local}), '%Y-%m-01')")
        }
    }
}

fn metric_expr(m: &str) -> &'static str {
    match m {
        "visitors" => "count(DISTINCT visitor_id)",
        "events" => "count(*)",
        "pageviews" => "count(*) FILTER (WHERE type = 'page' OR event = 'page_visit')",
        _ => unreachable!("metrics are validated against STATS_METRICS"),
    }
}

impl Filter {
    pub(crate) fn normalized(&self) -> Value {
        let op = match self.op {
            FilterOp::Is => "is",
            FilterOp::IsNot => "is_not",
            FilterOp::Contains => "contains",
        };
        json!([op, self.dimension.name(), self.values])
    }

    /// The filter as a SQL condition; its values are appended to `params`.
    pub(crate) fn sql(&self, local: &str, params: &mut Vec<Param>) -> String {
        filter_sql(self, local, params)
    }

    /// The filter as a SQL condition over the columns of `events`, values bound by `b`.
    pub(crate) fn sql_with(&self, local: &str, b: &mut Binder) -> String {
        let expr = dimension_expr(&self.dimension, local);
        match self.op {
            FilterOp::Is => {
                let list: Vec<String> = self.values.iter().map(|v| b.text(v)).collect();
                format!("{expr} IN ({})", list.join(", "))
            }
            FilterOp::IsNot => {
                let list: Vec<String> = self.values.iter().map(|v| b.text(v)).collect();
                format!("({expr} IS NULL OR {expr} NOT IN ({}))", list.join(", "))
            }
            FilterOp::Contains => {
                let any: Vec<String> = self
                    .values
                    .iter()
                    .map(|v| format!("contains(lower({expr}), lower({}))", b.text(v)))
                    .collect();
                format!("coalesce({}, false)", any.join(" OR "))
            }
        }
    }
}

fn filter_sql(f: &Filter, local: &str, params: &mut Vec<Param>) -> String {
    let mut binder = Binder::positional(std::mem::take(params));
    let sql = f.sql_with(local, &mut binder);
    *params = binder.into_params();
    sql
}

fn parse_metrics(v: Option<&Value>) -> Result<Vec<&'static str>, QueryError> {
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
    let mut out: Vec<&'static str> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let field = format!("metrics[{i}]");
        let known = STATS_METRICS.iter().find(|k| **k == m).ok_or_else(|| {
            QueryError::invalid(
                &field,
                format!(
                    "unknown metric {m:?}; supported: {}",
                    STATS_METRICS.join(", ")
                ),
            )
        })?;
        if out.contains(known) {
            return Err(QueryError::invalid(field, format!("{m:?} is listed twice")));
        }
        out.push(known);
    }
    Ok(out)
}

pub(crate) fn string_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, QueryError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(QueryError::invalid(
                    format!("{field}[{i}]"),
                    "must be a string",
                )),
            })
            .collect(),
        Some(_) => Err(QueryError::invalid(field, "must be a list of strings")),
    }
}

pub(crate) fn parse_date_range(
    v: Option<&Value>,
    tz: Tz,
    now: DateTime<Utc>,
    first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
) -> Result<(i64, i64), QueryError> {
    let today = time::today(tz, now);
    let day_after = |d: chrono::NaiveDate| time::day_start(tz, d + Duration::days(1));
    let last_days = |n: i64| {
        Ok((
            time::day_start(tz, today - Duration::days(n - 1)),
            day_after(today),
        ))
    };
    match v {
        None => Err(QueryError::invalid(
            "date_range",
            "is required: \"day\", \"7d\", \"30d\", \"month\", \"all\", or [from, to]",
        )),
        Some(Value::String(preset)) => match preset.as_str() {
            "day" => last_days(1),
            "7d" => last_days(7),
            "28d" => last_days(28),
            "30d" => last_days(30),
            "91d" => last_days(91),
            "month" => {
                let first = today.with_day0(0).expect("day 1 exists");
                Ok((time::day_start(tz, first), day_after(today)))
            }
            "year" => {
                let first = today.with_ordinal0(0).expect("day 1 exists");
                Ok((time::day_start(tz, first), day_after(today)))
            }
            "all" => {
                let first = first_event()?.unwrap_or(now.timestamp_micros());
                let first_day = DateTime::<Utc>::from_timestamp_micros(first)
                    .unwrap_or(now)
                    .with_timezone(&tz)
                    .date_naive();
                Ok((time::day_start(tz, first_day.min(today)), day_after(today)))
            }
            other => Err(QueryError::invalid(
                "date_range",
                format!(
                    "unknown preset {other:?}; use day, 7d, 28d, 30d, 91d, month, year, all, \
                     or [from, to]"
                ),
            )),
        },
        Some(Value::Array(pair)) if pair.len() == 2 => {
            let bound = |i: usize| -> Result<Bound, QueryError> {
                let field = format!("date_range[{i}]");
                match &pair[i] {
                    Value::String(s) => time::parse_bound(s, &field),
                    _ => Err(QueryError::invalid(field, "must be a string date")),
                }
            };
            let start = match bound(0)? {
                Bound::Date(d) => time::day_start(tz, d),
                Bound::Instant(t) => t,
            };
            // A date as the end means "through the end of that day".
            let end = match bound(1)? {
                Bound::Date(d) => day_after(d),
                Bound::Instant(t) => t + MICROS_PER_SEC,
            };
            if end <= start {
                return Err(QueryError::invalid(
                    "date_range",
                    "the end is before the start",
                ));
            }
            Ok((start, end))
        }
        Some(_) => Err(QueryError::invalid(
            "date_range",
            "must be a preset string or a list of two dates [from, to]",
        )),
    }
}

pub(crate) fn parse_filters_for(v: Option<&Value>) -> Result<Vec<Filter>, QueryError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(QueryError::invalid("filters", "must be a list of filters")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = format!("filters[{i}]");
            let parts = match f {
                Value::Array(p) if p.len() == 3 => p,
                _ => {
                    return Err(QueryError::invalid(
                        field,
                        "a filter is [operator, dimension, [values]], e.g. [\"is\", \"event:name\", [\"signup\"]]",
                    ))
                }
            };
            let op = match parts[0].as_str() {
                Some("is") => FilterOp::Is,
                Some("is_not") => FilterOp::IsNot,
                Some("contains") => FilterOp::Contains,
                _ => {
                    return Err(QueryError::invalid(
                        format!("{field}[0]"),
                        "operator must be \"is\", \"is_not\" or \"contains\"",
                    ))
                }
            };
            let dim_field = format!("{field}[1]");
            let dimension = match parts[1].as_str() {
                Some(d) => Dimension::parse(d, &dim_field)?,
                None => return Err(QueryError::invalid(dim_field, "must be a dimension name")),
            };
            if matches!(dimension, Dimension::Time(_)) {
                return Err(QueryError::invalid(
                    dim_field,
                    "filter time with date_range, not a filter",
                ));
            }
            let values = string_list(Some(&parts[2]), &format!("{field}[2]"))?;
            if values.is_empty() || values.len() > MAX_FILTER_VALUES {
                return Err(QueryError::invalid(
                    format!("{field}[2]"),
                    format!("must list 1 to {MAX_FILTER_VALUES} values"),
                ));
            }
            Ok(Filter { op, dimension, values })
        })
        .collect()
}

fn parse_order_by(
    v: Option<&Value>,
    metrics: &[&'static str],
    dimensions: &[Dimension],
) -> Result<Vec<(String, bool)>, QueryError> {
    let items = match v {
        None | Some(Value::Null) => {
            // Time series read in time order; breakdowns lead with the biggest.
            return Ok(
                match dimensions.iter().find(|d| matches!(d, Dimension::Time(_))) {
                    Some(t) => vec![(t.name(), false)],
                    None if dimensions.is_empty() => Vec::new(),
                    None => vec![(metrics[0].to_owned(), true)],
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
        let known = metrics.contains(&key) || dimensions.iter().any(|d| d.name() == key);
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

pub(crate) fn parse_pagination_with(
    v: Option<&Value>,
    default_limit: u64,
    max_limit: u64,
) -> Result<(u64, u64), QueryError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok((default_limit, 0)),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(QueryError::invalid(
                "pagination",
                "must be {\"limit\": n, \"offset\": n}",
            ))
        }
    };
    let num = |k: &str, default: u64| -> Result<u64, QueryError> {
        match obj.get(k) {
            None => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                QueryError::invalid(format!("pagination.{k}"), "must be a whole number ≥ 0")
            }),
        }
    };
    if let Some(k) = obj.keys().find(|k| *k != "limit" && *k != "offset") {
        return Err(QueryError::invalid(
            format!("pagination.{k}"),
            "unknown key",
        ));
    }
    let limit = num("limit", default_limit)?;
    if limit == 0 || limit > max_limit {
        return Err(QueryError::invalid(
            "pagination.limit",
            format!("must be 1 to {max_limit}"),
        ));
    }
    Ok((limit, num("offset", 0)?))
}
