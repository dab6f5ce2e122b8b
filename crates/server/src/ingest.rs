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
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tally_ingest::thrivestack::{self, Call};
use tally_ingest::{DecodeError, Decoded, RequestMeta};
use tally_model::EventBatch;
use tally_queue::WalError;

use crate::error::ApiError;
use crate::meta::KeyKind;
use crate::metrics::{EVENTS_ACCEPTED, EVENTS_REJECTED};
use crate::AppState;

/// Bodies above this are decoded on a blocking thread, so a 2 MB batch does not stall
/// the async workers that serve small requests.
const DECODE_INLINE_MAX: usize = 64 * 1024;

pub(crate) async fn track(
    state: State<Arc<AppState>>,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(Call::Track, state, peer, headers, body).await
}

pub(crate) async fn identify(
    state: State<Arc<AppState>>,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(Call::Identify, state, peer, headers, body).await
}

pub(crate) async fn group(
    state: State<Arc<AppState>>,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(Call::Group, state, peer, headers, body).await
}

pub(crate) async fn page(
    state: State<Arc<AppState>>,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(Call::Page, state, peer, headers, body).await
}

async fn ingest(
    call: Call,
    State(state): State<Arc<AppState>>,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let project = state.authenticate(&headers, KeyKind::Write).inspect_err(|e| {
        metrics::counter!("tally_requests_rejected_total", "reason" => e.code).increment(1);
    })?;
    let body = read_body(body, &headers, state.config.ingest.max_body_bytes)
        .await
        .inspect_err(|e| {
            metrics::counter!("tally_requests_rejected_total", "reason" => e.code).increment(1);
        })?;

    let meta = RequestMeta {
        received_at: chrono::Utc::now().timestamp_micros(),
        ip: peer.map(|ConnectInfo(addr)| addr.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let limits = state.limits;
    let decoded = if body.len() <= DECODE_INLINE_MAX {
        thrivestack::decode(call, &body, &meta, &limits)
    } else {
        tokio::task::spawn_blocking(move || thrivestack::decode(call, &body, &meta, &limits))
            .await
            .map_err(ApiError::internal)?
    }
    .map_err(decode_error)?;

    let Decoded { events, rejected } = decoded;
    let accepted = events.len();
    if accepted > 0 {
        let batch = EventBatch { project_id: project, events };
        state
            .wal
            .append(Bytes::from(batch.encode()), accepted as u32)
            .await
            .map_err(|e| queue_error(e, accepted))?;
        metrics::counter!(EVENTS_ACCEPTED).increment(accepted as u64);
    }
    for item in &rejected {
        metrics::counter!(EVENTS_REJECTED, "reason" => reason_of(&item.field)).increment(1);
    }

    if rejected.is_empty() {
        return Ok(Json(json!({ "success": true, "accepted": accepted })).into_response());
    }
    let total = accepted + rejected.len();
    let message = match rejected.first() {
        Some(first) if rejected.len() == 1 => {
            format!("event {} rejected: {}: {}", first.index, first.field, first.message)
        }
        _ => format!("{} of {total} events rejected; see errors", rejected.len()),
    };
    Ok((
        StatusCode::BAD_REQUEST,
        Json(json!({
            "success": false,
            "error": "invalid_events",
            "message": message,
            "accepted": accepted,
            "errors": rejected,
        })),
    )
        .into_response())
}

/// Reads the body, refusing more than `limit` bytes without buffering them.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::bad_request(
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
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over_limit {
                Err(too_large())
            } else {
                Err(ApiError::bad_request("bad_body", format!("could not read the request body: {e}")))
            }
        }
    }
}

fn decode_error(e: DecodeError) -> ApiError {
    let code = match e {
        DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
        DecodeError::EmptyBody | DecodeError::EmptyBatch => "empty_body",
        DecodeError::MalformedJson { .. } => "malformed_json",
        DecodeError::NotArrayOrObject { .. } => "wrong_shape",
        DecodeError::TooManyEvents { .. } => "too_many_events",
        DecodeError::TooDeep { .. } => "too_deep",
    };
    metrics::counter!("tally_requests_rejected_total", "reason" => code).increment(1);
    ApiError::bad_request(code, e.to_string())
}

fn queue_error(e: WalError, events: usize) -> ApiError {
    metrics::counter!("tally_requests_rejected_total", "reason" => "queue_unavailable").increment(1);
    match e {
        WalError::Full { .. } => ApiError::unavailable(
            "queue_full",
            format!("the ingest queue is full; {events} events were not accepted, retry later"),
            1,
        ),
        WalError::Closed => ApiError::unavailable(
            "shutting_down",
            format!("the server is shutting down; {events} events were not accepted, retry"),
            1,
        ),
        other => {
            let mut err = ApiError::unavailable(
                "queue_error",
                format!("the ingest queue could not store the events; {events} events were not accepted, retry"),
                5,
            );
            err.cause = Some(other.to_string());
            err
        }
    }
}

/// A bounded label for a rejected item: the field at fault, without array indexes.
fn reason_of(field: &str) -> &'static str {
    match field.split('.').next().unwrap_or("") {
        "" => "not_an_object",
        "event_name" => "event_name",
        "user_id" => "identity",
        "group_id" | "context" => "ids",
        "timestamp" => "timestamp",
        "properties" | "traits" => "properties",
        _ => "other",
    }
}
