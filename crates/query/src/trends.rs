//! The `trends` query: one or more series (an event, its filters and a math), bucketed
//! by interval, optionally broken down by up to three dimensions (top N, the rest folded
//! into `$other`), and a formula over the series (`A / B * 100`).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use tally_store::sql::json_key_path;
use tally_store::{Dialect, Store};

use crate::common::{
    check_keys, num, range_echo, uint_field, EventMatch, Interval, Scan, WeekStart,
};
use crate::dims::{dimension_expr, Dimension, Filter};
use crate::formula::Formula;
use crate::request::{parse_date_range, parse_timezone, string_list};
use crate::time::MICROS_PER_SEC;
use crate::{Binder, QueryError};

const MAX_SERIES: usize = 10;
const MAX_BREAKDOWNS: usize = 3;
const OTHER: &str = "$other";
const NONE: &str = "(none)";

#[derive(Debug, Clone, PartialEq)]
enum Math {
    Total,
    Unique,
    Dau,
    Wau,
    Mau,
    Sum(String),
    Avg(String),
    Min(String),
    Max(String),
}

impl Math {
    fn name(&self) -> &'static str {
        match self {
            Math::Total => "total",
            Math::Unique => "unique",
            Math::Dau => "dau",
            Math::Wau => "wau",
            Math::Mau => "mau",
            Math::Sum(_) => "sum",
            Math::Avg(_) => "avg",
            Math::Min(_) => "min",
            Math::Max(_) => "max",
        }
    }

    fn property(&self) -> Option<&str> {
        match self {
            Math::Sum(p) | Math::Avg(p) | Math::Min(p) | Math::Max(p) => Some(p),
            _ => None,
        }
    }

    /// Days of activity a rolling math looks back over (the bucket's day included).
    fn window_days(&self) -> i64 {
        match self {
            Math::Wau => 7,
            Math::Mau => 30,
            _ => 1,
        }
    }

    fn agg_sql(&self) -> String {
        let prop = |p: &str| {
            format!(
                "TRY_CAST(json_extract_string(properties, {}) AS DOUBLE)",
                json_key_path(p)
            )
        };
        match self {
            Math::Total => "count(*)".into(),
            Math::Unique | Math::Dau | Math::Wau | Math::Mau => "count(DISTINCT person_id)".into(),
            Math::Sum(p) => format!("sum({})", prop(p)),
            Math::Avg(p) => format!("avg({})", prop(p)),
            Math::Min(p) => format!("min({})", prop(p)),
            Math::Max(p) => format!("max({})", prop(p)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Series {
    name: String,
    matcher: EventMatch,
    math: Math,
}

pub(crate) struct TrendsQuery {
    series: Vec<Series>,
    formula: Option<(String, Formula)>,
    breakdown: Vec<Dimension>,
    breakdown_limit: u64,
    filters: Vec<Filter>,
    interval: Interval,
    week_start: WeekStart,
    tz: Tz,
    start: i64,
    end: i64,
}

impl TrendsQuery {
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
                "series",
                "formula",
                "breakdown",
                "breakdown_limit",
                "filters",
                "date_range",
                "interval",
                "timezone",
                "week_start",
            ],
        )?;
        let tz = parse_timezone(obj.get("timezone"))?;
        let week_start = WeekStart::parse(obj.get("week_start"))?;
        let (start, end) = parse_date_range(obj.get("date_range"), tz, now, first_event)?;
        let interval = Interval::parse(
            obj.get("interval"),
            "interval",
            Interval::Day,
            &[
                Interval::Minute,
                Interval::Hour,
                Interval::Day,
                Interval::Week,
                Interval::Month,
            ],
        )?;
        let buckets = interval.labels(tz, start, end, week_start).len();
        if buckets > 2_000 {
            return Err(QueryError::invalid(
                "interval",
                format!("{buckets} buckets; pick a longer interval or a shorter date_range (at most 2000)"),
            ));
        }

        let items = match obj.get("series") {
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_SERIES => items,
            _ => {
                return Err(QueryError::invalid(
                    "series",
                    format!("is required: a list of 1 to {MAX_SERIES} series such as {{\"event\": \"signup\", \"math\": \"total\"}}"),
                ))
            }
        };
        let mut series = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("series[{i}]");
            let matcher = EventMatch::parse(item, &field, &["math", "property", "name"])?;
            let obj = item
                .as_object()
                .expect("EventMatch checked it is an object");
            let property = match obj.get("property") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if !p.is_empty() => Some(p.clone()),
                Some(_) => {
                    return Err(QueryError::invalid(
                        format!("{field}.property"),
                        "must be a property name",
                    ))
                }
            };
            let math_name = match obj.get("math") {
                None | Some(Value::Null) => "total",
                Some(Value::String(m)) => m.as_str(),
                Some(_) => "",
            };
            let needs_prop = |p: Option<String>| {
                p.ok_or_else(|| {
                    QueryError::invalid(
                        format!("{field}.property"),
                        format!("math {math_name:?} needs a numeric property to aggregate"),
                    )
                })
            };
            let math = match math_name {
                "total" => Math::Total,
                "unique" => Math::Unique,
                "dau" => Math::Dau,
                "wau" => Math::Wau,
                "mau" => Math::Mau,
                "sum" => Math::Sum(needs_prop(property)?),
                "avg" => Math::Avg(needs_prop(property)?),
                "min" => Math::Min(needs_prop(property)?),
                "max" => Math::Max(needs_prop(property)?),
                _ => {
                    return Err(QueryError::invalid(
                        format!("{field}.math"),
                        "must be one of: total, unique, dau, wau, mau, sum, avg, min, max",
                    ))
                }
            };
            if matches!(math, Math::Wau | Math::Mau) && interval != Interval::Day {
                return Err(QueryError::invalid(
                    format!("{field}.math"),
                    "wau and mau are rolling windows over days: use \"interval\": \"day\"",
                ));
            }
            let name = match obj.get("name") {
                None | Some(Value::Null) => series_letter(i),
                Some(Value::String(n)) if is_series_name(n) => n.clone(),
                Some(_) => {
                    return Err(QueryError::invalid(
                        format!("{field}.name"),
                        "must be a letter or word (A-Z, a-z, 0-9, _) used in the formula",
                    ))
                }
            };
            if series.iter().any(|s: &Series| s.name == name) {
                return Err(QueryError::invalid(
                    format!("{field}.name"),
                    format!("{name:?} names two series"),
                ));
            }
            series.push(Series {
                name,
                matcher,
                math,
            });
        }

        let formula = match obj.get("formula") {
            None | Some(Value::Null) => None,
            Some(Value::String(f)) => {
                let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
                let parsed =
                    Formula::parse(f, &names).map_err(|m| QueryError::invalid("formula", m))?;
                Some((f.clone(), parsed))
            }
            Some(_) => {
                return Err(QueryError::invalid(
                    "formula",
                    "must be a string like \"A / B\"",
                ))
            }
        };

        let mut breakdown = Vec::new();
        for (i, d) in string_list(obj.get("breakdown"), "breakdown")?
            .iter()
            .enumerate()
        {
            let field = format!("breakdown[{i}]");
            let dim = Dimension::parse(d, &field)?;
            crate::dims::no_visit_dims([&dim], &field)?;
            if matches!(dim, Dimension::Time(_)) {
                return Err(QueryError::invalid(
                    field,
                    "time is the interval of a trend; break down by an event dimension",
                ));
            }
            if breakdown.contains(&dim) {
                return Err(QueryError::invalid(field, format!("{d:?} is listed twice")));
            }
            breakdown.push(dim);
        }
        if breakdown.len() > MAX_BREAKDOWNS {
            return Err(QueryError::invalid(
                "breakdown",
                format!("at most {MAX_BREAKDOWNS} dimensions"),
            ));
        }
        if !breakdown.is_empty() {
            if let Some((i, _)) = series
                .iter()
                .enumerate()
                .find(|(_, s)| matches!(s.math, Math::Wau | Math::Mau))
            {
                return Err(QueryError::invalid(
                    format!("series[{i}].math"),
                    "wau and mau cannot be broken down; use dau or unique",
                ));
            }
        }
        let breakdown_limit = uint_field(obj, "breakdown_limit", "breakdown_limit", 10, 1, 1_000)?;
        let filters = crate::dims::parse_event_filters(obj.get("filters"), "filters")?;
        Ok(Self {
            series,
            formula,
            breakdown,
            breakdown_limit,
            filters,
            interval,
            week_start,
            tz,
            start,
            end,
        })
    }

    fn compile(&self, s: &Series, project: &str) -> tally_store::Sql {
        let mut b = Binder::numbered();
        // Rolling windows need the days before the range too.
        let lookback = (s.math.window_days() - 1) * 86_400 * MICROS_PER_SEC;
        let scan = Scan {
            project,
            start: Some(self.start - lookback),
            end: self.end,
            tz: self.tz,
            local_range: (self.start - lookback, self.end),
            filters: &self.filters,
            persons: self.breakdown.iter().any(Dimension::needs_person)
                || s.matcher.needs_persons(),
            accounts: false,
        }
        .sql(&mut b);
        let local = "lts";
        let matcher = s.matcher.sql(local, &mut b);
        // Group by the truncated time and format labels after aggregating: formatting
        // every row first costs as much as the aggregation.
        let bucket = self.interval.trunc_sql("lts", self.week_start);
        let label = self.interval.label_sql("bucket");

        if matches!(s.math, Math::Wau | Math::Mau) {
            // Every (person, day) spreads to the days whose window it falls in.
            let days = s.math.window_days();
            let local_day = |micros: i64| {
                DateTime::<Utc>::from_timestamp_micros(micros)
                    .unwrap_or_default()
                    .with_timezone(&self.tz)
                    .date_naive()
                    .format("%Y-%m-%d")
                    .to_string()
            };
            let first = b.text(&local_day(self.start));
            let last = b.text(&local_day(self.end - 1));
            let text = format!(
                // Each active (person, day) covers the days up to `days - 1` later, cut
                // short where the person's next active day takes over: the pieces of
                // one person never overlap, so a running sum of +1/-1 counts people.
                "WITH pd AS (SELECT DISTINCT person_id, CAST(lts AS DATE) AS d FROM ({scan}) e \
                 WHERE {matcher}), \
                 iv AS (SELECT d AS s, least(d + {last_day}, \
                          coalesce(lead(d) OVER (PARTITION BY person_id ORDER BY d) - 1, d + {last_day})) AS e \
                        FROM pd), \
                 deltas AS (SELECT s AS day, 1 AS x FROM iv UNION ALL SELECT e + 1, -1 FROM iv \
                   UNION ALL SELECT CAST(range AS DATE), 0 FROM range(CAST({first} AS TIMESTAMP), \
                     CAST({last} AS TIMESTAMP) + INTERVAL 1 DAY, INTERVAL 1 DAY)), \
                 running AS (SELECT day, sum(sum(x)) OVER (ORDER BY day) AS value FROM deltas GROUP BY day) \
                 SELECT strftime(day, '%Y-%m-%d') AS bucket, value FROM running \
                 WHERE day BETWEEN CAST({first} AS DATE) AND CAST({last} AS DATE) \
                 UNION ALL \
                 SELECT NULL, count(DISTINCT person_id) FROM pd \
                 WHERE d BETWEEN CAST({first} AS DATE) AND CAST({last} AS DATE)",
                last_day = days - 1,
            );
            return b.finish(text);
        }

        let agg = s.math.agg_sql();
        if self.breakdown.is_empty() {
            let text = format!(
                "SELECT {label}, value FROM (SELECT {bucket} AS bucket, {agg} AS value \
                 FROM ({scan}) e WHERE {matcher} GROUP BY GROUPING SETS ((bucket), ()))"
            );
            return b.finish(text);
        }

        let dims: Vec<String> = self
            .breakdown
            .iter()
            .enumerate()
            .map(|(i, d)| {
                format!(
                    "coalesce(CAST({} AS VARCHAR), '{NONE}') AS b{i}",
                    dimension_expr(d, local)
                )
            })
            .collect();
        let names: Vec<String> = (0..self.breakdown.len()).map(|i| format!("b{i}")).collect();
        let on: Vec<String> = names
            .iter()
            .map(|n| format!("base.{n} = top.{n}"))
            .collect();
        let folded: Vec<String> = names
            .iter()
            .map(|n| format!("CASE WHEN top.n IS NULL THEN '{OTHER}' ELSE base.{n} END AS {n}"))
            .collect();
        let limit = b.int(self.breakdown_limit as i64);
        let names = names.join(", ");
        let text = format!(
            "WITH base AS (SELECT *, {dims}, {bucket} AS bucket FROM ({scan}) e WHERE {matcher}), \
             top AS (SELECT {names}, count(*) AS n FROM base GROUP BY ALL \
                     ORDER BY n DESC, {names} LIMIT {limit}), \
             folded AS (SELECT base.* EXCLUDE ({names}), {folded} \
                        FROM base LEFT JOIN top ON {on}), \
             grouped AS (SELECT bucket, {names}, {agg} AS value FROM folded \
                         GROUP BY GROUPING SETS ((bucket, {names}), ({names}))) \
             SELECT {label}, {names}, value FROM grouped",
            dims = dims.join(", "),
            folded = folded.join(", "),
            on = on.join(" AND "),
        );
        b.finish(text)
    }

    /// Turns SQL rows (bucket, breakdown..., value) into one result per breakdown value.
    fn shape(&self, s: &Series, rows: tally_store::Rows, labels: &[String]) -> Vec<Value> {
        let n_b = self.breakdown.len();
        // breakdown key -> (bucket -> value, total)
        let mut groups: Vec<(Vec<String>, Vec<f64>, f64)> = Vec::new();
        for row in rows {
            let bucket = row.first().and_then(Value::as_str).map(str::to_owned);
            let key: Vec<String> = row[1..1 + n_b]
                .iter()
                .map(|v| v.as_str().unwrap_or(NONE).to_owned())
                .collect();
            let value = num(&row[1 + n_b]);
            let idx = match groups.iter().position(|g| g.0 == key) {
                Some(i) => i,
                None => {
                    groups.push((key, vec![0.0; labels.len()], 0.0));
                    groups.len() - 1
                }
            };
            match bucket {
                Some(b) => {
                    if let Some(i) = labels.iter().position(|l| *l == b) {
                        groups[idx].1[i] = value;
                    }
                }
                None => groups[idx].2 = value,
            }
        }
        if groups.is_empty() {
            groups.push((Vec::new(), vec![0.0; labels.len()], 0.0));
        }
        // Biggest first; `$other` last.
        groups.sort_by(|a, b| {
            let other = |g: &(Vec<String>, _, _)| g.0.iter().any(|k| k == OTHER);
            other(a)
                .cmp(&other(b))
                .then(b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal))
                .then(a.0.cmp(&b.0))
        });
        groups
            .into_iter()
            .map(|(key, data, total)| {
                json!({
                    "series": s.name,
                    "label": s.matcher.label(),
                    "math": s.math.name(),
                    "breakdown": key,
                    "labels": labels,
                    "data": data.iter().map(|v| clean(*v)).collect::<Vec<_>>(),
                    "total": clean(total),
                })
            })
            .collect()
    }

    /// The formula, bucket by bucket, for every breakdown value any series has.
    fn apply_formula(
        &self,
        text: &str,
        formula: &Formula,
        results: &[Value],
        labels: &[String],
    ) -> Value {
        let mut keys: Vec<Value> = Vec::new();
        for r in results {
            if !keys.contains(&r["breakdown"]) {
                keys.push(r["breakdown"].clone());
            }
        }
        let lookup = |series: &str, key: &Value, i: Option<usize>| -> f64 {
            results
                .iter()
                .find(|r| r["series"] == series && r["breakdown"] == *key)
                .map(|r| match i {
                    Some(i) => num(&r["data"][i]),
                    None => num(&r["total"]),
                })
                .unwrap_or(0.0)
        };
        let rows: Vec<Value> = keys
            .iter()
            .map(|key| {
                let data: Vec<Value> = (0..labels.len())
                    .map(|i| opt(formula.eval(&|name| lookup(name, key, Some(i)))))
                    .collect();
                let total = opt(formula.eval(&|name| lookup(name, key, None)));
                json!({ "breakdown": key, "labels": labels, "data": data, "total": total })
            })
            .collect();
        json!({ "expression": text, "results": rows })
    }
}

