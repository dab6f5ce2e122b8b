//! What the `events_hourly` rollup buys on ClickHouse: the same `stats` queries through
//! `tally_query::run`, once reading the events (`clickhouse.rollups = "never"`) and once
//! the rollup (`"always"`), alternating, on one database. A raw `count()` over the same
//! 30 days is timed in the same run as the baseline of simply reading the rows. Prints
//! p50/p95 as a Markdown table. Run by bench/clickhouse.sh rollup, which starts the server.
//!
//! The events are generated inside ClickHouse (`INSERT ... SELECT FROM numbers(n)`), so
//! the rollup's materialized view fills as it would from writers' inserts, and loading
//! ten million rows takes seconds, not minutes.

use std::time::Instant;

use chrono::{DateTime, Utc};
use clap::Parser;
use serde_json::Value;
use tally_store::clickhouse::{ClickHouseConfig, ClickHouseStore, Rollups};
use tally_store::{Sql, Store};

#[derive(Parser, Debug)]
struct Args {
    /// ClickHouse's HTTP interface.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    url: String,
    /// Events, spread evenly over the 30 days before `now`.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Timed runs per query and path.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Timed runs of each other report kind (0: skip them).
    #[arg(long, default_value_t = 3)]
    other_runs: usize,
}

const QUERIES: &[(&str, &str)] = &[
    (
        "events, pageviews, 30d",
        r#"{"kind":"stats","metrics":["events","pageviews"],"date_range":"30d"}"#,
    ),
    (
        "top 10 pages by pageviews, 30d",
        r#"{"kind":"stats","metrics":["pageviews"],"date_range":"30d","dimensions":["event:page"],"order_by":[["pageviews","desc"]],"pagination":{"limit":10}}"#,
    ),
    (
        "events per day by name, 30d, Europe/Berlin",
        r#"{"kind":"stats","metrics":["events"],"date_range":"30d","dimensions":["time:day","event:name"],"timezone":"Europe/Berlin"}"#,
    ),
    (
        "signups per hour, 7d",
        r#"{"kind":"stats","metrics":["events"],"date_range":"7d","dimensions":["time:hour"],"filters":[["is","event:name",["signup"]]]}"#,
    ),
];

/// Report kinds no rollup answers, timed on the events: what a dashboard on ClickHouse
/// costs beyond the hottest counts.
const OTHER_QUERIES: &[(&str, &str)] = &[
    (
        "visitors per day, 30d",
        r#"{"kind":"stats","metrics":["visitors"],"date_range":"30d","dimensions":["time:day"]}"#,
    ),
    (
        "visits, bounce rate, duration, 7d",
        r#"{"kind":"stats","metrics":["visits","bounce_rate","visit_duration"],"date_range":"7d"}"#,
    ),
    (
        "top 10 entry pages by visits, 7d",
        r#"{"kind":"stats","metrics":["visits"],"date_range":"7d","dimensions":["visit:entry_page"],"pagination":{"limit":10}}"#,
    ),
    (
        "DAU of signup, daily, 30d",
        r#"{"kind":"trends","date_range":"30d","interval":"day","series":[{"event":"signup","math":"dau"}]}"#,
    ),
    (
        "WAU of any event, daily, 30d",
        r#"{"kind":"trends","date_range":"30d","interval":"day","series":[{"math":"wau"}]}"#,
    ),
    (
        "page_visit → signup → purchase, 14d window, 30d",
        r#"{"kind":"funnel","date_range":"30d","steps":[{"event":"page_visit"},{"event":"signup"},{"event":"purchase"}],"window":{"value":14,"unit":"day"}}"#,
    ),
    (
        "signup → any event, weekly cohorts, 30d",
        r#"{"kind":"retention","date_range":"30d","period":"week","intervals":4,"target":{"event":"signup"},"returning":{"event":"$any"}}"#,
    ),
    (
        "lifecycle, daily, 30d",
        r#"{"kind":"lifecycle","date_range":"30d","interval":"day"}"#,
    ),
    (
        "3 steps after signup, 7d",
        r#"{"kind":"paths","date_range":"7d","start":{"event":"signup"},"depth":3,"limit":10}"#,
    ),
];

