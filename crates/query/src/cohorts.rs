//! Reports on who comes back: `retention` (cohort grids), `lifecycle` (new, returning,
//! resurrecting and dormant per interval) and `stickiness` (how many intervals of the
//! period people were active in).
//!
//! Periods are local to the query's timezone; a person's activity in a period is
//! "did at least one matching event", counted per person (device and signed-in user
//! joined) or per account.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use tally_store::{Dialect, Store};

use crate::common::{
    check_keys, num, pct, range_echo, uint_field, CountBy, EventMatch, Interval, Scan, WeekStart,
};
use crate::dims::Filter;
use crate::request::{parse_date_range, parse_timezone};
use crate::time::MICROS_PER_SEC;
use crate::{Binder, QueryError};

/// What the three kinds share: range, timezone, period, who is counted, which events.
struct Frame {
    tz: Tz,
    week_start: WeekStart,
    start: i64,
    end: i64,
    interval: Interval,
    count_by: CountBy,
    filters: Vec<Filter>,
}

impl Frame {
    fn parse(
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
        interval_key: &str,
        default: Interval,
    ) -> Result<Self, QueryError> {
        let tz = parse_timezone(obj.get("timezone"))?;
        let (start, end) = parse_date_range(obj.get("date_range"), tz, now, first_event)?;
        Ok(Self {
            tz,
            week_start: WeekStart::parse(obj.get("week_start"))?,
            start,
            end,
            interval: Interval::parse(
                obj.get(interval_key),
                interval_key,
                default,
                &[
                    Interval::Hour,
                    Interval::Day,
                    Interval::Week,
                    Interval::Month,
                ],
            )?,
            count_by: CountBy::parse(obj.get("count_by"))?,
            filters: crate::dims::parse_event_filters(obj.get("filters"), "filters")?,
        })
    }

    fn echo(&self, into: &mut Value, interval_key: &str) {
        into["date_range"] = range_echo(self.tz, self.start, self.end);
        into["timezone"] = json!(self.tz.name());
        into["week_start"] = json!(self.week_start.name());
        into[interval_key] = json!(self.interval.name());
        into["count_by"] = json!(self.count_by.name());
        into["filters"] = json!(self
            .filters
            .iter()
            .map(Filter::normalized)
            .collect::<Vec<_>>());
    }

    /// The scan of `[start, end)` (`start` None: from the first event).
    /// `matchers`: the events the report matches, whose person traits the scan then
    /// joins if any of them (or the report's filters) read one.
    fn scan(
        &self,
        project: &str,
        start: Option<i64>,
        end: i64,
        matchers: &[&EventMatch],
        b: &mut Binder,
    ) -> String {
        let persons = matchers.iter().any(|m| m.needs_persons())
            || self
                .filters
                .iter()
                .flat_map(Filter::dimensions)
                .any(|d| d.needs_person());
        Scan {
            project,
            start,
            end,
            tz: self.tz,
            local_range: (
                start.unwrap_or(self.start).min(self.start),
                end.max(self.end),
            ),
            filters: &self.filters,
            persons,
            accounts: self.count_by == CountBy::Account,
        }
        .sql(b)
    }

    fn bucket(&self) -> String {
        self.interval.trunc_sql("lts", self.week_start)
    }

    /// How many periods lie between two bucket timestamps.
    fn diff_sql(&self, from: &str, to: &str) -> String {
        match self.interval {
            Interval::Week => format!("(date_diff('day', {from}, {to}) // 7)"),
            i => format!("date_diff('{}', {from}, {to})", i.name()),
        }
    }

    fn step_sql(&self) -> &'static str {
        match self.interval {
            Interval::Minute => "INTERVAL 1 MINUTE",
            Interval::Hour => "INTERVAL 1 HOUR",
            Interval::Day => "INTERVAL 1 DAY",
            Interval::Week => "INTERVAL 7 DAY",
            Interval::Month => "INTERVAL 1 MONTH",
        }
    }

    fn labels(&self, start: i64, end: i64) -> Vec<String> {
        self.interval.labels(self.tz, start, end, self.week_start)
    }

    /// The ClickHouse compiler counts people only; by account is refused, not guessed.
    fn period_micros(&self) -> i64 {
        let day = 86_400 * MICROS_PER_SEC;
        match self.interval {
            Interval::Minute => 60 * MICROS_PER_SEC,
            Interval::Hour => 3_600 * MICROS_PER_SEC,
            Interval::Day => day,
            Interval::Week => 7 * day,
            Interval::Month => 31 * day,
        }
    }
}

