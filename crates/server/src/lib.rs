//! Tally's HTTP server: routes, authentication, metrics, and the background writer.
//!
//! [`serve`] runs all roles in one process by default: ingest appends to the WAL, the
//! writer moves batches into DuckDB, the query API reads DuckDB. In scale-out mode
//! (`queue.backend = "redis"`, `store.backend = "clickhouse"`) the same process runs one
//! role, or all three, on Redis Streams and ClickHouse. [`router`] builds the axum router
//! from an [`AppState`], so tests can drive the real server on `127.0.0.1:0`.

mod auth;
mod cache;
pub mod config;
mod dashboard;
mod dedup;
mod disk;
mod error;
mod ingest;
mod l2;
pub mod meta;
mod metrics;
mod query;
mod queue;
mod settings;
mod writer;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::RwLock;
use serde_json::{json, Value};
use tally_queue::{FsyncPolicy, RedisStreams, StreamConfig, Wal, WalConfig};
use tally_store::clickhouse::{ClickHouseConfig, ClickHouseStore, Rollups};
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::{Param, Sql, Store};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::Config;
use error::ApiError;
use meta::{KeyIndex, KeyKind, NewProject, Projects, UserRole};

/// What every handler shares.
pub struct AppState {
    pub config: Config,
    keys: RwLock<Arc<KeyIndex>>,
    /// Projects and users as in projects.json, reloaded with the keys.
    directory: RwLock<Arc<Projects>>,
    /// Dashboard sessions and login rate limits.
    auth: auth::Auth,
    /// `None` in the writer and query roles.
    queue: Option<queue::Queue>,
    /// `None` in the ingest role.
    store: Option<Arc<dyn Store>>,
    limits: tally_ingest::Limits,
    segment_limits: tally_ingest::SegmentLimits,
    posthog_limits: tally_ingest::PostHogLimits,
    /// The bound on concurrent store queries ([`query`]'s module docs).
    admission: query::Admission,
    /// Query results (cache.rs).
    cache: cache::Cache,
    /// Set while the embedded writer loads its dedup window at start: not ready yet.
    writer_starting: AtomicBool,
    /// The shutdown signal has come: `/readyz` says 503 while requests finish.
    stopping: AtomicBool,
    /// The data volume's free space, where this process keeps the WAL and the store.
    disk: Option<Arc<disk::Disk>>,
    /// The writer's last store insert failed (it retries with backoff).
    writer_failing: Arc<AtomicBool>,
}

impl AppState {
    /// How long a request body may take to arrive.
    fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.config.http.body_read_timeout_ms)
    }

    /// The project a request's key belongs to, if the key is of the `needed` kind.
    fn authenticate(&self, headers: &HeaderMap, needed: KeyKind) -> Result<String, ApiError> {
        self.authenticate_with(api_key(headers), needed)
    }

    /// As [`Self::authenticate`], for a key found elsewhere than the headers.
    fn authenticate_with(&self, key: Option<&str>, needed: KeyKind) -> Result<String, ApiError> {
        let key = key.ok_or_else(|| {
            ApiError::unauthorized("missing API key: send it in the x-api-key header or as Authorization: Bearer <key>")
        })?;
        let keys = self.keys.read().clone();
        match keys.lookup(key) {
            Some((project, kind)) if kind == needed => Ok(project.to_owned()),
            Some((_, KeyKind::Read)) => Err(ApiError::forbidden(
                "this is a read key; sending events needs the project's write key",
            )),
            Some((_, KeyKind::Write)) => Err(ApiError::forbidden(
                "this is a write key; queries need the project's read key",
            )),
            None => Err(ApiError::unauthorized("unknown API key")),
        }
    }
}

