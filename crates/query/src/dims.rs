//! Dimensions (what a report groups or filters by) and filters (a tree of and / or / not
//! over comparisons), and the SQL each becomes.
//!
//! A dimension is read from the event row wherever the three wire formats put it:
//! ThriveStack and PostHog send page and campaign data as properties (`page_url`,
//! `$current_url`, `utm_source`...), Segment sends it in `context.page` and
//! `context.campaign`. Browser, OS and device come from PostHog's `$browser` / `$os` /
//! `$device_type` properties when present, else from a coarse reading of the user agent
//! (`context.user_agent`): families only, no versions.

use serde_json::{json, Value};
use tally_store::sql::json_key_path;

use crate::common::Interval;
use crate::request::string_list;
use crate::{Binder, QueryError};

const MAX_FILTER_VALUES: usize = 1_000;
const MAX_FILTER_DEPTH: usize = 8;

const UTM: &[&str] = &[
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
];

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Dimension {
    Name,
    Page,
    Hostname,
    Prop(String),
    PersonProp(String),
    Referrer,
    Source,
    Utm(&'static str),
    Device,
    Browser,
    Os,
    Country,
    EntryPage,
    ExitPage,
    Time(Interval),
}

impl Dimension {
    pub(crate) fn parse(s: &str, field: &str) -> Result<Self, QueryError> {
        Ok(match s {
            "event:name" => Dimension::Name,
            "event:page" => Dimension::Page,
            "event:hostname" => Dimension::Hostname,
            "visit:referrer" => Dimension::Referrer,
            "visit:source" => Dimension::Source,
            "visit:device" => Dimension::Device,
            "visit:browser" => Dimension::Browser,
            "visit:os" => Dimension::Os,
            "visit:country" => Dimension::Country,
            "visit:entry_page" => Dimension::EntryPage,
            "visit:exit_page" => Dimension::ExitPage,
            "time:minute" => Dimension::Time(Interval::Minute),
            "time:hour" => Dimension::Time(Interval::Hour),
            "time:day" => Dimension::Time(Interval::Day),
            "time:week" => Dimension::Time(Interval::Week),
            "time:month" => Dimension::Time(Interval::Month),
            _ => {
                if let Some(utm) = s
                    .strip_prefix("visit:")
                    .and_then(|u| UTM.iter().find(|x| **x == u))
                {
                    Dimension::Utm(utm)
                } else if let Some(name) = s.strip_prefix("event:props:") {
                    Dimension::Prop(prop_name(name, field)?)
                } else if let Some(name) = s.strip_prefix("person:props:") {
                    Dimension::PersonProp(prop_name(name, field)?)
                } else {
                    return Err(QueryError::invalid(
                        field,
                        format!(
                            "unknown dimension {s:?}; use event:name, event:page, event:hostname, \
                             event:props:<name>, person:props:<name>, visit:referrer, visit:source, \
                             visit:utm_source|medium|campaign|term|content, visit:device, \
                             visit:browser, visit:os, visit:country, visit:entry_page, \
                             visit:exit_page, or time, time:minute|hour|day|week|month"
                        ),
                    ));
                }
            }
        })
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Dimension::Name => "event:name".into(),
            Dimension::Page => "event:page".into(),
            Dimension::Hostname => "event:hostname".into(),
            Dimension::Prop(p) => format!("event:props:{p}"),
            Dimension::PersonProp(p) => format!("person:props:{p}"),
            Dimension::Referrer => "visit:referrer".into(),
            Dimension::Source => "visit:source".into(),
            Dimension::Utm(u) => format!("visit:{u}"),
            Dimension::Device => "visit:device".into(),
            Dimension::Browser => "visit:browser".into(),
            Dimension::Os => "visit:os".into(),
            Dimension::Country => "visit:country".into(),
            Dimension::EntryPage => "visit:entry_page".into(),
            Dimension::ExitPage => "visit:exit_page".into(),
            Dimension::Time(g) => format!("time:{}", g.name()),
        }
    }

    /// Entry and exit pages belong to a visit, so only queries that derive visits have them.
    pub(crate) fn needs_visits(&self) -> bool {
        matches!(self, Dimension::EntryPage | Dimension::ExitPage)
    }

    /// Person traits need the persons table joined (the report scan does it).
    pub(crate) fn needs_person(&self) -> bool {
        matches!(self, Dimension::PersonProp(_))
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

/// `json_extract_string(col, '$."key"')`.
fn jp(col: &str, key: &str) -> String {
    format!("json_extract_string({col}, {})", json_key_path(key))
}

fn page_url() -> String {
    format!(
        "coalesce({}, {}, {}, json_extract_string(context, '$.page.url'))",
        jp("properties", "page_url"),
        jp("properties", "url"),
        jp("properties", "$current_url")
    )
}

fn referrer() -> String {
    format!(
        "nullif(nullif(coalesce({}, {}, {}, json_extract_string(context, '$.page.referrer')), ''), '$direct')",
        jp("properties", "page_referrer"),
        jp("properties", "referrer"),
        jp("properties", "$referrer")
    )
}

fn utm(field: &str) -> String {
    let segment = match field {
        "utm_campaign" => "name",
        other => other.trim_start_matches("utm_"),
    };
    format!(
        "coalesce({}, json_extract_string(context, '$.campaign.{segment}'))",
        jp("properties", field)
    )
}

fn user_agent() -> String {
    format!(
        "coalesce({}, {})",
        jp("context", "user_agent"),
        jp("context", "userAgent")
    )
}

/// The SQL expression of a dimension over the columns of `events` (plus `person_traits`,
/// `entry_page`, `exit_page` where the query provides them). `local` is the event's
/// local time.
pub(crate) fn dimension_expr(d: &Dimension, local: &str) -> String {
    let ua = user_agent();
    match d {
        Dimension::Name => "event".into(),
        Dimension::Page => "page".into(),
        Dimension::Hostname => format!(
            "nullif(regexp_extract({}, '^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#]+)', 1), '')",
            page_url()
        ),
        Dimension::Prop(p) => jp("properties", p),
        Dimension::PersonProp(p) => jp("person_traits", p),
        Dimension::Referrer => referrer(),
        Dimension::Source => format!(
            "coalesce({}, nullif(regexp_extract({}, '^[A-Za-z][A-Za-z0-9+.-]*://(?:www\\.)?([^/:?#]+)', 1), ''), 'Direct')",
            utm("utm_source"),
            referrer()
        ),
        Dimension::Utm(u) => utm(u),
        Dimension::Device => format!(
            "coalesce({}, CASE WHEN {ua} IS NULL THEN NULL \
             WHEN {ua} LIKE '%iPad%' OR {ua} LIKE '%Tablet%' THEN 'Tablet' \
             WHEN {ua} LIKE '%Mobi%' OR {ua} LIKE '%iPhone%' OR {ua} LIKE '%Android%' THEN 'Mobile' \
             ELSE 'Desktop' END)",
            jp("properties", "$device_type")
        ),
        Dimension::Browser => format!(
            "coalesce({}, CASE WHEN {ua} IS NULL THEN NULL \
             WHEN {ua} LIKE '%Edg/%' THEN 'Edge' \
             WHEN {ua} LIKE '%OPR/%' OR {ua} LIKE '%Opera%' THEN 'Opera' \
             WHEN {ua} LIKE '%Firefox/%' OR {ua} LIKE '%FxiOS/%' THEN 'Firefox' \
             WHEN {ua} LIKE '%Chrome/%' OR {ua} LIKE '%CriOS/%' THEN 'Chrome' \
             WHEN {ua} LIKE '%Safari/%' THEN 'Safari' ELSE 'Other' END)",
            jp("properties", "$browser")
        ),
        Dimension::Os => format!(
            "coalesce({}, CASE WHEN {ua} IS NULL THEN NULL \
             WHEN {ua} LIKE '%Windows%' THEN 'Windows' \
             WHEN {ua} LIKE '%Android%' THEN 'Android' \
             WHEN {ua} LIKE '%iPhone%' OR {ua} LIKE '%iPad%' THEN 'iOS' \
             WHEN {ua} LIKE '%Mac OS X%' OR {ua} LIKE '%Macintosh%' THEN 'macOS' \
             WHEN {ua} LIKE '%CrOS%' THEN 'Chrome OS' \
             WHEN {ua} LIKE '%Linux%' THEN 'Linux' ELSE 'Other' END)",
            jp("properties", "$os")
        ),
        Dimension::Country => format!(
            "coalesce({}, json_extract_string(context, '$.location.country'), {})",
            jp("properties", "$geoip_country_code"),
            jp("context", "country")
        ),
        Dimension::EntryPage => "entry_page".into(),
        Dimension::ExitPage => "exit_page".into(),
        Dimension::Time(Interval::Minute) => {
            format!("strftime(date_trunc('minute', {local}), '%Y-%m-%d %H:%M:00')")
        }
        Dimension::Time(Interval::Hour) => {
            format!("strftime(date_trunc('hour', {local}), '%Y-%m-%d %H:00:00')")
        }
        Dimension::Time(Interval::Day) => format!("strftime({local}, '%Y-%m-%d')"),
        Dimension::Time(Interval::Week) => {
            format!("strftime(date_trunc('week', {local}), '%Y-%m-%d')")
        }
        Dimension::Time(Interval::Month) => {
            format!("strftime(date_trunc('month', {local}), '%Y-%m-01')")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Is,
    IsNot,
    Contains,
    ContainsNot,
    Matches,
    MatchesNot,
    Gt,
    Lt,
    IsSet,
    IsNotSet,
}

const OPS: &[(&str, Op)] = &[
    ("is", Op::Is),
    ("is_not", Op::IsNot),
    ("contains", Op::Contains),
    ("contains_not", Op::ContainsNot),
    ("matches", Op::Matches),
    ("matches_not", Op::MatchesNot),
    ("gt", Op::Gt),
    ("lt", Op::Lt),
    ("is_set", Op::IsSet),
    ("is_not_set", Op::IsNotSet),
];

impl Op {
    fn name(self) -> &'static str {
        OPS.iter()
            .find(|(_, o)| *o == self)
            .expect("every op is listed")
            .0
    }
}

/// A filter: a comparison, or and / or / not over filters.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Filter {
    Cmp {
        op: Op,
        dimension: Dimension,
        values: Vec<String>,
        numbers: Vec<f64>,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

/// Parses the `filters` list (its items are ANDed).
pub(crate) fn parse_filters_for(v: Option<&Value>) -> Result<Vec<Filter>, QueryError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(QueryError::invalid("filters", "must be a list of filters")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, f)| Filter::parse(f, &format!("filters[{i}]"), 0))
        .collect()
}

/// Refuses dimensions that only the stats query's visit plan provides.
pub(crate) fn no_visit_dims<'a>(
    dims: impl IntoIterator<Item = &'a Dimension>,
    field: &str,
) -> Result<(), QueryError> {
    match dims.into_iter().find(|d| d.needs_visits()) {
        Some(d) => Err(QueryError::invalid(
            field,
            format!("{} exists in stats queries only", d.name()),
        )),
        None => Ok(()),
    }
}

/// [`parse_filters_for`] for reports without visits (everything but stats).
pub(crate) fn parse_event_filters(
    v: Option<&Value>,
    field: &str,
) -> Result<Vec<Filter>, QueryError> {
    let filters = parse_filters_for(v)?;
    no_visit_dims(filters.iter().flat_map(Filter::dimensions), field)?;
    Ok(filters)
}

impl Filter {
    fn parse(v: &Value, field: &str, depth: usize) -> Result<Self, QueryError> {
        const SHAPE: &str = "a filter is [operator, dimension, [values]] (e.g. [\"is\", \"event:name\", [\"signup\"]]), \
             [\"is_set\" | \"is_not_set\", dimension], [\"and\" | \"or\", [filters]] or [\"not\", filter]";
        if depth > MAX_FILTER_DEPTH {
            return Err(QueryError::invalid(
                field,
                format!("filters nest at most {MAX_FILTER_DEPTH} deep"),
            ));
        }
        let parts = v
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| QueryError::invalid(field, SHAPE))?;
        let op_name = parts[0].as_str().ok_or_else(|| {
            QueryError::invalid(format!("{field}[0]"), "must be an operator name")
        })?;
        match op_name {
            "and" | "or" => {
                let list = match parts.get(1) {
                    Some(Value::Array(list)) if parts.len() == 2 && !list.is_empty() => list,
                    _ => {
                        return Err(QueryError::invalid(
                            field,
                            format!("[\"{op_name}\", [filters]] needs a non-empty list of filters"),
                        ))
                    }
                };
                let inner = list
                    .iter()
                    .enumerate()
                    .map(|(i, f)| Filter::parse(f, &format!("{field}[1][{i}]"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(if op_name == "and" {
                    Filter::And(inner)
                } else {
                    Filter::Or(inner)
                });
            }
            "not" => {
                if parts.len() != 2 {
                    return Err(QueryError::invalid(
                        field,
                        "[\"not\", filter] takes one filter",
                    ));
                }
                let inner = Filter::parse(&parts[1], &format!("{field}[1]"), depth + 1)?;
                return Ok(Filter::Not(Box::new(inner)));
            }
            _ => {}
        }
        let op = OPS
            .iter()
            .find(|(n, _)| *n == op_name)
            .map(|(_, o)| *o)
            .ok_or_else(|| {
                QueryError::invalid(
                    format!("{field}[0]"),
                    format!(
                        "unknown operator {op_name:?}; use {}, and, or, not",
                        OPS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
        let unary = matches!(op, Op::IsSet | Op::IsNotSet);
        if parts.len() != if unary { 2 } else { 3 } {
            return Err(QueryError::invalid(field, SHAPE));
        }
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
        let values_field = format!("{field}[2]");
        let (values, numbers) = match op {
            Op::IsSet | Op::IsNotSet => (Vec::new(), Vec::new()),
            Op::Gt | Op::Lt => {
                let n = match &parts[2] {
                    Value::Array(a) if a.len() == 1 => a[0]
                        .as_f64()
                        .or_else(|| a[0].as_str().and_then(|s| s.trim().parse().ok())),
                    _ => None,
                }
                .filter(|n: &f64| n.is_finite())
                .ok_or_else(|| {
                    QueryError::invalid(&values_field, "must be a list of one number, e.g. [10]")
                })?;
                (Vec::new(), vec![n])
            }
            _ => {
                let values = string_list(Some(&parts[2]), &values_field)?;
                if values.is_empty() || values.len() > MAX_FILTER_VALUES {
                    return Err(QueryError::invalid(
                        values_field,
                        format!("must list 1 to {MAX_FILTER_VALUES} values"),
                    ));
                }
                if matches!(op, Op::Matches | Op::MatchesNot) {
                    for (i, re) in values.iter().enumerate() {
                        check_regex(re, &format!("{values_field}[{i}]"))?;
                    }
                }
                (values, Vec::new())
            }
        };
        Ok(Filter::Cmp {
            op,
            dimension,
            values,
            numbers,
        })
    }

    pub(crate) fn normalized(&self) -> Value {
        match self {
            Filter::Cmp {
                op,
                dimension,
                values,
                numbers,
            } => match op {
                Op::IsSet | Op::IsNotSet => json!([op.name(), dimension.name()]),
                Op::Gt | Op::Lt => json!([op.name(), dimension.name(), numbers]),
                _ => json!([op.name(), dimension.name(), values]),
            },
            Filter::And(list) => json!([
                "and",
                list.iter().map(Filter::normalized).collect::<Vec<_>>()
            ]),
            Filter::Or(list) => json!([
                "or",
                list.iter().map(Filter::normalized).collect::<Vec<_>>()
            ]),
            Filter::Not(inner) => json!(["not", inner.normalized()]),
        }
    }

    /// Every dimension the filter reads.
    pub(crate) fn dimensions(&self) -> Vec<&Dimension> {
        match self {
            Filter::Cmp { dimension, .. } => vec![dimension],
            Filter::And(list) | Filter::Or(list) => {
                list.iter().flat_map(Filter::dimensions).collect()
            }
            Filter::Not(inner) => inner.dimensions(),
        }
    }

    /// The filter as a SQL condition; its values are appended to `params` (`?` style).
    pub(crate) fn sql(&self, local: &str, params: &mut Vec<tally_store::Param>) -> String {
        let mut binder = Binder::positional(std::mem::take(params));
        let sql = self.sql_with(local, &mut binder);
        *params = binder.into_params();
        sql
    }

    /// The filter as a SQL condition (never NULL), values bound by `b`.
    pub(crate) fn sql_with(&self, local: &str, b: &mut Binder) -> String {
        let (op, dimension, values, numbers) = match self {
            Filter::And(list) => {
                let parts: Vec<String> = list.iter().map(|f| f.sql_with(local, b)).collect();
                return format!("({})", parts.join(" AND "));
            }
            Filter::Or(list) => {
                let parts: Vec<String> = list.iter().map(|f| f.sql_with(local, b)).collect();
                return format!("({})", parts.join(" OR "));
            }
            Filter::Not(inner) => return format!("(NOT {})", inner.sql_with(local, b)),
            Filter::Cmp {
                op,
                dimension,
                values,
                numbers,
            } => (*op, dimension, values, numbers),
        };
        let expr = dimension_expr(dimension, local);
        let list = |b: &mut Binder| values.iter().map(|v| b.text(v)).collect::<Vec<_>>();
        let any = |b: &mut Binder, f: &dyn Fn(&str) -> String| {
            let parts: Vec<String> = values.iter().map(|v| f(&b.text(v))).collect();
            format!("coalesce({}, false)", parts.join(" OR "))
        };
        match op {
            Op::Is => format!("coalesce({expr} IN ({}), false)", list(b).join(", ")),
            Op::IsNot => format!("coalesce({expr} NOT IN ({}), true)", list(b).join(", ")),
            Op::Contains => any(b, &|v| format!("contains(lower({expr}), lower({v}))")),
            Op::ContainsNot => format!(
                "(NOT {})",
                any(b, &|v| format!("contains(lower({expr}), lower({v}))"))
            ),
            Op::Matches => any(b, &|v| format!("regexp_matches({expr}, {v})")),
            Op::MatchesNot => format!(
                "(NOT {})",
                any(b, &|v| format!("regexp_matches({expr}, {v})"))
            ),
            Op::Gt | Op::Lt => {
                let cmp = if op == Op::Gt { ">" } else { "<" };
                let n = b.bind(tally_store::Param::Float(numbers[0]));
                format!("coalesce(TRY_CAST({expr} AS DOUBLE) {cmp} {n}, false)")
            }
            Op::IsSet => format!("({expr} IS NOT NULL)"),
            Op::IsNotSet => format!("({expr} IS NULL)"),
        }
    }
}

/// Refuses patterns RE2 (DuckDB's regex engine) would reject, before they reach SQL,
/// so the error names the field. RE2 has no look-around or back-references.
fn check_regex(re: &str, field: &str) -> Result<(), QueryError> {
    if re.len() > 1_000 {
        return Err(QueryError::invalid(
            field,
            "a pattern is at most 1000 characters",
        ));
    }
    for bad in ["(?=", "(?!", "(?<=", "(?<!"] {
        if re.contains(bad) {
            return Err(QueryError::invalid(
                field,
                "look-around is not supported (patterns are RE2)",
            ));
        }
    }
    let mut depth = 0i32;
    let mut escaped = false;
    let mut in_class = false;
    for c in re.chars() {
        match (escaped, in_class, c) {
            (true, _, _) => escaped = false,
            (false, _, '\\') => escaped = true,
            (false, false, '[') => in_class = true,
            (false, true, ']') => in_class = false,
            (false, false, '(') => depth += 1,
            (false, false, ')') => {
                depth -= 1;
                if depth < 0 {
                    break;
                }
            }
            _ => {}
        }
    }
    if depth != 0 || escaped || in_class {
        return Err(QueryError::invalid(
            field,
            format!("{re:?} is not a valid pattern: unbalanced brackets or a trailing backslash"),
        ));
    }
    Ok(())
}
