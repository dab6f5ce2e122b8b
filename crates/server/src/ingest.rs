//! Ingest routes: authenticate, read and decode the body, append to the queue, answer.
//!
//! The answer is sent only after the queue has the events durably (see the WAL's fsync
//! policy). Per-item problems do not cost the good items of a request: those are
//! appended and counted in `accepted`, the bad ones listed in `errors`, and the status
//! is 400 so the sender sees that something was refused (rule documented in
//! docs/ingest.md).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use tally_ingest::posthog::{self, PostHogRequest};
use tally_ingest::segment::{self, SegmentCall};
use tally_ingest::thrivestack::{self, Call};
use tally_ingest::{decode_content, DecodeError, ItemError, RequestMeta};
use tally_model::{Event, EventBatch};

use crate::error::ApiError;
use crate::meta::KeyKind;
use crate::metrics::{EVENTS_ACCEPTED, EVENTS_REJECTED};
use crate::queue::AppendError;
use crate::AppState;

/// Bodies above this are decoded on a blocking thread, so a 2 MB batch does not stall
/// the async workers that serve small requests.
const DECODE_INLINE_MAX: usize = 64 * 1024;

pub(crate) async fn track(
    state: State<Arc<AppState>>,
    uri: Uri,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    thrivestack(Call::Track, state, uri, peer, headers, body).await
}

pub(crate) async fn identify(
    state: State<Arc<AppState>>,
    uri: Uri,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    thrivestack(Call::Identify, state, uri, peer, headers, body).await
}

pub(crate) async fn group(
    state: State<Arc<AppState>>,
    uri: Uri,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    thrivestack(Call::Group, state, uri, peer, headers, body).await
}

pub(crate) async fn page(
    state: State<Arc<AppState>>,
    uri: Uri,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    thrivestack(Call::Page, state, uri, peer, headers, body).await
}

async fn thrivestack(
    call: Call,
    State(state): State<Arc<AppState>>,
    uri: Uri,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Browsers' sendBeacon cannot set headers, so the tracker's last flush on page hide
    // may carry the (public) write key as `?api_key=`.
    let query_key = uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "api_key")
            .map(|(_, v)| v.into_owned())
    });
    let key = crate::api_key(&headers).map(str::to_owned).or(query_key);
    let project = state
        .authenticate_with(key.as_deref(), KeyKind::Write)
        .inspect_err(count_refusal)?;
    let body = read_body(
        body,
        &headers,
        state.config.ingest.max_body_bytes,
        StatusCode::BAD_REQUEST,
        state.body_timeout(),
    )
    .await
    .inspect_err(count_refusal)?;
    let meta = request_meta(peer, &headers);
    let limits = state.limits;
    let (encoding, max_inflated) = content_encoding(&state, &headers);
    let decoded = decode_off_thread(body, move |b| {
        let b = decode_content(b, encoding.as_deref(), max_inflated)?;
        thrivestack::decode(call, &b, &meta, &limits)
    })
    .await?
    .map_err(decode_error)?;
    let accepted = accept(&state, project, decoded.events).await?;
    Ok(answer(
        accepted,
        decoded.rejected,
        || json!({ "success": true, "accepted": accepted }),
    ))
}

/// Segment's HTTP Tracking API: `POST /v1/{track,identify,page,screen,group,alias,batch}`.
pub(crate) async fn segment(
    State(state): State<Arc<AppState>>,
    Path(call): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let call = match call.as_str() {
        "batch" | "import" => SegmentCall::Batch,
        name => SegmentCall::of_type(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such Segment call; use /v1/track, identify, page, screen, group, alias or batch",
            )
        })?,
    };
    let limits = state.segment_limits;
    // Read one byte past the batch limit so the decoder can say the body is too large.
    let body = read_body(
        body,
        &headers,
        limits.max_batch_bytes + 1,
        StatusCode::PAYLOAD_TOO_LARGE,
        state.body_timeout(),
    )
    .await
    .inspect_err(count_refusal)?;
    let meta = request_meta(peer, &headers);
    let basic_user = basic_auth_user(&headers);
    let (encoding, max_inflated) = content_encoding(&state, &headers);
    let decoded = decode_off_thread(body, move |b| {
        let b = decode_content(b, encoding.as_deref(), max_inflated)?;
        segment::decode(call, &b, basic_user.as_deref(), &meta, &limits)
    })
    .await?
    .map_err(decode_error)?;
    let project = state
        .project_of_write_key(decoded.write_key.as_deref())
        .inspect_err(count_refusal)?;
    let accepted = accept(&state, project, decoded.decoded.events).await?;
    Ok(answer(
        accepted,
        decoded.decoded.rejected,
        || json!({ "success": true }),
    ))
}