impl AppState {
    /// The project a query may read: the read key's, or with the dashboard's session
    /// cookie the `?project=` one, if that user may see it. A POST with the cookie must
    /// pass the CSRF check ([`auth`]).
    fn authorize_read(
        &self,
        headers: &HeaderMap,
        method: &Method,
        project: Option<&str>,
    ) -> Result<String, ApiError> {
        if api_key(headers).is_some() || auth::cookie(headers, auth::COOKIE).is_none() {
            let own = self.authenticate(headers, KeyKind::Read).map_err(|e| {
                if e.code == "unauthorized" && api_key(headers).is_none() {
                    ApiError::unauthorized(
                        "missing API key: send the project's read key in the x-api-key header                          or as Authorization: Bearer <key>, or log in (POST /api/v1/login) and                          send the session cookie with ?project=<id>",
                    )
                } else {
                    e
                }
            })?;
            return match project {
                Some(p) if p != own => Err(ApiError::forbidden(format!(
                    "this read key belongs to project {own:?}, not {p:?}"
                ))),
                _ => Ok(own),
            };
        }
        let directory = self.directory.read().clone();
        let (session, user) = self
            .auth
            .session(headers, &directory)
            .ok_or_else(auth::not_logged_in)?;
        if method != Method::GET && method != Method::HEAD {
            auth::check_csrf(headers, &session)?;
        }
        let project = project.filter(|p| !p.is_empty()).ok_or_else(|| {
            ApiError::bad_request(
                "missing_project",
                "with the session cookie, name the project: POST /api/v1/query?project=<id>",
            )
        })?;
        if !user.may_see(project) {
            return Err(ApiError::forbidden(format!(
                "{} may not see project {project:?}",
                user.email
            ))
            .with_code("no_access"));
        }
        if !directory.projects.iter().any(|p| p.id == project) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_project",
                format!("no project {project:?}"),
            ));
        }
        Ok(project.to_owned())
    }

    /// The project of a write key found in a request body (Segment, PostHog).
    fn project_of_write_key(&self, key: Option<&str>) -> Result<String, ApiError> {
        let key = key.filter(|k| !k.is_empty()).ok_or_else(|| {
            ApiError::unauthorized(
                "missing API key: send the project's write key (Segment: Basic auth user or \
                 writeKey; PostHog: api_key or token)",
            )
        })?;
        self.authenticate_with(Some(key), KeyKind::Write)
    }
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim()).filter(|k| !k.is_empty());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|k| !k.is_empty())
}

/// The HTTP routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let cors = cors_layer(&state.config.http.cors_origins);
    Router::new()
        .route("/api/track", post(ingest::track))
        .route("/api/identify", post(ingest::identify))
        .route("/api/group", post(ingest::group))
        .route("/api/page", post(ingest::page))
        .route("/v1/{call}", post(ingest::segment))
        .route("/api/v1/query", post(query::query))
        .route("/api/v1/login", post(auth::login))
        .route("/api/v1/logout", post(auth::logout))
        .route("/api/v1/session", get(auth::current))
        .route("/api/v1/settings", get(settings::get))
        .route("/api/v1/projects", post(settings::create_project))
        .route("/api/v1/projects/{id}/keys", post(settings::create_key))
        .route(
            "/api/v1/projects/{id}/keys/revoke",
            post(settings::revoke_key),
        )
        .route("/api/v1/users", post(settings::create_user))
        .route("/api/v1/users/remove", post(settings::remove_user))
        .route("/", get(dashboard::index))
        .route("/login", get(dashboard::index))
        .route("/insights/{*view}", get(dashboard::index))
        .route("/accounts", get(dashboard::index))
        .route("/events", get(dashboard::index))
        .route("/settings", get(dashboard::index))
        .route("/people", get(dashboard::index))
        .route("/assets/{*file}", get(dashboard::asset))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/js/tally.js", get(tracker_script))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(posthog_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(metrics::track_latency))
        .layer(cors)
        .with_state(state)
}

/// PostHog's capture routes, GET and POST, with and without a trailing slash; and its
/// feature-flag routes, which posthog-js calls on start: Tally has no feature flags, so
/// they answer "none" rather than 404 (which the SDK would log as an error).
fn posthog_routes() -> Router<Arc<AppState>> {
    let no_flags = || async {
        Json(json!({
            "flags": {},
            "featureFlags": {},
            "featureFlagPayloads": {},
            "errorsWhileComputingFlags": false,
            "sessionRecording": false,
            "supportedCompression": ["gzip", "gzip-js"],
        }))
    };
    let mut r = Router::new();
    for path in ["/decide", "/decide/", "/flags", "/flags/"] {
        r = r.route(path, get(no_flags).post(no_flags));
    }
    for path in ["/e", "/i/v0/e", "/capture", "/track", "/engage", "/batch"] {
        r = r
            .route(path, get(ingest::posthog).post(ingest::posthog))
            .route(
                &format!("{path}/"),
                get(ingest::posthog).post(ingest::posthog),
            );
    }
    r
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ])
        .max_age(Duration::from_secs(86_400))
}

