//! The dashboard's Settings: projects, their keys and the users, for admins.
//!
//! Every route needs an admin's session cookie ([`crate::auth`]); a viewer gets 403
//! `admin_only`, a request without a session 401, and every change (POST) the CSRF
//! check. API keys open nothing here: a read key reads one project's reports, it does
//! not manage keys.
//!
//! - `GET /api/v1/settings`: every project with its write keys and read-key prefixes
//!   (never a read key's hash), and every user (never a password hash).
//! - `POST /api/v1/projects` `{"name"}`: a project with a write and a read key; the read
//!   key is in this answer only.
//! - `POST /api/v1/projects/{id}/keys` `{"kind": "write"|"read"}`: a new key, shown once.
//! - `POST /api/v1/projects/{id}/keys/revoke` `{"kind", "key"}`: a write key by the key,
//!   a read key by its prefix. Requests with it are refused from this answer on.
//! - `POST /api/v1/users` `{"email", "role", "projects"?, "password"?}`: without a
//!   password one is generated and returned, once.
//! - `POST /api/v1/users/remove` `{"email"}`: their sessions end; the last admin stays.
//!
//! Changes go through [`Projects::update`], under the same lock as the CLI, and the
//! server's keys and users are replaced at once rather than at the next reload. Where
//! `projects.json` cannot be written (a read-only Secret in Kubernetes), the answer is
//! 409 `projects_read_only` and says to use the CLI where the file is kept.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth;
use crate::error::ApiError;
use crate::meta::{self, KeyKind, MetaError, Projects, User, UserRole};
use crate::AppState;

/// The admin a request's session belongs to; with `change`, also the CSRF check.
fn admin(state: &AppState, headers: &HeaderMap, change: bool) -> Result<User, ApiError> {
    let directory = state.directory.read().clone();
    let (session, user) = state
        .auth
        .session(headers, &directory)
        .ok_or_else(auth::not_logged_in)?;
    if change {
        auth::check_csrf(headers, &session)?;
    }
    if user.role != UserRole::Admin {
        return Err(ApiError::forbidden(format!(
            "{} is a viewer; settings, keys and users are for admins",
            user.email
        ))
        .with_code("admin_only"));
    }
    Ok(user)
}

fn body<T: DeserializeOwned>(bytes: &Bytes, shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_settings",
            format!("the body must be JSON {shape}: {e}"),
        )
    })
}

/// Applies `change` to projects.json and to the running server.
async fn update<T: Send + 'static>(
    state: &Arc<AppState>,
    change: impl FnOnce(&mut Projects) -> Result<T, MetaError> + Send + 'static,
) -> Result<T, ApiError> {
    let dir = state.config.data_dir.clone();
    let (projects, out) = tokio::task::spawn_blocking(move || Projects::update(&dir, change))
        .await
        .map_err(ApiError::internal)?
        .map_err(meta_error)?;
    *state.keys.write() = Arc::new(projects.index());
    *state.directory.write() = Arc::new(projects);
    Ok(out)
}

fn meta_error(e: MetaError) -> ApiError {
    let message = e.to_string();
    match e {
        MetaError::Io { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "projects_read_only",
            format!(
                "cannot write projects.json ({message}); where it is mounted read-only, \
                 change it with the tally CLI where the file is kept"
            ),
        ),
        MetaError::Parse { .. } => ApiError::internal(message),
        MetaError::NoProject(_) | MetaError::NoUser(_) | MetaError::NoKey { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
        }
        MetaError::Exists(_) | MetaError::UserExists(_) | MetaError::LastAdmin(_) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", message)
        }
        MetaError::BadName
        | MetaError::BadEmail(_)
        | MetaError::ShortPassword
        | MetaError::ViewerWithoutProjects => ApiError::bad_request("invalid_settings", message),
    }
}

pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers, false)?;
    let directory = state.directory.read().clone();
    let projects: Vec<Value> = directory
        .projects
        .iter()
        .map(|p| {
            let read: Vec<Value> = p
                .read_keys
                .iter()
                .map(|k| json!({ "prefix": k.prefix, "created_at": k.created_at }))
                .collect();
            json!({
                "id": p.id,
                "name": p.name,
                "created_at": p.created_at,
                "write_keys": p.write_keys,
                "read_keys": read,
            })
        })
        .collect();
    let users: Vec<_> = directory.users.iter().map(User::summary).collect();
    Ok(Json(
        json!({ "success": true, "projects": projects, "users": users }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProjectRequest {
    name: String,
}

pub(crate) async fn create_project(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let by = admin(&state, &headers, true)?;
    let request: NewProjectRequest = body(&bytes, r#"{"name": "..."}"#)?;
    let made = update(&state, move |p| p.create_project(&request.name)).await?;
    tracing::info!(project = %made.project, by = %by.email, "project created in Settings");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "success": true,
            "project": made.project,
            "write_key": made.write_key,
            "read_key": made.read_key,
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyRequest {
    kind: KeyKind,
}

pub(crate) async fn create_key(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let by = admin(&state, &headers, true)?;
    let request: NewKeyRequest = body(&bytes, r#"{"kind": "write" | "read"}"#)?;
    let kind = request.kind;
    let id = project.clone();
    let key = update(&state, move |p| p.create_key(&id, kind)).await?;
    tracing::info!(%project, kind = kind.name(), by = %by.email, "key created in Settings");
    let prefix: String = key.chars().take(8).collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "success": true, "project": project, "kind": kind.name(), "key": key, "prefix": prefix,
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    kind: KeyKind,
    /// A write key itself, or a read key's prefix.
    key: String,
}

pub(crate) async fn revoke_key(
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let by = admin(&state, &headers, true)?;
    let request: RevokeRequest = body(
        &bytes,
        r#"{"kind": "write" | "read", "key": "<write key or read-key prefix>"}"#,
    )?;
    let kind = request.kind;
    let id = project.clone();
    update(&state, move |p| p.revoke_key(&id, kind, &request.key)).await?;
    tracing::info!(%project, kind = kind.name(), by = %by.email, "key revoked in Settings");
    Ok(Json(json!({ "success": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserRequest {
    email: String,
    role: UserRole,
    #[serde(default)]
    projects: Vec<String>,
    password: Option<String>,
}

pub(crate) async fn create_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let by = admin(&state, &headers, true)?;
    let request: NewUserRequest = body(
        &bytes,
        r#"{"email": "...", "role": "admin" | "viewer", "projects": [...], "password"?: "..."}"#,
    )?;
    let (password, generated) = match request.password {
        Some(p) => (p, false),
        None => (meta::generate_password(), true),
    };
    let secret = password.clone();
    // Hashing takes ~30 ms on purpose; it runs on the blocking pool with the update.
    let made = update(&state, move |p| {
        p.create_user(&request.email, request.role, &request.projects, &secret)
    })
    .await?;
    tracing::info!(email = %made.email, by = %by.email, "user created in Settings");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "success": true,
            "user": made,
            "password": generated.then_some(password),
        })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveUserRequest {
    email: String,
}

pub(crate) async fn remove_user(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let by = admin(&state, &headers, true)?;
    let request: RemoveUserRequest = body(&bytes, r#"{"email": "..."}"#)?;
    let email = request.email.clone();
    update(&state, move |p| p.remove_user(&request.email)).await?;
    tracing::info!(%email, by = %by.email, "user removed in Settings");
    Ok(Json(json!({ "success": true })))
}