/// PostHog capture: `/e`, `/i/v0/e`, `/capture`, `/track`, `/engage`, `/batch`, GET or
/// POST, with or without a trailing slash.
pub(crate) async fn posthog(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limits = state.posthog_limits;
    let max = limits.max_batch_body_bytes.max(limits.max_body_bytes) + 1;
    let body = read_body(
        body,
        &headers,
        max,
        StatusCode::PAYLOAD_TOO_LARGE,
        state.body_timeout(),
    )
    .await
    .inspect_err(count_refusal)?;
    let meta = request_meta(peer, &headers);
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (content_type, content_encoding) = (
        header(header::CONTENT_TYPE),
        header(header::CONTENT_ENCODING),
    );
    let (path, query) = (uri.path().to_owned(), uri.query().map(str::to_owned));
    let is_get = method == Method::GET;
    let decoded = decode_off_thread(body, move |b| {
        let req = PostHogRequest {
            path: &path,
            method_is_get: is_get,
            query: query.as_deref(),
            content_type: content_type.as_deref(),
            content_encoding: content_encoding.as_deref(),
            body: b,
        };
        posthog::decode(&req, &meta, &limits)
    })
    .await?
    .map_err(decode_error)?;
    let project = state
        .project_of_write_key(decoded.token.as_deref())
        .inspect_err(count_refusal)?;
    let accepted = accept(&state, project, decoded.decoded.events).await?;
    if decoded.beacon && decoded.decoded.rejected.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(answer(
        accepted,
        decoded.decoded.rejected,
        || json!({ "status": 1 }),
    ))
}

/// The request's `Content-Encoding` and the cap on what it may inflate to: the PostHog
/// routes' cap, for every route (the PostHog decoder applies it itself).
fn content_encoding(state: &AppState, headers: &HeaderMap) -> (Option<String>, usize) {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (encoding, state.posthog_limits.max_decompressed_bytes)
}

fn count_refusal(e: &ApiError) {
    metrics::counter!("tally_requests_rejected_total", "reason" => e.code).increment(1);
}

fn request_meta(
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> RequestMeta {
    RequestMeta {
        received_at: chrono::Utc::now().timestamp_micros(),
        ip: peer.map(|Extension(ConnectInfo(addr))| addr.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// Decodes small bodies inline and large ones on a blocking thread.
async fn decode_off_thread<T: Send + 'static>(
    body: Bytes,
    decode: impl FnOnce(&[u8]) -> T + Send + 'static,
) -> Result<T, ApiError> {
    if body.len() <= DECODE_INLINE_MAX {
        Ok(decode(&body))
    } else {
        tokio::task::spawn_blocking(move || decode(&body))
            .await
            .map_err(ApiError::internal)
    }
}

/// The user name of an `Authorization: Basic` header (Segment puts the write key there).
fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map(|(u, _)| u).unwrap_or(&text);
    (!user.is_empty()).then(|| user.to_owned())
}

/// Appends the events durably; returns how many.
async fn accept(state: &AppState, project: String, events: Vec<Event>) -> Result<usize, ApiError> {
    let accepted = events.len();
    if accepted == 0 {
        return Ok(0);
    }
    let batch = EventBatch {
        project_id: project,
        events,
    };
    let queue = state.queue.as_ref().ok_or_else(|| {
        ApiError::wrong_role(
            state.config.role,
            "does not ingest; send events to an ingest process",
        )
    })?;
    if let Some(disk) = state.disk.as_ref().filter(|d| d.low()) {
        metrics::counter!("tally_requests_rejected_total", "reason" => "disk_full").increment(1);
        return Err(ApiError::unavailable(
            "disk_full",
            format!(
                "the data volume has {} bytes free, under the reserve of {} kept for the store \
                 (queue.min_free_bytes); {accepted} events were not accepted, retry later",
                disk.free(),
                disk.reserve()
            ),
            5,
        ));
    }
    let payload = Bytes::from(batch.encode());
    // Freed here, not after the WAL's ack: the task may then run on another worker, and
    // memory freed by another thread than the one that allocated it costs mimalloc more.
    drop(batch);
    queue
        .append(payload, accepted as u32)
        .await
        .map_err(|e| queue_error(e, accepted))?;
    metrics::counter!(EVENTS_ACCEPTED).increment(accepted as u64);
    Ok(accepted)
}

/// 200 with the format's success body, or 400 listing the refused items (the accepted
/// ones are stored either way).
fn answer(accepted: usize, rejected: Vec<ItemError>, success: impl FnOnce() -> Value) -> Response {
    if rejected.is_empty() {
        return Json(success()).into_response();
    }
    for item in &rejected {
        metrics::counter!(EVENTS_REJECTED, "reason" => reason_of(&item.field)).increment(1);
    }
    let total = accepted + rejected.len();
    let message = match rejected.first() {
        Some(first) if rejected.len() == 1 => {
            format!(
                "event {} rejected: {}: {}",
                first.index, first.field, first.message
            )
        }
        _ => format!("{} of {total} events rejected; see errors", rejected.len()),
    };
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "success": false,
            "error": "invalid_events",
            "message": message,
            "accepted": accepted,
            "errors": rejected,
        })),
    )
        .into_response()
}