async fn render_metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Response {
    // Queue gauges are sampled at scrape time so they are never stale. The WAL's keep
    // their names; a Redis stream reports entries (pending + not yet read) and its lag.
    if let Some(q) = &state.queue {
        let g = q.gauges(state.config.queue.max_pending_bytes).await;
        if let Some(bytes) = g.pending_bytes {
            ::metrics::gauge!("tally_wal_pending_bytes").set(bytes as f64);
        }
        if let Some(events) = g.pending_events {
            ::metrics::gauge!("tally_wal_pending_events").set(events as f64);
        }
        ::metrics::gauge!("tally_wal_pending_records").set(g.pending_records as f64);
        ::metrics::gauge!("tally_wal_oldest_pending_age_seconds").set(g.oldest_age_secs);
        if let Some(lag) = g.lag {
            ::metrics::gauge!("tally_stream_lag_entries").set(lag as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::handle().render(),
    )
        .into_response()
}

/// Liveness: 200 unless the process can no longer work without a restart (its store
/// said it failed), so that a supervisor's liveness probe restarts it.
async fn healthz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    match state.store.as_ref().and_then(|s| s.failure()) {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "failed",
                "error": "store_failed",
                "message": format!("the store failed and cannot be used until the process restarts (it is exiting): {why}"),
            })),
        )
            .into_response(),
    }
}

async fn readyz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    let (queue_ok, pending) = match &state.queue {
        Some(q) => {
            let g = q.gauges(state.config.queue.max_pending_bytes).await;
            (
                g.ok,
                json!({"bytes": g.pending_bytes, "entries": g.pending_records}),
            )
        }
        None => (true, Value::Null),
    };
    let store_ok = match state.store.clone() {
        Some(store) => tokio::task::spawn_blocking(move || {
            store
                .query(&Sql {
                    text: "SELECT 1".into(),
                    params: Vec::<Param>::new(),
                })
                .is_ok()
        })
        .await
        .unwrap_or(false),
        None => true,
    };
    let failure = state.store.as_ref().and_then(|s| s.failure());
    let writer_ok = !state.writer_starting.load(Ordering::Acquire);
    let stopping = state.stopping.load(Ordering::Acquire);
    let disk_ok = state.disk.as_ref().is_none_or(|d| !d.low());
    let inserting = !state.writer_failing.load(Ordering::Acquire);
    let ready =
        queue_ok && store_ok && failure.is_none() && writer_ok && !stopping && disk_ok && inserting;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut why = Vec::new();
    if !queue_ok {
        why.push("the queue is full or unreachable: ingest answers 503");
    }
    if failure.is_some() {
        why.push("the store failed and cannot be used until the process restarts: it is exiting, and the queue keeps what was not stored");
    } else if !store_ok {
        why.push("the store does not answer: queries fail");
    }
    if !writer_ok {
        why.push("starting: the writer is loading the dedup window");
    }
    if stopping {
        why.push("stopping: in-flight requests are finishing, then the queue is flushed");
    }
    if !disk_ok {
        why.push("the data volume is below its free-space reserve (queue.min_free_bytes): ingest answers 503");
    }
    if !inserting {
        why.push(
            "the writer's store inserts are failing; it retries, and the queue holds the events",
        );
    }
    let body = json!({
        "ready": ready,
        "why": why,
        "writer": { "ok": writer_ok && inserting, "starting": !writer_ok, "failing": !inserting },
        "disk": state.disk.as_ref().map(|d| json!({ "ok": disk_ok, "free_bytes": d.free(), "reserve_bytes": d.reserve() })),
        "role": state.config.role,
        "queue": { "ok": queue_ok, "pending_bytes": pending.get("bytes"), "pending": pending, "limit_bytes": state.config.queue.max_pending_bytes },
        "store": { "ok": store_ok, "failure": failure },
    });
    (status, Json(body)).into_response()
}

/// The OpenAPI 3.1 description of every route (src/openapi.json), embedded in the binary;
/// tests/query_api.rs checks it against the router and the query kinds.
async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// The first-party browser tracker (web/tally.js), embedded in the binary.
async fn tracker_script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../web/tally.js"),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see docs/ingest.md and docs/queries.md",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// What the first start made, to show once.
#[derive(Debug, Default)]
pub struct Bootstrapped {
    /// The `default` project and its keys, when there was no project.
    pub project: Option<NewProject>,
    /// The admin user's email and generated password, when there was no user.
    pub admin: Option<(String, String)>,
}

