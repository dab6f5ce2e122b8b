//! Query latency on a generated dataset (`gen_events`): runs each query kind of the
//! engine through `tally_query::run`, exactly as the HTTP handler does but without HTTP
//! or any cache, and prints a Markdown table of p50/p95 latencies.
//!
//! Two raw-SQL scans over the same 30 days run in the same process first, so the
//! engine's numbers read as ratios to the cost of simply reading the rows.
//!
//! Queries are timed against "now" = one second after the dataset's last event (override
//! with `--now`), so a dataset generated last week answers the same as a fresh one.

use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use clap::Parser;
use serde_json::Value;
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::{Param, Sql, Store};

// The same allocator as the `tally` binary, so the engine allocates as it does there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Time Tally's query kinds on a generated DuckDB file.
#[derive(Parser, Debug)]
struct Args {
    /// The DuckDB file written by gen_events.
    #[arg(long)]
    db: PathBuf,
    /// Timed runs per query.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed runs per query first (loads the data the query touches into memory).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Project id of the events.
    #[arg(long, default_value = "bench")]
    project: String,
    /// The query time "now": `data` (just after the last event), `wall` (the clock), or
    /// an RFC 3339 instant.
    #[arg(long, default_value = "data")]
    now: String,
    /// DuckDB worker threads per query.
    #[arg(long, default_value_t = DuckConfig::default().threads)]
    threads: u32,
    /// DuckDB memory limit.
    #[arg(long, default_value_t = DuckConfig::default().memory_limit)]
    memory_limit: String,
    /// Time this request body instead of the built-in list (repeatable).
    #[arg(long = "query")]
    queries: Vec<String>,
    /// Also time this SQL statement (no parameters; repeatable), as a baseline or to see
    /// where a query's time goes. Its first row is printed to stderr.
    #[arg(long = "sql")]
    statements: Vec<String>,
    /// Print each query's response (truncated) to stderr.
    #[arg(long)]
    verbose: bool,
}

