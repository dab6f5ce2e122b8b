//! Prometheus metrics: the recorder, the per-route latency middleware, and the names.

use std::sync::OnceLock;
use std::time::Instant;

use std::collections::HashSet;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;

pub(crate) const HTTP_DURATION: &str = "tally_http_request_duration_seconds";
pub(crate) const EVENTS_ACCEPTED: &str = "tally_events_accepted_total";
pub(crate) const EVENTS_REJECTED: &str = "tally_events_rejected_total";
pub(crate) const WRITER_BATCH_EVENTS: &str = "tally_writer_batch_events";
pub(crate) const WRITER_FLUSH_SECONDS: &str = "tally_writer_flush_seconds";
pub(crate) const WRITER_ERRORS: &str = "tally_writer_errors_total";
/// A query request's latency, answered from the cache or not.
pub(crate) const QUERY_SECONDS: &str = "tally_query_seconds";
/// The time of each query that reached the store.
pub(crate) const STORE_QUERY_SECONDS: &str = "tally_store_query_seconds";
/// Queries that reached the store.
pub(crate) const STORE_QUERIES: &str = "tally_store_queries_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];

/// The process-wide recorder (installed once; tests start many servers in one process).
pub(crate) fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(WRITER_BATCH_EVENTS.into()),
                        SIZE_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("tally_wal_group_commit_records".into()),
                        SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty");
            let handle = builder
                .install_recorder()
                .expect("no other metrics recorder is installed");
            metrics::gauge!("tally_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Records every request's latency by route template (not raw path: bounded labels).
pub(crate) async fn track_latency(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| intern(p.as_str()))
        .unwrap_or("unmatched");
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    let response = next.run(request).await;
    let status = status_label(response.status());
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method, "status" => status)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Route templates as `&'static str`, so labelling a request allocates nothing. The set
/// is bounded by the router's routes.
fn intern(route: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(Default::default);
    if let Some(r) = routes.read().get(route) {
        return r;
    }
    let mut w = routes.write();
    if let Some(r) = w.get(route) {
        return r;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    w.insert(leaked);
    leaked
}

fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