/// The admin user the first start makes.
pub const FIRST_ADMIN_EMAIL: &str = "admin@localhost";

/// Creates the data folder and, on first start, a `default` project and an admin user
/// (also on the first start of a data folder from before users existed). Returns what
/// was made, so the caller can show the keys and the password once.
pub fn bootstrap(config: &Config) -> anyhow::Result<Bootstrapped> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
    let mut projects = Projects::load(&config.data_dir)?;
    let mut made = Bootstrapped::default();
    if projects.projects.is_empty() {
        made.project = Some(projects.create_project("default")?);
    }
    if projects.users.is_empty() {
        let password = meta::generate_password();
        projects.create_user(FIRST_ADMIN_EMAIL, UserRole::Admin, &[], &password)?;
        made.admin = Some((FIRST_ADMIN_EMAIL.to_owned(), password));
    }
    if made.project.is_some() || made.admin.is_some() {
        projects.save(&config.data_dir)?;
    }
    Ok(made)
}

/// Runs Tally on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish, and writes everything the queue holds into the store.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.queue.backend == config::QueueBackend::Redis {
        return serve_scale_out(config, listener, shutdown).await;
    }
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)?;
    let store = Arc::new(
        DuckStore::open(
            &data_dir.join("tally.duckdb"),
            DuckConfig {
                memory_limit: config.store.memory_limit.clone(),
                threads: config.store.threads,
                query_timeout: Duration::from_millis(config.query.timeout_ms),
                checkpoint_threshold: config.store.checkpoint_threshold.clone(),
            },
        )
        .context("cannot open the store")?,
    );
    let committed = store.committed_lsn()?;
    let wal = Wal::open(
        WalConfig {
            dir: data_dir.join("wal"),
            segment_bytes: config.queue.segment_bytes,
            max_pending_bytes: config.queue.max_pending_bytes,
            fsync: match config.queue.fsync {
                config::FsyncMode::Always => FsyncPolicy::Always,
                config::FsyncMode::Interval => {
                    FsyncPolicy::Interval(Duration::from_millis(config.queue.fsync_interval_ms))
                }
                config::FsyncMode::Never => FsyncPolicy::Never,
            },
        },
        committed,
    )
    .context("cannot open the queue")?;
    let recovered = wal.stats();
    tracing::info!(
        committed,
        pending_records = recovered.pending_records,
        pending_events = recovered.pending_events,
        "queue opened"
    );

    let disk = Arc::new(disk::Disk::new(
        data_dir.clone(),
        config.queue.min_free_bytes,
    ));
    let watching = disk.watch();
    let state = Arc::new(AppState {
        disk: Some(disk),
        ..app_state(
            &config,
            Some(queue::Queue::Wal(wal.clone())),
            Some(store.clone() as Arc<dyn Store>),
        )?
    });
    let upkeep = spawn_metrics_upkeep();

    // The port answers at once; the writer starts once the dedup window is loaded
    // (seconds for millions of ids). Ingest meanwhile appends to the WAL as usual and
    // the writer catches up, deduplicating against the whole window; /readyz says not
    // ready until then.
    state.writer_starting.store(true, Ordering::Release);
    let draining = Arc::new(AtomicBool::new(false));
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn({
        let (state, store, config, wal, draining) = (
            state.clone(),
            store.clone(),
            config.clone(),
            wal.clone(),
            draining.clone(),
        );
        let dead_letter = data_dir.join("dead-letter.tsv");
        async move {
            let dedup = match warm_dedup(&store, &config).await {
                Ok(dedup) => dedup,
                Err(e) => {
                    let _ = fatal_tx.send(());
                    return Err(e.context("cannot load the dedup window"));
                }
            };
            state.writer_starting.store(false, Ordering::Release);
            writer::Writer {
                reader: wal
                    .reader(committed)
                    .with_linger(Duration::from_millis(config.writer.batch_max_wait_ms)),
                wal,
                store,
                config: config.writer.clone(),
                draining,
                failing: state.writer_failing.clone(),
                dead_letter,
                dedup,
                flushes: Some(state.cache.flushes.clone()),
            }
            .run()
            .await;
            anyhow::Ok(())
        }
    });
    // A store that failed for good (DuckDB invalidated) is not reopened under running
    // requests: the process stops as on SIGTERM and exits non-zero, so its supervisor
    // starts it again; what was not stored stays in the WAL for that start.
    let store_failed = {
        let store = store.clone();
        async move {
            while store.failure().is_none() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = fatal_rx => {}
            _ = store_failed => {}
        }
    };
    let reload = tokio::spawn(reload_keys(state.clone(), data_dir.clone()));
    let warmer = spawn_warmer(&state);
    run_http(&config, listener, state, shutdown).await?;
    reload.abort();
    upkeep.abort();
    watching.abort();
    if let Some(warmer) = warmer {
        warmer.abort();
    }

    tracing::info!("http stopped; flushing the queue into the store");
    // Closing joins the WAL thread after its last fsync, and a checkpoint writes the
    // DuckDB file: both block, so they run off the async workers.
    let closing = wal.clone();
    tokio::task::spawn_blocking(move || closing.close()).await?;
    draining.store(true, Ordering::Release);
    writer.await??;
    if let Some(why) = store.failure() {
        anyhow::bail!(
            "the store failed and cannot be used until a restart: {why}; what was not stored is in the WAL for the next start"
        );
    }
    let checkpointing = store.clone();
    tokio::task::spawn_blocking(move || checkpointing.checkpoint()).await??;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Scale-out mode: this process's role (or all three) on Redis Streams and ClickHouse.