fn target(obj: &Map<String, Value>, key: &str) -> Result<EventMatch, QueryError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(EventMatch {
            event: None,
            filters: Vec::new(),
        }),
        Some(v) => EventMatch::parse(v, key, &[]),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetentionType {
    FirstTime,
    Recurring,
}

pub(crate) struct RetentionQuery {
    frame: Frame,
    intervals: u64,
    target: EventMatch,
    returning: EventMatch,
    kind: RetentionType,
    now: i64,
}

impl RetentionQuery {
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
                "week_start",
                "period",
                "intervals",
                "target",
                "returning",
                "type",
                "count_by",
                "filters",
            ],
        )?;
        let frame = Frame::parse(obj, now, first_event, "period", Interval::Week)?;
        let kind = match obj.get("type") {
            None | Some(Value::Null) => RetentionType::FirstTime,
            Some(Value::String(s)) if s == "first_time" => RetentionType::FirstTime,
            Some(Value::String(s)) if s == "recurring" => RetentionType::Recurring,
            _ => {
                return Err(QueryError::invalid(
                    "type",
                    "must be \"first_time\" or \"recurring\"",
                ))
            }
        };
        Ok(Self {
            intervals: uint_field(obj, "intervals", "intervals", 8, 1, 100)?,
            target: target(obj, "target")?,
            returning: target(obj, "returning")?,
            kind,
            frame,
            now: now.timestamp_micros(),
        })
    }

    fn scan_end(&self) -> i64 {
        let f = &self.frame;
        (f.end + self.intervals as i64 * f.period_micros()).min(self.now.max(f.end))
    }

    pub(crate) fn compile(&self, project: &str) -> tally_store::Sql {
        let f = &self.frame;
        let mut b = Binder::numbered();
        let scan_start = match self.kind {
            // "First time" means first ever, so the history before the range counts.
            RetentionType::FirstTime => None,
            RetentionType::Recurring => Some(f.start),
        };
        let scan = f.scan(
            project,
            scan_start,
            self.scan_end(),
            &[&self.target, &self.returning],
            &mut b,
        );
        let agg = f.count_by.column();
        let t = self.target.sql("lts", &mut b);
        let r = self.returning.sql("lts", &mut b);
        let (start, end) = (b.ts(f.start), b.ts(f.end));
        let cohorts = match self.kind {
            RetentionType::FirstTime => format!(
                "SELECT agg, min_by(bucket, ts) AS cohort FROM ev WHERE is_t GROUP BY agg \
                 HAVING min(ts) >= {start} AND min(ts) < {end}"
            ),
            RetentionType::Recurring => format!(
                "SELECT DISTINCT agg, bucket AS cohort FROM ev WHERE is_t AND ts >= {start} AND ts < {end}"
            ),
        };
        let label = f.interval.label_sql("cohort");
        let diff = f.diff_sql("c.cohort", "r.bucket");
        let text = format!(
            "WITH ev AS (SELECT {agg} AS agg, ts, {bucket} AS bucket, {t} AS is_t, {r} AS is_r \
                         FROM ({scan}) e WHERE {agg} IS NOT NULL AND ({t} OR {r})), \
             cohorts AS ({cohorts}), \
             returns AS (SELECT DISTINCT agg, bucket FROM ev WHERE is_r AND ts >= {start}) \
             SELECT {label} AS cohort, 0 AS i, count(*) AS n FROM cohorts GROUP BY ALL \
             UNION ALL \
             SELECT {label_c} AS cohort, {diff} AS i, count(DISTINCT c.agg) AS n \
             FROM cohorts c JOIN returns r ON r.agg = c.agg AND r.bucket > c.cohort \
             WHERE {diff} < {n} GROUP BY ALL",
            bucket = f.bucket(),
            label_c = f.interval.label_sql("c.cohort"),
            n = b.int(self.intervals as i64),
        );
        b.finish(text)
    }
}

impl crate::Report for RetentionQuery {
    fn reads(&self) -> crate::Reads {
        // A person's first time needs their whole history before the range; returns are
        // looked for up to `intervals` periods after it.
        crate::Reads {
            from: i64::MIN,
            to: self.scan_end(),
        }
    }

