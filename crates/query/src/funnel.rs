//! The `funnel` query: how many people (or accounts) went through a list of steps, in
//! order, within a conversion window.
//!
//! Semantics, for each person (or account):
//! - An *attempt* starts at every event that matches the first step (step 0). For an **ordered** funnel
//!   the attempt takes, for each later step, the first matching event after the previous
//!   step's event (greedy is optimal: the earliest choice leaves the most room). A
//!   **strict** funnel needs each step to be the very next event of that person. An
//!   **unordered** funnel starts at any step's event and counts the steps done at or after
//!   it, in any order.
//! - A step counts only if it happened within `window` of the attempt's first step.
//! - An attempt in which an exclusion event happens after step `from_step` and before
//!   step `to_step` is void (only when `to_step` was reached: there is nothing to protect
//!   otherwise). A person whose attempts are all void leaves the funnel.
//! - The person's level is their best attempt's: most steps, the earliest start on ties.
//!   That attempt gives the times, and the breakdown value of the event that
//!   `breakdown_attribution` names: its first event (`first_touch`, the default), the last
//!   step it reached (`last_touch`), or a given step (`{"step": k}`; attempts that did not
//!   reach step k count as `(none)`). Unordered funnels take `first_touch` only.
//! - In an ordered funnel without exclusions, starts with no step-1 event between them
//!   share the rest of their chain, so only the last start of such a group is followed
//!   step by step; the group's earliest start within the window of that chain's last
//!   reached step then reaches as far and takes its place.
//!
//! Events are ordered by time, then arrival (the row id), so one event never counts for two steps of an
//! ordered funnel and ties have one answer.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Map, Value};
use tally_store::{Dialect, Rows, Store};

use crate::common::{check_keys, num, pct, range_echo, uint_field, CountBy, EventMatch, Scan};
use crate::dims::{dimension_expr, Dimension, Filter};
use crate::request::{parse_date_range, parse_timezone};
use crate::time::MICROS_PER_SEC;
use crate::{Binder, QueryError};

const MAX_STEPS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Ordered,
    Strict,
    Unordered,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Ordered => "ordered",
            Order::Strict => "strict",
            Order::Unordered => "unordered",
        }
    }
}

/// Which event of the chosen attempt gives its breakdown value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attribution {
    /// The attempt's first event (step 0).
    FirstTouch,
    /// The last step the attempt reached.
    LastTouch,
    /// The event of this step; attempts that did not reach it count as `(none)`.
    Step(usize),
}

impl Attribution {
    fn parse(v: Option<&Value>, steps: usize, order: Order) -> Result<Self, QueryError> {
        const FIELD: &str = "breakdown_attribution";
        let attribution = match v {
            None | Some(Value::Null) => return Ok(Attribution::FirstTouch),
            Some(Value::String(s)) if s == "first_touch" => Attribution::FirstTouch,
            Some(Value::String(s)) if s == "last_touch" => Attribution::LastTouch,
            Some(Value::Object(o)) => {
                check_keys(o, FIELD, &["step"])?;
                let last = steps as u64 - 1;
                Attribution::Step(
                    uint_field(o, "step", &format!("{FIELD}.step"), 0, 0, last)? as usize
                )
            }
            Some(_) => {
                return Err(QueryError::invalid(
                    FIELD,
                    "must be \"first_touch\", \"last_touch\" or {\"step\": 1}",
                ))
            }
        };
        if order == Order::Unordered && attribution != Attribution::FirstTouch {
            return Err(QueryError::invalid(
                FIELD,
                "an unordered funnel's steps have no order to attribute by; only \"first_touch\" applies",
            ));
        }
        Ok(attribution)
    }