/// Projects and keys still come from `<data_dir>/projects.json`, which every process of
/// a deployment reads (a shared or synced folder).
async fn serve_scale_out(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let role = config.role;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)?;
    let streams = if role.ingests() || role.writes() {
        let rc = &config.redis;
        let consumer = if rc.consumer.is_empty() {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "writer".into())
        } else {
            rc.consumer.clone()
        };
        let streams = RedisStreams::connect(StreamConfig {
            url: rc.url.clone(),
            stream: rc.stream.clone(),
            group: rc.group.clone(),
            consumer,
            max_len: rc.max_len,
            claim_idle: Duration::from_millis(rc.claim_idle_ms),
            timeout: Duration::from_secs(5),
        })
        .await
        .with_context(|| format!("cannot use the redis stream at {}", rc.url))?;
        Some(streams)
    } else {
        None
    };
    let store: Option<Arc<dyn Store>> = if role.writes() || role.queries() {
        let cc = &config.clickhouse;
        let ch = ClickHouseConfig {
            url: cc.url.clone(),
            database: cc.database.clone(),
            user: (!cc.user.is_empty()).then(|| cc.user.clone()),
            password: (!cc.password.is_empty()).then(|| cc.password.clone()),
            timeout: Duration::from_millis(config.query.timeout_ms),
            retries: cc.retries,
            backoff: Duration::from_millis(cc.backoff_ms),
            rollups: match cc.rollups {
                config::RollupsSetting::Auto => Rollups::Auto,
                config::RollupsSetting::Always => Rollups::Always,
                config::RollupsSetting::Never => Rollups::Never,
            },
            cluster: (!cc.cluster.is_empty()).then(|| cc.cluster.clone()),
        };
        let url = cc.url.clone();
        let store = tokio::task::spawn_blocking(move || ClickHouseStore::open(ch))
            .await?
            .with_context(|| format!("cannot open the clickhouse store at {url}"))?;
        Some(Arc::new(store))
    } else {
        None
    };
    let state = Arc::new(app_state(
        &config,
        streams
            .clone()
            .filter(|_| role.ingests())
            .map(queue::Queue::Redis),
        store.clone(),
    )?);
    let upkeep = spawn_metrics_upkeep();
    let draining = Arc::new(AtomicBool::new(false));
    let writer = match (&streams, &store) {
        (Some(streams), Some(store)) if role.writes() => Some(tokio::spawn(
            writer::StreamWriter {
                streams: streams.clone(),
                reader: streams.reader().await?,
                store: store.clone(),
                config: config.writer.clone(),
                draining: draining.clone(),
                failing: state.writer_failing.clone(),
                dead_letter: data_dir.join("dead-letter.tsv"),
                dedup: dedup::Dedup::new(
                    config.ingest.dedup_window_hours,
                    config.ingest.dedup_max_ids,
                ),
                // Writers wait for Redis longer than queries do: a flush must get there.
                flushes: Arc::new(l2::L2::new(
                    cache_redis_url(&config),
                    Duration::from_secs(5),
                    Duration::from_secs(config.cache.l2_ttl_s.max(1)),
                )?),
            }
            .run(),
        )),
        _ => None,
    };
    let follower = state
        .cache
        .l2
        .clone()
        .filter(|_| state.cache.enabled)
        .map(|l2| tokio::spawn(l2.follow(state.cache.flushes.clone())));
    let reload = tokio::spawn(reload_keys(state.clone(), data_dir.clone()));
    let warmer = spawn_warmer(&state);
    tracing::info!(?role, "scale-out role starting");
    run_http(&config, listener, state, shutdown).await?;
    reload.abort();
    upkeep.abort();
    for task in [follower, warmer].into_iter().flatten() {
        task.abort();
    }
    draining.store(true, Ordering::Release);
    if let Some(writer) = writer {
        tracing::info!("http stopped; the writer finishes its batch");
        writer.await?;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Histogram samples are buffered until drained; without a scrape they would pile up.
fn spawn_metrics_upkeep() -> tokio::task::JoinHandle<()> {
    let prometheus = metrics::handle();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            prometheus.run_upkeep();
        }
    })
}