const NOW: &str = "2026-11-20T00:00:00Z";
const DB: &str = "bench_rollup";

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let http = reqwest::blocking::Client::new();
    let run_sql = |q: &str| tally_bench::clickhouse_sql(&http, &args.url, q);
    let open = |rollups| {
        ClickHouseStore::open(ClickHouseConfig {
            url: args.url.clone(),
            database: DB.into(),
            rollups,
            ..ClickHouseConfig::default()
        })
    };
    run_sql(&format!("DROP DATABASE IF EXISTS {DB}"))?;
    let raw = open(Rollups::Never)?;
    let rolled = open(Rollups::Always)?;

    let now: DateTime<Utc> = NOW.parse()?;
    let end_us = now.timestamp_micros();
    let span_us = 30 * 86_400 * 1_000_000i64;
    let step = span_us / args.events as i64;
    let t = Instant::now();
    // 100k people, 500 pages, five event names (page_visit a page view), in blocks of 1M
    // rows as writers would send them.
    let block = 1_000_000u64;
    let mut from = 0;
    while from < args.events {
        let n = block.min(args.events - from);
        run_sql(&format!(
            "INSERT INTO {DB}.events (project_id, uuid, type, event, user_id, device_id, visitor_id, ts, received_at, page, properties, traits, context, lsn) \
             SELECT 'bench', toString(number), if(e = 'page_visit', 'page', 'track'), e, \
                    concat('user-', toString(number % 100000)), NULL, concat('user-', toString(number % 100000)), \
                    {start} + number * {step}, {start} + number * {step}, \
                    if(e = 'page_visit', concat('/p/', toString(cityHash64(number) % 500)), NULL), '{{}}', '{{}}', '{{}}', 1 \
             FROM (SELECT number, ['page_visit', 'page_visit', 'feature_used', 'signup', 'purchase'][cityHash64(number, 1) % 5 + 1] AS e \
                   FROM numbers({from}, {n}))",
            start = end_us - span_us,
        ))?;
        from += n;
    }
    let load_secs = t.elapsed().as_secs_f64();
    let counted = run_sql(&format!(
        "SELECT count(), (SELECT sum(events) FROM {DB}.events_hourly) FROM {DB}.events"
    ))?;
    eprintln!(
        "loaded {} events in {load_secs:.1} s; events, rolled-up events: {}",
        args.events,
        counted.trim()
    );
    let rollup_rows = run_sql(&format!("SELECT count() FROM {DB}.events_hourly"))?;

    // The baseline: count the 30 days' analytics calls, no grouping.
    let baseline_sql = Sql {
        text: format!(
            "SELECT count() FROM {DB}.events WHERE project_id = 'bench' AND ts >= {} AND ts < {end_us} \
             AND type NOT IN ('identify', 'group', 'alias')",
            end_us - span_us
        ),
        params: vec![],
    };
    let mut baseline = Vec::new();
    raw.query(&baseline_sql)?;
    for _ in 0..args.runs {
        let t = Instant::now();
        raw.query(&baseline_sql)?;
        baseline.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let version = run_sql("SELECT version()")?;
    println!(
        "ClickHouse {}, {} events over 30 days ({} rollup rows), {} runs each, ms:\n",
        version.trim(),
        args.events,
        rollup_rows.trim(),
        args.runs
    );
    println!("| query | events p50 | events p95 | rollup p50 | rollup p95 | speed-up (p50) |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| baseline: raw `count()` of 30 days | {:.1} | {:.1} | | | |",
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.95)
    );
    for (name, body) in QUERIES {
        let request: Value = serde_json::from_str(body)?;
        let (mut on_events, mut on_rollup) = (Vec::new(), Vec::new());
        let a = tally_query::run(&raw, "bench", &request, now)?;
        let b = tally_query::run(&rolled, "bench", &request, now)?;
        assert_eq!(a, b, "the rollup answers {name} as the events do");
        for _ in 0..args.runs {
            let t = Instant::now();
            tally_query::run(&raw, "bench", &request, now)?;
            on_events.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            tally_query::run(&rolled, "bench", &request, now)?;
            on_rollup.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (e50, r50) = (percentile(&on_events, 0.5), percentile(&on_rollup, 0.5));
        println!(
            "| {name} | {e50:.1} | {:.1} | {r50:.1} | {:.1} | {:.1}× |",
            percentile(&on_events, 0.95),
            percentile(&on_rollup, 0.95),
            e50 / r50
        );
    }
    if args.other_runs > 0 {
        println!(
            "\nOther report kinds, from the events (no rollup applies), {} runs each, ms:\n",
            args.other_runs
        );
        println!("| query | p50 | max |");
        println!("|---|---:|---:|");
        for (name, body) in OTHER_QUERIES {
            let request: Value = serde_json::from_str(body)?;
            let mut times = Vec::new();
            let mut failure = None;
            for _ in 0..args.other_runs {
                let t = Instant::now();
                match tally_query::run(&raw, "bench", &request, now) {
                    Ok(_) => times.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            match failure {
                Some(e) => println!(
                    "| {name} | failed: {} | |",
                    e.chars().take(120).collect::<String>()
                ),
                None => println!(
                    "| {name} | {:.1} | {:.1} |",
                    percentile(&times, 0.5),
                    percentile(&times, 1.0)
                ),
            }
        }
    }
    Ok(())
}