    fn normalized(self) -> Value {
        match self {
            Attribution::FirstTouch => json!("first_touch"),
            Attribution::LastTouch => json!("last_touch"),
            Attribution::Step(k) => json!({ "step": k }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Exclusion {
    matcher: EventMatch,
    from_step: usize,
    to_step: usize,
}

pub(crate) struct FunnelQuery {
    steps: Vec<EventMatch>,
    order: Order,
    /// Microseconds.
    window: i64,
    window_echo: Value,
    exclusions: Vec<Exclusion>,
    breakdown: Option<Dimension>,
    attribution: Attribution,
    breakdown_limit: u64,
    count_by: CountBy,
    filters: Vec<Filter>,
    tz: Tz,
    start: i64,
    end: i64,
}

impl FunnelQuery {
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
                "steps",
                "order",
                "window",
                "exclusions",
                "breakdown",
                "breakdown_attribution",
                "breakdown_limit",
                "count_by",
                "filters",
                "date_range",
                "timezone",
            ],
        )?;
        let tz = parse_timezone(obj.get("timezone"))?;
        let (start, end) = parse_date_range(obj.get("date_range"), tz, now, first_event)?;
        let steps = match obj.get("steps") {
            Some(Value::Array(items)) if (2..=MAX_STEPS).contains(&items.len()) => items
                .iter()
                .enumerate()
                .map(|(i, s)| EventMatch::parse(s, &format!("steps[{i}]"), &[]))
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(QueryError::invalid(
                    "steps",
                    format!("is required: a list of 2 to {MAX_STEPS} steps such as {{\"event\": \"signup\"}}"),
                ))
            }
        };
        let order = match obj.get("order") {
            None | Some(Value::Null) => Order::Ordered,
            Some(Value::String(s)) if s == "ordered" => Order::Ordered,
            Some(Value::String(s)) if s == "strict" => Order::Strict,
            Some(Value::String(s)) if s == "unordered" => Order::Unordered,
            _ => {
                return Err(QueryError::invalid(
                    "order",
                    "must be \"ordered\", \"strict\" or \"unordered\"",
                ))
            }
        };
        let (window, window_echo) = parse_window(obj.get("window"))?;
        let mut exclusions = Vec::new();
        if let Some(v) = obj.get("exclusions").filter(|v| !v.is_null()) {
            let items = v
                .as_array()
                .ok_or_else(|| QueryError::invalid("exclusions", "must be a list"))?;
            if order == Order::Unordered && !items.is_empty() {
                return Err(QueryError::invalid(
                    "exclusions",
                    "exclusions apply to ordered and strict funnels only",
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let field = format!("exclusions[{i}]");
                let matcher = EventMatch::parse(item, &field, &["from_step", "to_step"])?;
                let o = item.as_object().expect("checked by EventMatch");
                let last = (steps.len() - 1) as u64;
                let from_step =
                    uint_field(o, "from_step", &format!("{field}.from_step"), 0, 0, last)?;
                let to_step = uint_field(o, "to_step", &format!("{field}.to_step"), last, 1, last)?;
                if to_step <= from_step {
                    return Err(QueryError::invalid(
                        format!("{field}.to_step"),
                        "must be after from_step",
                    ));
                }
                exclusions.push(Exclusion {
                    matcher,
                    from_step: from_step as usize,
                    to_step: to_step as usize,
                });
            }
        }
        let breakdown = match obj.get("breakdown") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => {
                let dim = Dimension::parse(d, "breakdown")?;
                crate::dims::no_visit_dims([&dim], "breakdown")?;
                if matches!(dim, Dimension::Time(_)) {
                    return Err(QueryError::invalid(
                        "breakdown",
                        "break a funnel down by an event dimension, not time",
                    ));
                }
                Some(dim)
            }
            Some(_) => {
                return Err(QueryError::invalid(
                    "breakdown",
                    "must be one dimension such as \"event:props:plan\"",
                ))
            }
        };
        let attribution = Attribution::parse(obj.get("breakdown_attribution"), steps.len(), order)?;
        if breakdown.is_none() && attribution != Attribution::FirstTouch {
            return Err(QueryError::invalid(
                "breakdown_attribution",
                "applies to a funnel with a breakdown",
            ));
        }
        Ok(Self {
            steps,
            order,
            window,
            window_echo,
            exclusions,
            breakdown,
            attribution,
            breakdown_limit: uint_field(obj, "breakdown_limit", "breakdown_limit", 10, 1, 100)?,
            count_by: CountBy::parse(obj.get("count_by"))?,
            filters: crate::dims::parse_event_filters(obj.get("filters"), "filters")?,
            tz,
            start,
            end,
        })
    }

    fn needs_persons(&self) -> bool {
        self.breakdown.as_ref().is_some_and(Dimension::needs_person)
            || self.steps.iter().any(EventMatch::needs_persons)
            || self.exclusions.iter().any(|x| x.matcher.needs_persons())
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
            persons: self.needs_persons(),
            accounts: self.count_by == CountBy::Account,
        }
        .sql(&mut b);
        let n = self.steps.len();
        let agg = self.count_by.column();
        let bd = match &self.breakdown {
            Some(d) => format!(
                "coalesce(CAST({} AS VARCHAR), '(none)')",
                dimension_expr(d, "lts")
            ),
            None => "NULL::VARCHAR".into(),
        };
        let mut flags = Vec::new();
        let mut any = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            flags.push(format!("{} AS s{i}", s.sql("lts", &mut b)));
            any.push(format!("s{i}"));
        }
        for (i, x) in self.exclusions.iter().enumerate() {
            flags.push(format!("{} AS x{i}", x.matcher.sql("lts", &mut b)));
            any.push(format!("x{i}"));
        }
        let window = b.int(self.window);
        // Strict funnels need every event to know what came right after a step.
        let keep = match self.order {
            Order::Strict => "true".to_owned(),
            _ => any.join(" OR "),
        };
        let mut ctes = vec![format!(
            "flagged AS (SELECT {agg} AS agg, epoch_us(ts) AS t, ts, rid, {bd} AS bd, {flags} \
             FROM ({scan}) e WHERE {agg} IS NOT NULL), \
             base AS MATERIALIZED (SELECT *, row_number() OVER (PARTITION BY agg ORDER BY t, rid) AS seq \
             FROM flagged WHERE {keep})",
            flags = flags.join(", "),
        )];