impl crate::Report for TrendsQuery {
    fn reads(&self) -> crate::Reads {
        // Rolling windows read the days before the range too.
        let lookback = self
            .series
            .iter()
            .map(|s| (s.math.window_days() - 1) * 86_400 * MICROS_PER_SEC)
            .max()
            .unwrap_or(0);
        crate::Reads {
            from: self.start - lookback,
            to: self.end,
        }
    }

    fn normalized(&self) -> Value {
        json!({
            "kind": "trends",
            "series": self.series.iter().map(|s| {
                let mut v = s.matcher.normalized();
                v["math"] = json!(s.math.name());
                if let Some(p) = s.math.property() {
                    v["property"] = json!(p);
                }
                v["name"] = json!(s.name);
                v
            }).collect::<Vec<_>>(),
            "formula": self.formula.as_ref().map(|(f, _)| f.clone()),
            "breakdown": self.breakdown.iter().map(Dimension::name).collect::<Vec<_>>(),
            "breakdown_limit": self.breakdown_limit,
            "filters": self.filters.iter().map(Filter::normalized).collect::<Vec<_>>(),
            "date_range": range_echo(self.tz, self.start, self.end),
            "interval": self.interval.name(),
            "timezone": self.tz.name(),
            "week_start": self.week_start.name(),
        })
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let labels = self
            .interval
            .labels(self.tz, self.start, self.end, self.week_start);
        let mut results = Vec::new();
        for s in &self.series {
            let sql = match store.dialect() {
                Dialect::DuckDb => self.compile(s, project),
                Dialect::ClickHouse => crate::clickhouse::trends_series_sql(
                    crate::clickhouse::TrendsSeries {
                        math: s.math.name(),
                        property: match &s.math {
                            Math::Sum(p) | Math::Avg(p) | Math::Min(p) | Math::Max(p) => {
                                Some(p.as_str())
                            }
                            _ => None,
                        },
                        matcher: &s.matcher,
                        filters: &self.filters,
                        breakdown: &self.breakdown,
                        breakdown_limit: self.breakdown_limit,
                        interval: self.interval,
                        week: self.week_start,
                        tz: self.tz,
                    },
                    project,
                    self.start,
                    self.end,
                )?,
            };
            let rows = store.query(&sql)?;
            results.extend(self.shape(s, rows, &labels));
        }
        let mut out = json!({ "results": results });
        if let Some((text, formula)) = &self.formula {
            out["formula"] = self.apply_formula(text, formula, &results, &labels);
        }
        Ok(out)
    }
}

fn series_letter(i: usize) -> String {
    char::from(b'A' + i as u8).to_string()
}

fn is_series_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// Whole numbers print as integers; others keep 4 decimals.
fn clean(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        json!(v as i64)
    } else {
        json!((v * 10_000.0).round() / 10_000.0)
    }
}

fn opt(v: Option<f64>) -> Value {
    v.map(clean).unwrap_or(Value::Null)
}