    fn normalized(&self) -> Value {
        let mut v = json!({
            "kind": "retention",
            "intervals": self.intervals,
            "target": self.target.normalized(),
            "returning": self.returning.normalized(),
            "type": match self.kind { RetentionType::FirstTime => "first_time", RetentionType::Recurring => "recurring" },
        });
        self.frame.echo(&mut v, "period");
        v
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let f = &self.frame;
        let sql = match store.dialect() {
            Dialect::DuckDb => self.compile(project),
            Dialect::ClickHouse => crate::clickhouse::retention_sql(
                crate::clickhouse::RetentionParts {
                    unit: f.count_by.into(),
                    target: &self.target,
                    returning: &self.returning,
                    filters: &f.filters,
                    first_time: self.kind == RetentionType::FirstTime,
                    intervals: self.intervals,
                    interval: f.interval,
                    week: f.week_start,
                    tz: f.tz,
                },
                project,
                f.start,
                f.end,
                self.scan_end(),
            )?,
        };
        let rows = store.query(&sql)?;
        let cohorts = f.labels(f.start, f.end);
        // Period labels up to now: intervals that have not started yet are left out.
        let known = f.labels(f.start, self.scan_end().max(f.start + 1));
        let results: Vec<Value> = cohorts
            .iter()
            .map(|c| {
                let get = |i: i64| {
                    rows.iter()
                        .find(|r| r[0].as_str() == Some(c) && r[1].as_i64() == Some(i))
                        .map(|r| num(&r[2]))
                        .unwrap_or(0.0)
                };
                let size = get(0);
                let first = known.iter().position(|l| l == c).unwrap_or(0);
                let values: Vec<Value> = (0..self.intervals as i64)
                    .take_while(|i| first + (*i as usize) < known.len())
                    .map(|i| {
                        let n = get(i);
                        json!({ "interval": i, "count": n as u64, "percentage": pct(n, size) })
                    })
                    .collect();
                json!({ "cohort": c, "size": size as u64, "values": values })
            })
            .collect();
        Ok(json!({ "results": results }))
    }
}

/// A frame and the events it counts: what lifecycle and stickiness both take.
struct Targeted {
    frame: Frame,
    target: EventMatch,
}

impl Targeted {
    fn parse(
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
                "week_start",
                "interval",
                "target",
                "count_by",
                "filters",
            ],
        )?;
        Ok(Self {
            frame: Frame::parse(obj, now, first_event, "interval", Interval::Day)?,
            target: target(obj, "target")?,
        })
    }

    fn on_clickhouse(&self) -> crate::clickhouse::Targeted<'_> {
        crate::clickhouse::Targeted {
            unit: self.frame.count_by.into(),
            target: &self.target,
            filters: &self.frame.filters,
            interval: self.frame.interval,
            week: self.frame.week_start,
            tz: self.frame.tz,
        }
    }

    fn normalized(&self, kind: &str) -> Value {
        let mut v = json!({ "kind": kind, "target": self.target.normalized() });
        self.frame.echo(&mut v, "interval");
        v
    }
}

pub(crate) struct LifecycleQuery(Targeted);

impl LifecycleQuery {
    pub(crate) fn parse(
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
    ) -> Result<Self, QueryError> {
        Targeted::parse(obj, now, first_event).map(Self)
    }

    pub(crate) fn compile(&self, project: &str) -> tally_store::Sql {
        let f = &self.0.frame;
        let mut b = Binder::numbered();
        // All history: "new" means the first activity ever.
        let scan = f.scan(project, None, f.end, &[&self.0.target], &mut b);
        let agg = f.count_by.column();
        let t = self.0.target.sql("lts", &mut b);
        let step = f.step_sql();
        let label = f.interval.label_sql("bucket");
        let text = format!(
            "WITH acts AS (SELECT DISTINCT {agg} AS agg, {bucket} AS bucket FROM ({scan}) e \
                           WHERE {agg} IS NOT NULL AND {t}), \
             firsts AS (SELECT agg, min(bucket) AS fb FROM acts GROUP BY agg), \
             status AS ( \
               SELECT a.bucket, CASE WHEN f.fb = a.bucket THEN 'new' \
                                     WHEN p.agg IS NOT NULL THEN 'returning' \
                                     ELSE 'resurrecting' END AS status \
               FROM acts a JOIN firsts f ON f.agg = a.agg \
               LEFT JOIN acts p ON p.agg = a.agg AND p.bucket = a.bucket - {step} \
               UNION ALL \
               SELECT a.bucket + {step} AS bucket, 'dormant' AS status FROM acts a \
               LEFT JOIN acts nx ON nx.agg = a.agg AND nx.bucket = a.bucket + {step} \
               WHERE nx.agg IS NULL) \
             SELECT {label} AS label, status, n FROM (SELECT bucket, status, count(*) AS n FROM status GROUP BY ALL)",
            bucket = f.bucket(),
        );
        b.finish(text)
    }
}