fn app_state(
    config: &Config,
    queue: Option<queue::Queue>,
    store: Option<Arc<dyn Store>>,
) -> anyhow::Result<AppState> {
    let directory = Projects::load(&config.data_dir)?;
    let keys = directory.index();
    let ic = &config.ingest;
    let limits = tally_ingest::Limits {
        max_events: ic.max_events_per_request,
        max_depth: ic.max_depth,
        max_future_skew_s: ic.max_future_skew_secs,
    };
    let segment_limits = tally_ingest::SegmentLimits {
        max_events: ic
            .max_events_per_request
            .max(tally_ingest::SegmentLimits::default().max_events),
        max_depth: ic.max_depth,
        max_future_skew_s: ic.max_future_skew_secs,
        ..Default::default()
    };
    let posthog_limits = tally_ingest::PostHogLimits {
        max_events: ic
            .max_events_per_request
            .max(tally_ingest::PostHogLimits::default().max_events),
        max_depth: ic.max_depth,
        max_future_skew_s: ic.max_future_skew_secs,
        max_decompressed_bytes: ic.max_decompressed_bytes,
        ..Default::default()
    };
    Ok(AppState {
        config: config.clone(),
        keys: RwLock::new(Arc::new(keys)),
        directory: RwLock::new(Arc::new(directory)),
        auth: auth::Auth::open(config),
        queue,
        store,
        limits,
        segment_limits,
        posthog_limits,
        admission: query::Admission::new(config.query.max_concurrent, config.query.max_queued),
        cache: result_cache(config)?,
        writer_starting: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        disk: None,
        writer_failing: Arc::new(AtomicBool::new(false)),
    })
}

/// The query result cache (cache.rs): single-node, this process's writer tells it what
/// changed; scale-out, it follows the writers' flushes in Redis and shares answers
/// there (l2.rs).
fn result_cache(config: &Config) -> anyhow::Result<cache::Cache> {
    let cc = &config.cache;
    let staleness = Duration::from_millis(cc.max_staleness_ms);
    if config.queue.backend != config::QueueBackend::Redis {
        return Ok(cache::Cache::new(cc.enabled, cc.l1_bytes, staleness));
    }
    let enabled = cc.enabled && config.role.queries();
    let cache = cache::Cache::new(enabled, cc.l1_bytes, staleness);
    if !enabled {
        return Ok(cache);
    }
    Ok(cache.shared(Arc::new(l2::L2::new(
        cache_redis_url(config),
        Duration::from_millis(cc.redis_timeout_ms.max(1)),
        Duration::from_secs(cc.l2_ttl_s.max(1)),
    )?)))
}

/// The cache's warmer (query.rs), if this process caches.
fn spawn_warmer(state: &Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    (state.cache.enabled && state.store.is_some() && state.config.cache.warm_keys > 0)
        .then(|| tokio::spawn(query::warm(state.clone())))
}

/// The Redis of the cache: `cache.redis_url`, else the queue's.
fn cache_redis_url(config: &Config) -> &str {
    if config.cache.redis_url.is_empty() {
        &config.redis.url
    } else {
        &config.cache.redis_url
    }
}