        match self.order {
            Order::Ordered | Order::Strict => {
                // In an ordered funnel, starts with no step-1 event between them share
                // the rest of their chain: only the last of such a group (its head) is
                // followed step by step, and the group's earliest start that reaches as
                // far as the head takes its place below. Exclusions can void one start
                // of a group and not another, so with exclusions every start is its own.
                let grouped = self.order == Order::Ordered && self.exclusions.is_empty();
                ctes.push(if grouped {
                    "starts AS MATERIALIZED (SELECT agg, bd, seq AS q0, t AS t0, grp, shadowed IS NOT TRUE AS head FROM ( \
                     SELECT *, lead(s0 AND NOT s1) OVER (PARTITION BY agg ORDER BY seq) AS shadowed, \
                     sum(s1::INTEGER) OVER (PARTITION BY agg ORDER BY seq ROWS UNBOUNDED PRECEDING) AS grp \
                     FROM base WHERE s0 OR s1) WHERE s0), \
                     a0 AS (SELECT agg, bd, q0, t0, grp FROM starts WHERE head)"
                        .into()
                } else {
                    "a0 AS (SELECT agg, bd, seq AS q0, t AS t0 FROM base WHERE s0)".into()
                });
                // The breakdown values of the later steps, for last-touch and step
                // attribution.
                let step_bd = |k: usize| {
                    if self.breakdown.is_some() && self.attribution != Attribution::FirstTouch {
                        format!(", n.bd AS b{k}")
                    } else {
                        String::new()
                    }
                };
                for k in 1..n {
                    let join = match self.order {
                        Order::Ordered => format!(
                            "ASOF LEFT JOIN (SELECT agg, seq, t, bd FROM base WHERE s{k}) n \
                             ON n.agg = a.agg AND n.seq > a.q{p}",
                            p = k - 1
                        ),
                        _ => format!(
                            "LEFT JOIN (SELECT agg, seq, t, bd FROM base WHERE s{k}) n \
                             ON n.agg = a.agg AND n.seq = a.q{p} + 1",
                            p = k - 1
                        ),
                    };
                    ctes.push(format!(
                        "a{k} AS (SELECT a.*, n.seq AS q{k}{bdk}, \
                         CASE WHEN n.t - a.t0 <= {window} THEN n.t END AS t{k} FROM a{p} a {join})",
                        p = k - 1,
                        bdk = step_bd(k),
                    ));
                }
                // A step past the window, or after a missing one, is not reached.
                let mut level = String::from("CASE");
                for k in 1..n {
                    level.push_str(&format!(" WHEN t{k} IS NULL THEN {k}"));
                }
                level.push_str(&format!(" ELSE {n} END"));
                let mut last = format!("a{}", n - 1);
                let mut voids = Vec::new();
                for (i, x) in self.exclusions.iter().enumerate() {
                    ctes.push(format!(
                        "ax{i} AS (SELECT a.*, xn.seq AS xq{i} FROM {last} a \
                         ASOF LEFT JOIN (SELECT agg, seq FROM base WHERE x{i}) xn \
                         ON xn.agg = a.agg AND xn.seq > a.q{f})",
                        f = x.from_step
                    ));
                    voids.push(format!(
                        "(t{to} IS NOT NULL AND xq{i} IS NOT NULL AND xq{i} < q{to})",
                        to = x.to_step
                    ));
                    // Level is computed below; a later step implies this one.
                    last = format!("ax{i}");
                }
                let void = if voids.is_empty() {
                    "false".to_owned()
                } else {
                    voids.join(" OR ")
                };
                let later: String = (1..n).map(|k| format!(", t{k}")).collect();
                let step_bds: String = match (&self.breakdown, self.attribution) {
                    (Some(_), Attribution::FirstTouch) | (None, _) => String::new(),
                    _ => (1..n).map(|k| format!(", b{k}")).collect(),
                };
                // The value the attempt is broken down by, from its start's `bd`.
                let attributed = |start_bd: &str| match (&self.breakdown, self.attribution) {
                    (None, _) | (_, Attribution::FirstTouch) | (_, Attribution::Step(0)) => {
                        start_bd.to_owned()
                    }
                    (_, Attribution::LastTouch) => {
                        let mut case = format!("CASE lvl WHEN 1 THEN {start_bd}");
                        for k in 1..n {
                            case.push_str(&format!(" WHEN {} THEN b{k}", k + 1));
                        }
                        case + " END"
                    }
                    (_, Attribution::Step(k)) => {
                        format!("CASE WHEN lvl > {k} THEN b{k} ELSE '(none)' END")
                    }
                };
                if grouped {
                    // The head's last reached step bounds the group's starts that reach
                    // as far: those within the window before it.
                    let mut reached = String::from("CASE lvl WHEN 1 THEN NULL");
                    for k in 1..n {
                        reached.push_str(&format!(" WHEN {} THEN t{k}", k + 1));
                    }
                    reached.push_str(" END");
                    ctes.push(format!(
                        "heads AS (SELECT agg, grp{later}{step_bds}, {level} AS lvl FROM {last}), \
                         heads_r AS (SELECT *, {reached} AS t_last FROM heads), \
                         chosen AS (SELECT s.agg, s.grp, min(s.t0) AS t0, arg_min(s.bd, s.q0) AS bd0 \
                         FROM starts s JOIN heads_r h ON s.agg = h.agg AND s.grp = h.grp \
                         WHERE h.t_last IS NULL OR s.t0 >= h.t_last - {window} GROUP BY s.agg, s.grp), \
                         attempts AS (SELECT h.agg, {bd} AS bd, c.t0{later}, lvl \
                         FROM heads_r h JOIN chosen c ON c.agg = h.agg AND c.grp = h.grp)",
                        bd = attributed("c.bd0"),
                    ));
                } else {
                    // t_k is NULL once an earlier step is missing, so the level is exact.
                    ctes.push(format!(
                        "levels AS (SELECT agg, bd, t0{later}{step_bds}, {level} AS lvl FROM {last} WHERE NOT ({void})), \
                         attempts AS (SELECT agg, {bd} AS bd, t0{later}, lvl FROM levels)",
                        bd = attributed("bd"),
                    ));
                }
            }
            Order::Unordered => {
                // Every step-event starts an attempt; each step's first event at or after it.
                ctes.push("u0 AS (SELECT agg, bd, seq AS q, t AS start FROM base)".into());
                let mut last = "u0".to_owned();
                for k in 0..n {
                    ctes.push(format!(
                        "u{next} AS (SELECT a.*, CASE WHEN n.t - a.start <= {window} THEN n.t END AS c{k} \
                         FROM {last} a ASOF LEFT JOIN (SELECT agg, seq, t FROM base WHERE s{k}) n \
                         ON n.agg = a.agg AND n.seq >= a.q)",
                        next = k + 1
                    ));
                    last = format!("u{}", k + 1);
                }
                let cs: Vec<String> = (0..n).map(|k| format!("c{k}")).collect();
                // The steps done, in the order they were done (missing ones last).
                ctes.push(format!(
                    "sorted AS (SELECT agg, bd, list_sort(list_value({cs}), 'ASC', 'NULLS LAST') AS ts_list, \
                     {done} AS lvl FROM {last})",
                    cs = cs.join(", "),
                    done = cs.iter().map(|c| format!("({c} IS NOT NULL)::INTEGER")).collect::<Vec<_>>().join(" + "),
                ));
                ctes.push(format!(
                    "attempts AS (SELECT agg, bd, {cols}, lvl FROM sorted)",
                    cols = (0..n)
                        .map(|k| format!("ts_list[{}] AS t{k}", k + 1))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        ctes.push(
            "best AS (SELECT * FROM attempts WHERE lvl > 0 \
             QUALIFY row_number() OVER (PARTITION BY agg ORDER BY lvl DESC, t0) = 1)"
                .into(),
        );
        let mut select = vec![if self.breakdown.is_some() {
            "bd"
        } else {
            "NULL::VARCHAR AS bd"
        }
        .to_owned()];
        for k in 0..n {
            select.push(format!("count(*) FILTER (WHERE lvl >= {}) AS c{k}", k + 1));
        }
        for k in 1..n {
            // Every order's attempts have the step times t0..t{n-1}.
            select.push(format!(
                "median(t{k} - t{p}) FILTER (WHERE lvl >= {l}) AS med{k}, \
                 avg(t{k} - t{p}) FILTER (WHERE lvl >= {l}) AS avg{k}",
                p = k - 1,
                l = k + 1
            ));
        }
        let grouping = if self.breakdown.is_some() {
            "GROUP BY GROUPING SETS ((), (bd)) ORDER BY (bd IS NOT NULL), c0 DESC, bd"
        } else {
            ""
        };
        let text = format!(
            "WITH {} SELECT {} FROM best {grouping}",
            ctes.join(", "),
            select.join(", ")
        );
        b.finish(text)
    }
}

impl crate::Report for FunnelQuery {
    fn reads(&self) -> crate::Reads {
        // An attempt started in the range may finish up to a window after it.
        crate::Reads {
            from: self.start,
            to: self.end.saturating_add(self.window),
        }
    }

    fn normalized(&self) -> Value {
        json!({
            "kind": "funnel",
            "steps": self.steps.iter().map(EventMatch::normalized).collect::<Vec<_>>(),
            "order": self.order.name(),
            "window": self.window_echo,
            "exclusions": self.exclusions.iter().map(|x| {
                let mut v = x.matcher.normalized();
                v["from_step"] = json!(x.from_step);
                v["to_step"] = json!(x.to_step);
                v
            }).collect::<Vec<_>>(),
            "breakdown": self.breakdown.as_ref().map(Dimension::name),
            "breakdown_attribution": self.attribution.normalized(),
            "breakdown_limit": self.breakdown_limit,
            "count_by": self.count_by.name(),
            "filters": self.filters.iter().map(Filter::normalized).collect::<Vec<_>>(),
            "date_range": range_echo(self.tz, self.start, self.end),
            "timezone": self.tz.name(),
        })
    }

    fn execute(&self, store: &dyn Store, project: &str) -> Result<Value, QueryError> {
        let rows = match store.dialect() {
            Dialect::DuckDb => store.query(&self.compile(project))?,
            Dialect::ClickHouse => self.fetch_clickhouse(store, project)?,
        };
        let n = self.steps.len();
        let mut results = Vec::new();
        for row in rows {
            // The GROUPING SETS total row has a NULL breakdown and comes first.
            if self.breakdown.is_some()
                && !row[0].is_null()
                && results.len() > self.breakdown_limit as usize
            {
                break;
            }
            let counts: Vec<f64> = (0..n).map(|k| num(&row[1 + k])).collect();
            let steps: Vec<Value> = (0..n)
                .map(|k| {
                    let (median, avg) = if k == 0 {
                        (Value::Null, Value::Null)
                    } else {
                        let at = 1 + n + 2 * (k - 1);
                        (seconds(&row[at]), seconds(&row[at + 1]))
                    };
                    json!({
                        "step": k,
                        "event": self.steps[k].label(),
                        "count": counts[k] as u64,
                        "conversion_rate": pct(counts[k], counts[0]),
                        "step_conversion_rate": if k == 0 { 100.0 } else { pct(counts[k], counts[k - 1]) },
                        "dropped": if k == 0 { 0 } else { (counts[k - 1] - counts[k]) as u64 },
                        "median_time_to_convert_s": median,
                        "avg_time_to_convert_s": avg,
                    })
                })
                .collect();
            results.push(json!({ "breakdown": row[0], "steps": steps }));
        }
        if results.is_empty() {
            let steps: Vec<Value> = self
                .steps
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    json!({
                        "step": k, "event": s.label(), "count": 0, "conversion_rate": 0.0,
                        "step_conversion_rate": if k == 0 { 100.0 } else { 0.0 }, "dropped": 0,
                        "median_time_to_convert_s": null, "avg_time_to_convert_s": null,
                    })
                })
                .collect();
            results.push(json!({ "breakdown": null, "steps": steps }));
        }
        Ok(json!({ "results": results }))
    }
}

impl FunnelQuery {
    /// The ClickHouse answer in the DuckDB rows' shape: `(breakdown, c0.., med1, avg1,
    /// ...)`, the total (NULL breakdown) first, then by count desc and value, the
    /// medians and means taken here from the per-unit times ClickHouse returns.
    fn fetch_clickhouse(&self, store: &dyn Store, project: &str) -> Result<Rows, QueryError> {
        let exclusions: Vec<(&EventMatch, usize, usize)> = self
            .exclusions
            .iter()
            .map(|x| (&x.matcher, x.from_step, x.to_step))
            .collect();
        let sql = crate::clickhouse::funnel_sql(
            crate::clickhouse::FunnelParts {
                unit: self.count_by.into(),
                steps: &self.steps,
                order: match self.order {
                    Order::Ordered => crate::clickhouse::FunnelOrder::Ordered,
                    Order::Strict => crate::clickhouse::FunnelOrder::Strict,
                    Order::Unordered => crate::clickhouse::FunnelOrder::Unordered,
                },
                exclusions: &exclusions,
                breakdown: self.breakdown.as_ref(),
                attribution: self.attribution,
                filters: &self.filters,
                window: self.window,
                tz: self.tz,
            },
            project,
            self.start,
            self.end,
        )?;
        let mut rows = store.query(&sql)?;
        let n = self.steps.len();
        rows.sort_by(|a, b| {
            let key = |r: &Vec<Value>| {
                (
                    r[0].is_null(),
                    -num(&r[1]) as i64,
                    r[0].as_str().map(str::to_owned),
                )
            };
            let (ka, kb) = (key(a), key(b));
            kb.0.cmp(&ka.0).then(ka.1.cmp(&kb.1)).then(ka.2.cmp(&kb.2))
        });
        if rows.first().is_none_or(|total| num(&total[1]) == 0.0) {
            return Ok(Vec::new());
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut out = vec![row[0].clone()];
                out.extend(row[1..=n].iter().cloned());
                for diffs in &row[n + 1..] {
                    let mut d: Vec<i64> = diffs
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default();
                    d.sort_unstable();
                    if d.is_empty() {
                        out.extend([Value::Null, Value::Null]);
                        continue;
                    }
                    // DuckDB's `median` interpolates between the two middle values.
                    let mid = d.len() / 2;
                    let median = if d.len() % 2 == 1 {
                        d[mid] as f64
                    } else {
                        (d[mid - 1] as f64 + d[mid] as f64) / 2.0
                    };
                    let sum: i128 = d.iter().map(|&x| i128::from(x)).sum();
                    out.extend([json!(median), json!(sum as f64 / d.len() as f64)]);
                }
                out
            })
            .collect())
    }
}