impl crate::Report for LifecycleQuery {
    fn reads(&self) -> crate::Reads {
        // "new" and "resurrecting" look at everything before the range.
        crate::Reads {
            from: i64::MIN,
            to: self.0.frame.end,
        }
    }

    fn normalized(&self) -> Value {
        self.0.normalized("lifecycle")
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let f = &self.0.frame;
        let sql = match store.dialect() {
            Dialect::DuckDb => self.compile(project),
            Dialect::ClickHouse => {
                crate::clickhouse::lifecycle_sql(self.0.on_clickhouse(), project, f.end)?
            }
        };
        let rows = store.query(&sql)?;
        let labels = f.labels(f.start, f.end);
        let series = |status: &str, sign: f64| -> Vec<Value> {
            labels
                .iter()
                .map(|l| {
                    let n = rows
                        .iter()
                        .find(|r| r[0].as_str() == Some(l) && r[1].as_str() == Some(status))
                        .map(|r| num(&r[2]))
                        .unwrap_or(0.0);
                    json!((n * sign) as i64)
                })
                .collect()
        };
        Ok(json!({
            "results": {
                "labels": labels,
                "new": series("new", 1.0),
                "returning": series("returning", 1.0),
                "resurrecting": series("resurrecting", 1.0),
                "dormant": series("dormant", -1.0),
            }
        }))
    }
}

pub(crate) struct StickinessQuery(Targeted);

impl StickinessQuery {
    pub(crate) fn parse(
        obj: &Map<String, Value>,
        now: DateTime<Utc>,
        first_event: impl FnOnce() -> Result<Option<i64>, QueryError>,
    ) -> Result<Self, QueryError> {
        Targeted::parse(obj, now, first_event).map(Self)
    }

    pub(crate) fn compile(&self, project: &str) -> tally_store::Sql {
        let f = &self.0.frame;
        let mut b = Binder::numbered();
        let scan = f.scan(project, Some(f.start), f.end, &[&self.0.target], &mut b);
        let agg = f.count_by.column();
        let t = self.0.target.sql("lts", &mut b);
        let text = format!(
            "SELECT active, count(*) FROM (SELECT {agg}, count(DISTINCT {bucket}) AS active \
             FROM ({scan}) e WHERE {agg} IS NOT NULL AND {t} GROUP BY 1) GROUP BY 1 ORDER BY 1",
            bucket = f.bucket(),
        );
        b.finish(text)
    }
}

impl crate::Report for StickinessQuery {
    fn reads(&self) -> crate::Reads {
        crate::Reads {
            from: self.0.frame.start,
            to: self.0.frame.end,
        }
    }

    fn normalized(&self) -> Value {
        self.0.normalized("stickiness")
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let f = &self.0.frame;
        let sql = match store.dialect() {
            Dialect::DuckDb => self.compile(project),
            Dialect::ClickHouse => {
                crate::clickhouse::stickiness_sql(self.0.on_clickhouse(), project, f.start, f.end)?
            }
        };
        let rows = store.query(&sql)?;
        let periods = f.labels(f.start, f.end).len() as i64;
        let total: f64 = rows.iter().map(|r| num(&r[1])).sum();
        let results: Vec<Value> = (1..=periods)
            .map(|k| {
                let n = rows
                    .iter()
                    .find(|r| r[0].as_i64() == Some(k))
                    .map(|r| num(&r[1]))
                    .unwrap_or(0.0);
                json!({ "intervals": k, "count": n as u64, "percentage": pct(n, total) })
            })
            .collect();
        Ok(json!({ "results": results, "total": total as u64, "periods": periods }))
    }
}