/// Serves HTTP until `shutdown`, then lets requests finish for the grace period.
///
/// The accept loop is ours rather than `axum::serve`'s because Tally needs what that one
/// lacks: a header-read timeout, a cap on
/// open connections, and a back-off when `accept` fails for lack of file descriptors
/// (EMFILE) instead of a busy loop that serves nobody.
async fn run_http(
    config: &Config,
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let data_dir = &config.data_dir;
    let addr = listener.local_addr()?;
    let max_connections = connection_cap(config.http.max_connections);
    tracing::info!(%addr, data_dir = %data_dir.display(), max_connections, "tally is listening");
    let app = router(state.clone());
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.http.header_read_timeout_ms));
    // Readiness goes first: /readyz answers 503 from the signal on, and the server keeps
    // serving for `unready_delay_ms` so that load balancers see it before accepting stops.
    let unready_delay = Duration::from_millis(config.http.unready_delay_ms);
    let stopping = state.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.stopping.store(true, Ordering::Release);
        if !unready_delay.is_zero() {
            tracing::info!(
                delay_ms = unready_delay.as_millis() as u64,
                "not ready; serving on before stopping"
            );
            tokio::time::sleep(unready_delay).await;
        }
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: nothing to accept with until a socket
                    // closes. Others (a connection reset before accept) are the
                    // client's; either way wait a little and go on.
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    ::metrics::counter!("tally_http_accept_errors_total").increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(5);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ::metrics::counter!("tally_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone().map_request(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        );
        let conn = http.serve_connection(
            TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let grace = Duration::from_millis(config.http.shutdown_grace_ms);
    // Idle connections close now; requests in flight get `grace` to finish.
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still running after the grace period; stopping anyway");
        }
    }
    Ok(())
}

/// Raises the open-file soft limit to the hard limit (a service manager's default of
/// 1,024 is far below what 10,000 connections need), then fits the connection cap under
/// it, keeping room for the WAL, DuckDB and outgoing connections.
fn connection_cap(wanted: usize) -> usize {
    const RESERVED_FDS: u64 = 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let fits = limit.saturating_sub(RESERVED_FDS).max(16) as usize;
            if fits < wanted {
                tracing::warn!(
                    open_file_limit = limit,
                    max_connections = fits,
                    "http.max_connections lowered to fit the open-file limit"
                );
            }
            wanted.min(fits)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            wanted
        }
    }
}

/// Remembers the ids of events stored within the dedup window, so retries that arrive
/// after a restart are still recognized.
async fn warm_dedup(store: &Arc<DuckStore>, config: &Config) -> anyhow::Result<dedup::Dedup> {
    let window_hours = config.ingest.dedup_window_hours;
    let max_ids = config.ingest.dedup_max_ids;
    let store = store.clone();
    let since = chrono::Utc::now().timestamp_micros() - i64::from(window_hours) * 3_600_000_000;
    tokio::task::spawn_blocking(move || -> anyhow::Result<dedup::Dedup> {
        let mut d = dedup::Dedup::new(window_hours, max_ids);
        if window_hours == 0 {
            return Ok(d);
        }
        let rows = store.query(&Sql {
            text: "SELECT uuid, epoch_us(received_at) FROM events WHERE received_at >= ? \
                   ORDER BY received_at DESC LIMIT ?"
                .into(),
            params: vec![Param::Timestamp(since), Param::Int(max_ids as i64)],
        })?;
        // Oldest first, so the hour buckets fill in order.
        for row in rows.iter().rev() {
            if let (Some(id), Some(at)) = (row[0].as_str(), row[1].as_i64()) {
                if let Ok(id) = uuid::Uuid::parse_str(id) {
                    d.is_duplicate(&id, at);
                }
            }
        }
        tracing::info!(ids = d.len(), window_hours, "dedup window loaded");
        Ok(d)
    })
    .await?
}

/// Picks up projects, keys and users added by the CLI while the server runs.
async fn reload_keys(state: Arc<AppState>, data_dir: std::path::PathBuf) {
    let mut seen: Option<SystemTime> = meta::modified(&data_dir);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = meta::modified(&data_dir);
        if now == seen {
            continue;
        }
        match Projects::load(&data_dir) {
            Ok(p) => {
                *state.keys.write() = Arc::new(p.index());
                *state.directory.write() = Arc::new(p);
                seen = now;
                tracing::info!("reloaded projects, keys and users");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload projects; keeping the previous keys")
            }
        }
    }
}

/// Sets up logging per the config (text or JSON lines on stderr).
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

/// The data folder's projects (for the CLI).
pub fn load_projects(data_dir: &Path) -> anyhow::Result<Projects> {
    Ok(Projects::load(data_dir)?)
}