/// The queries: (description, request body).
const QUERIES: &[(&str, &str)] = &[
    (
        "visitors, events, pageviews, 30d",
        r#"{"kind":"stats","metrics":["visitors","events","pageviews"],"date_range":"30d"}"#,
    ),
    (
        "top 10 pages by visitors, 30d",
        r#"{"kind":"stats","metrics":["visitors","events"],"date_range":"30d","dimensions":["event:page"],"pagination":{"limit":10}}"#,
    ),
    (
        "visitors per day, 91d",
        r#"{"kind":"stats","metrics":["visitors"],"date_range":"91d","dimensions":["time:day"]}"#,
    ),
    (
        "page_visit total + signup unique, daily, 30d",
        r#"{"kind":"trends","date_range":"30d","interval":"day","series":[{"event":"page_visit","math":"total"},{"event":"signup","math":"unique"}]}"#,
    ),
    (
        "feature_used DAU by plan (top 5), daily, 30d",
        r#"{"kind":"trends","date_range":"30d","interval":"day","series":[{"event":"feature_used","math":"dau"}],"breakdown":["event:props:plan"],"breakdown_limit":5}"#,
    ),
    (
        "WAU of any event, daily, 30d",
        r#"{"kind":"trends","date_range":"30d","interval":"day","series":[{"event":"$any","math":"wau"}]}"#,
    ),
    (
        "page_visit → signup → purchase, 14d window, 30d",
        r#"{"kind":"funnel","date_range":"30d","steps":[{"event":"page_visit"},{"event":"signup"},{"event":"purchase"}],"window":{"value":14,"unit":"day"}}"#,
    ),
    (
        "same funnel counted by account",
        r#"{"kind":"funnel","date_range":"30d","steps":[{"event":"page_visit"},{"event":"signup"},{"event":"purchase"}],"window":{"value":14,"unit":"day"},"count_by":"account"}"#,
    ),
    (
        "signup → any event, 8 weekly cohorts, 91d",
        r#"{"kind":"retention","date_range":"91d","period":"week","intervals":8,"target":{"event":"signup"},"returning":{"event":"$any"}}"#,
    ),
    (
        "new/returning/resurrecting/dormant, daily, 30d",
        r#"{"kind":"lifecycle","date_range":"30d","interval":"day","target":{"event":"$any"}}"#,
    ),
    (
        "feature_used days per user, 30d",
        r#"{"kind":"stickiness","date_range":"30d","target":{"event":"feature_used"}}"#,
    ),
    (
        "3 steps after signup, top 10, 7d",
        r#"{"kind":"paths","date_range":"7d","start":{"event":"signup"},"direction":"next","depth":3,"limit":10}"#,
    ),
    (
        "accounts list, 50, 30d",
        r#"{"kind":"accounts","date_range":"30d","pagination":{"limit":50}}"#,
    ),
    ("last 5 minutes", r#"{"kind":"realtime","minutes":5}"#),
    // The dashboard's top row and its top pages by visits (issue 16): read from the
    // visits table, with the visits crossing the range's edges cut from their events.
    (
        "dashboard top row (visitors, visits, pageviews, views per visit, bounce rate, visit duration), 91d",
        r#"{"kind":"stats","metrics":["visitors","visits","pageviews","views_per_visit","bounce_rate","visit_duration"],"date_range":"91d"}"#,
    ),
    (
        "top 10 pages by visits (visitors, visits, bounce rate), 91d",
        r#"{"kind":"stats","metrics":["visitors","visits","bounce_rate"],"date_range":"91d","dimensions":["event:page"],"order_by":[["visits","desc"]],"pagination":{"limit":10}}"#,
    ),
];

/// One row of the report.
struct Row {
    kind: String,
    description: String,
    outcome: Result<(Vec<f64>, usize), String>,
}

/// Runs `f` warmup + runs times; the timings (ms) of the timed runs and the row count of
/// the last, or the first error.
fn measure(
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<usize, String>,
) -> Result<(Vec<f64>, usize), String> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs {
        let t = Instant::now();
        rows = f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((times, rows))
}

/// Nearest-rank percentile of unsorted samples.
fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rows of a query response: the items of its `results` list; for results that are an
/// object (lifecycle, paths, realtime), the items of its longest list.
fn result_rows(response: &Value) -> usize {
    match response.get("results") {
        Some(Value::Array(items)) => items.len(),
        Some(Value::Object(obj)) => obj
            .values()
            .filter_map(|v| v.as_array().map(Vec::len))
            .max()
            .unwrap_or(1),
        _ => 1,
    }
}

/// Makes text safe for one Markdown table cell.
fn cell(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ").replace('|', "\\|");
    if one_line.chars().count() > 160 {
        one_line.chars().take(157).collect::<String>() + "..."
    } else {
        one_line
    }
}

fn scalar(store: &DuckStore, sql: &Sql) -> Result<Value, String> {
    let rows = store.query(sql).map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .unwrap_or(Value::Null))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // `RUST_LOG=tally_store=debug` prints each generated statement with its time.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if !args.db.exists() {
        return Err(format!("{} does not exist; run gen_events first", args.db.display()).into());
    }
    let config = DuckConfig {
        threads: args.threads,
        memory_limit: args.memory_limit.clone(),
        ..DuckConfig::default()
    };
    let store = DuckStore::open(&args.db, config)?;
    let project = Param::Text(args.project.clone());
    let total = scalar(
        &store,
        &Sql {
            text: "SELECT count(*) FROM events WHERE project_id = ?".into(),
            params: vec![project.clone()],
        },
    )?;
    let now: DateTime<Utc> = match args.now.as_str() {
        "wall" => Utc::now(),
        "data" => {
            let last = scalar(
                &store,
                &Sql {
                    text: "SELECT epoch_us(max(ts)) FROM events WHERE project_id = ?".into(),
                    params: vec![project.clone()],
                },
            )?;
            let last = last.as_i64().ok_or("the dataset has no events")?;
            DateTime::from_timestamp_micros(last).ok_or("bad last event time")?
                + Duration::seconds(1)
        }
        other => other.parse()?,
    };
    eprintln!(
        "{}: {total} events in project {:?}; now = {now}; {} warm-up + {} timed runs per query",
        args.db.display(),
        args.project,
        args.warmup,
        args.runs
    );

    let mut rows = Vec::new();
    let since = Param::Timestamp((now - Duration::days(30)).timestamp_micros());
    for (description, text, bound) in [
        (
            "count(*), 30d",
            "SELECT count(*) FROM events WHERE project_id = ? AND ts >= ?",
        ),
        (
            "count(DISTINCT visitor_id), 30d",
            "SELECT count(DISTINCT visitor_id) FROM events WHERE project_id = ? AND ts >= ?",
        ),
    ]
    .into_iter()
    .map(|(d, t)| (d.to_owned(), t.to_owned(), true))
    .chain(
        args.statements
            .iter()
            .map(|t| (t.clone(), t.clone(), false)),
    ) {
        // The built-in two take the project and the start of the last 30 days.
        let sql = Sql {
            text,
            params: if bound {
                vec![project.clone(), since.clone()]
            } else {
                vec![]
            },
        };
        if !bound {
            eprintln!(
                "first row: {:?}",
                store.query(&sql).map(|r| r.into_iter().next())
            );
        }
        eprintln!("sql: {description}");
        let outcome = measure(args.warmup, args.runs, || {
            store
                .query(&sql)
                .map(|r| r.len())
                .map_err(|e| e.to_string())
        });
        rows.push(Row {
            kind: "raw SQL".into(),
            description,
            outcome,
        });
    }

    let queries: Vec<(&str, &str)> = if args.queries.is_empty() {
        QUERIES.to_vec()
    } else {
        args.queries
            .iter()
            .map(|q| (q.as_str(), q.as_str()))
            .collect()
    };
    for (description, body) in queries {
        let request: Value = serde_json::from_str(body)?;
        let kind = request["kind"].as_str().unwrap_or("stats").to_owned();
        eprintln!("{kind}: {description}");
        let mut shown = !args.verbose;
        let outcome = measure(args.warmup, args.runs, || {
            let response = tally_query::run(&store, &args.project, &request, now)
                .map_err(|e| e.to_string())?;
            if !shown {
                shown = true;
                let text = response.to_string();
                eprintln!("  {}", text.chars().take(1500).collect::<String>());
            }
            Ok(result_rows(&response))
        });
        rows.push(Row {
            kind,
            description: description.into(),
            outcome,
        });
    }

    println!("| kind | query | p50 ms | p95 ms | rows |");
    println!("|---|---|---:|---:|---:|");
    for row in &rows {
        match &row.outcome {
            Ok((times, n)) => println!(
                "| {} | {} | {:.1} | {:.1} | {n} |",
                row.kind,
                cell(&row.description),
                percentile(times, 50.0),
                percentile(times, 95.0)
            ),
            Err(e) => println!(
                "| {} | {} | error: {} | | |",
                row.kind,
                cell(&row.description),
                cell(e)
            ),
        }
    }
    Ok(())
}