/// Reads the body, refusing more than `limit` bytes without buffering them; a body over
/// the limit is answered with `too_large_status` (ThriveStack documents 400, Segment and
/// PostHog 413).
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    too_large_status: StatusCode,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            too_large_status,
            "body_too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await;
    let Ok(read) = read else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms (http.body_read_timeout_ms)",
                timeout.as_millis()
            ),
        ));
    };
    match read {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over_limit {
                Err(too_large())
            } else {
                Err(ApiError::bad_request(
                    "bad_body",
                    format!("could not read the request body: {e}"),
                ))
            }
        }
    }
}

fn decode_error(e: DecodeError) -> ApiError {
    let code = match e {
        DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
        DecodeError::EmptyBody | DecodeError::EmptyBatch => "empty_body",
        DecodeError::MalformedJson { .. } => "malformed_json",
        DecodeError::NotArrayOrObject { .. } | DecodeError::BatchNotArray { .. } => "wrong_shape",
        DecodeError::TooManyEvents { .. } => "too_many_events",
        DecodeError::TooDeep { .. } => "too_deep",
        DecodeError::BodyTooLarge { .. } | DecodeError::DecompressedTooLarge { .. } => {
            "body_too_large"
        }
        DecodeError::InvalidGzip { .. }
        | DecodeError::InvalidEncoded { .. }
        | DecodeError::InvalidBase64 { .. }
        | DecodeError::UnsupportedEncoding { .. }
        | DecodeError::UnsupportedCompression { .. }
        | DecodeError::MissingFormData => "bad_encoding",
        DecodeError::InvalidField { .. } => "invalid_field",
        DecodeError::MixedKeys { .. } => "mixed_keys",
    };
    metrics::counter!("tally_requests_rejected_total", "reason" => code).increment(1);
    let status = match e {
        // Formats with a documented 413 (PostHog, Segment) say so; ThriveStack's 2 MB
        // limit is checked before decoding and answered with its documented 400.
        DecodeError::BodyTooLarge { .. } | DecodeError::DecompressedTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, code, e.to_string())
}

fn queue_error(e: AppendError, events: usize) -> ApiError {
    metrics::counter!("tally_requests_rejected_total", "reason" => "queue_unavailable")
        .increment(1);
    match e {
        AppendError::Full => ApiError::unavailable(
            "queue_full",
            format!("the ingest queue is full; {events} events were not accepted, retry later"),
            1,
        ),
        AppendError::Closed => ApiError::unavailable(
            "shutting_down",
            format!("the server is shutting down; {events} events were not accepted, retry"),
            1,
        ),
        AppendError::Other(cause) => {
            let mut err = ApiError::unavailable(
                "queue_error",
                format!("the ingest queue could not store the events; {events} events were not accepted, retry"),
                5,
            );
            err.cause = Some(cause);
            err
        }
    }
}

/// A bounded label for a rejected item: the field at fault, without array indexes.
fn reason_of(field: &str) -> &'static str {
    match field.split('.').next().unwrap_or("") {
        "" => "not_an_object",
        "event_name" | "event" => "event_name",
        "user_id" | "userId" | "anonymousId" | "distinct_id" => "identity",
        "groupId" | "previousId" | "type" => "ids",
        "group_id" | "context" => "ids",
        "timestamp" => "timestamp",
        "properties" | "traits" => "properties",
        _ => "other",
    }
}