/// Microseconds (a SQL cell) as seconds with millisecond precision.
fn seconds(v: &Value) -> Value {
    match v.as_f64() {
        Some(us) => json!((us / 1_000.0).round() / 1_000.0),
        None => Value::Null,
    }
}

fn parse_window(v: Option<&Value>) -> Result<(i64, Value), QueryError> {
    const DEFAULT: (u64, &str) = (14, "day");
    let (value, unit) = match v {
        None | Some(Value::Null) => DEFAULT,
        Some(Value::Object(o)) => {
            check_keys(o, "window", &["value", "unit"])?;
            let value = uint_field(o, "value", "window.value", DEFAULT.0, 1, 100_000)?;
            let unit = match o.get("unit").and_then(Value::as_str) {
                None if o.get("unit").is_none() => DEFAULT.1,
                Some(u @ ("second" | "minute" | "hour" | "day" | "week")) => u,
                _ => {
                    return Err(QueryError::invalid(
                        "window.unit",
                        "must be second, minute, hour, day or week",
                    ))
                }
            };
            (value, unit)
        }
        Some(_) => {
            return Err(QueryError::invalid(
                "window",
                "must be {\"value\": 14, \"unit\": \"day\"}",
            ))
        }
    };
    let secs = match unit {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        _ => 7 * 86_400,
    };
    let micros = value as i64 * secs * MICROS_PER_SEC;
    if micros > 366 * 86_400 * MICROS_PER_SEC {
        return Err(QueryError::invalid("window", "must be at most 366 days"));
    }
    Ok((micros, json!({ "value": value, "unit": unit })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints the SQL of the benchmark's funnel, for docs/queries.md:
    /// `cargo test --release --workspace --lib -- --ignored --nocapture print_funnel_sql`.
    #[test]
    #[ignore]
    fn print_funnel_sql() {
        let req = json!({"kind": "funnel", "date_range": "30d",
            "steps": [{"event": "page_visit"}, {"event": "signup"}, {"event": "purchase"}],
            "window": {"value": 14, "unit": "day"}});
        let q = FunnelQuery::parse(req.as_object().unwrap(), Utc::now(), || Ok(None)).unwrap();
        println!("{}", q.compile("bench").text);
    }
}
