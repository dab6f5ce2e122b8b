//! Dashboard sign-in: sessions, the login and logout routes, CSRF and rate limits.
//!
//! `POST /api/v1/login` checks an email and password (Argon2id, [`crate::meta`]) and
//! answers with a session cookie, `tally_session`: HttpOnly, `SameSite=Strict`, `Path=/`,
//! and `Secure` when the request came over https (a proxy's `X-Forwarded-Proto: https`
//! or `Forwarded: proto=https`; Tally itself speaks plain HTTP). The cookie holds 32
//! random bytes; the server keeps only their SHA-256, in memory and in
//! `<data_dir>/sessions.json`, so sessions outlive a restart and a copy of the file
//! opens none. A session ends at logout (removed on the server), after
//! `auth.session_ttl_hours`, when its user is removed, or when the user's password
//! changes (the session remembers the password version it started with).
//!
//! Cross-site requests: every state-changing request (POST) authorized by the cookie
//! must carry the header `X-Tally-CSRF` with the session's CSRF token, which the login
//! answer and `GET /api/v1/session` give to the page. Another site cannot read that
//! token, and cannot send a custom header without a CORS preflight, which Tally does not
//! grant for it. On top of that, a request whose `Origin` header names another host than
//! the one it was sent to is refused (login included, against login CSRF); and
//! `SameSite=Strict` keeps browsers from sending the cookie cross-site at all.
//!
//! Login attempts are rate-limited (GCRA, governor) per client IP and per email, each a
//! burst of `auth.login_attempts_per_*_per_minute` refilled evenly over a minute;
//! over it the answer is 429 with `Retry-After`, before the password is even checked.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::Engine;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::meta::{self, Projects, User, UserRole};
use crate::AppState;

pub(crate) const COOKIE: &str = "tally_session";
pub(crate) const CSRF_HEADER: &str = "x-tally-csrf";
pub(crate) const SESSIONS_FILE: &str = "sessions.json";

/// A PHC string of a password no one has, checked when the email is unknown so that an
/// unknown email takes as long to refuse as a wrong password.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    meta::hash_password(&meta::generate_password()).expect("a generated password is long enough")
});

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Session {
    pub email: String,
    pub csrf_token: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    pub password_version: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionsFile {
    /// SHA-256 (hex) of the cookie's token → session.
    sessions: HashMap<String, Session>,
}

/// Sessions and login rate limits, shared by the handlers.
pub(crate) struct Auth {
    sessions: Mutex<HashMap<String, Session>>,
    /// Held while the file is written, so two writes do not interleave.
    file_lock: Mutex<()>,
    path: PathBuf,
    ttl: Duration,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_email: DefaultKeyedRateLimiter<String>,
}

impl Auth {
    /// Loads the sessions file (missing: none; unreadable: none, with a warning, as
    /// everyone can log in again).
    pub(crate) fn open(config: &crate::Config) -> Self {
        let path = config.data_dir.join(SESSIONS_FILE);
        let sessions = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<SessionsFile>(&bytes) {
                Ok(file) => file.sessions,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the sessions file; everyone logs in again");
                    HashMap::new()
                }
            },
            Err(_) => HashMap::new(),
        };
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"));
        let ac = &config.auth;
        Self {
            sessions: Mutex::new(sessions),
            file_lock: Mutex::new(()),
            path,
            ttl: Duration::from_secs(u64::from(ac.session_ttl_hours) * 3600),
            per_ip: RateLimiter::hashmap(per_minute(ac.login_attempts_per_ip_per_minute)),
            per_email: RateLimiter::hashmap(per_minute(ac.login_attempts_per_email_per_minute)),
        }
    }

    /// The live session a request's cookie names, and its user, if both still hold.
    pub(crate) fn session(
        &self,
        headers: &HeaderMap,
        directory: &Projects,
    ) -> Option<(Session, User)> {
        let token = cookie(headers, COOKIE)?;
        let key = sha256_hex(token);
        let session = self.sessions.lock().get(&key).cloned()?;
        if session.expires_at <= now_unix() {
            return None;
        }
        let user = directory.users.iter().find(|u| u.email == session.email)?;
        (user.password_version == session.password_version).then(|| (session, user.clone()))
    }

    /// Starts a session for `user`; returns the cookie's token and the session.
    fn start(&self, user: &User) -> (String, Session) {
        let token = random_token();
        let now = now_unix();
        let session = Session {
            email: user.email.clone(),
            csrf_token: random_token(),
            created_at: now,
            expires_at: now + self.ttl.as_secs() as i64,
            password_version: user.password_version,
        };
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| s.expires_at > now);
        sessions.insert(sha256_hex(&token), session.clone());
        (token, session)
    }

    fn end(&self, headers: &HeaderMap) -> bool {
        match cookie(headers, COOKIE) {
            Some(token) => self.sessions.lock().remove(&sha256_hex(token)).is_some(),
            None => false,
        }
    }

    /// Writes the sessions file atomically (blocking: call off the async workers).
    fn save(&self) -> std::io::Result<()> {
        let _writing = self.file_lock.lock();
        let snapshot = SessionsFile {
            sessions: self.sessions.lock().clone(),
        };
        let dir = self
            .path
            .parent()
            .expect("the sessions file is in the data folder");
        let tmp = dir.join(format!(".{SESSIONS_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&snapshot).expect("sessions serialize"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// 429 when this IP or this email has tried too often.
    fn check_rate(&self, ip: Option<IpAddr>, email: &str) -> Result<(), ApiError> {
        if self.per_ip.len() > 100_000 {
            self.per_ip.retain_recent();
        }
        if self.per_email.len() > 100_000 {
            self.per_email.retain_recent();
        }
        let clock = governor::clock::DefaultClock::default();
        let too_many = |wait: Duration, what: &str| {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u32;
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("too many login attempts {what}; retry in {secs} s"),
            );
            e.retry_after_secs = Some(secs);
            e
        };
        use governor::clock::Clock;
        if let Some(ip) = ip {
            if let Err(not_until) = self.per_ip.check_key(&ip) {
                return Err(too_many(
                    not_until.wait_time_from(clock.now()),
                    "from this address",
                ));
            }
        }
        if let Err(not_until) = self.per_email.check_key(&email.to_owned()) {
            return Err(too_many(
                not_until.wait_time_from(clock.now()),
                "for this email",
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: String,
    password: String,
}

/// `POST /api/v1/login` `{"email", "password"}` → the session cookie, and the user, their
/// projects and the CSRF token as JSON.
pub(crate) async fn login(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_origin(&headers)?;
    let request: LoginRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_login",
            format!("the body must be JSON {{\"email\": ..., \"password\": ...}}: {e}"),
        )
    })?;
    let email = request.email.trim().to_lowercase();
    state
        .auth
        .check_rate(peer.map(|Extension(ConnectInfo(addr))| addr.ip()), &email)?;
    let directory = state.directory.read().clone();
    let user = directory.users.iter().find(|u| u.email == email).cloned();
    let hash = user
        .as_ref()
        .map_or_else(|| DUMMY_HASH.clone(), |u| u.password_hash.clone());
    let password = request.password;
    let matches = tokio::task::spawn_blocking(move || meta::verify_password(&hash, &password))
        .await
        .map_err(ApiError::internal)?;
    let user = match user {
        Some(user) if matches => user,
        _ => {
            ::metrics::counter!("tally_logins_total", "outcome" => "refused").increment(1);
            return Err(
                ApiError::unauthorized("wrong email or password").with_code("invalid_credentials")
            );
        }
    };
    let (token, session) = state.auth.start(&user);
    persist(&state).await?;
    ::metrics::counter!("tally_logins_total", "outcome" => "ok").increment(1);
    tracing::info!(email = %user.email, "user logged in");
    let max_age = state.auth.ttl.as_secs();
    let secure = if came_over_https(&headers) {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    let mut response = Json(session_body(&session, &user, &directory)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /api/v1/logout`: ends the session on the server and clears the cookie. Without
/// a live session it only clears the cookie.
pub(crate) async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let directory = state.directory.read().clone();
    if let Some((session, _)) = state.auth.session(&headers, &directory) {
        check_csrf(&headers, &session)?;
        if state.auth.end(&headers) {
            persist(&state).await?;
        }
    }
    let secure = if came_over_https(&headers) {
        "; Secure"
    } else {
        ""
    };
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut response = Json(json!({ "success": true })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `GET /api/v1/session`: who is logged in, what they may see, and the CSRF token; with
/// no live session `{"success": true, "user": null}`. (200 either way: the dashboard
/// asks on every load, and a 401 there would be logged by browsers as an error.)
pub(crate) async fn current(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let directory = state.directory.read().clone();
    let body = match state.auth.session(&headers, &directory) {
        Some((session, user)) => session_body(&session, &user, &directory),
        None => json!({ "success": true, "user": null, "projects": [] }),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn not_logged_in() -> ApiError {
    ApiError::unauthorized("not logged in, or the session has ended: log in again")
        .with_code("not_logged_in")
}

fn session_body(session: &Session, user: &User, directory: &Projects) -> Value {
    let projects: Vec<Value> = directory
        .projects
        .iter()
        .filter(|p| user.may_see(&p.id))
        .map(|p| {
            // Write keys are public by nature (they sit in web pages), but only an admin
            // handles keys, so only an admin gets one for the set-up snippet.
            let write_key = match user.role {
                UserRole::Admin => p.write_keys.first().cloned(),
                UserRole::Viewer => None,
            };
            json!({ "id": p.id, "name": p.name, "write_key": write_key })
        })
        .collect();
    json!({
        "success": true,
        "user": { "email": user.email, "role": user.role },
        "projects": projects,
        "csrf_token": session.csrf_token,
        "expires_at": chrono::DateTime::from_timestamp(session.expires_at, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    })
}

async fn persist(state: &Arc<AppState>) -> Result<(), ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || state.auth.save())
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("cannot write the sessions file: {e}")))
}

/// A cookie-authorized request that changes state must echo the session's CSRF token.
pub(crate) fn check_csrf(headers: &HeaderMap, session: &Session) -> Result<(), ApiError> {
    check_origin(headers)?;
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !constant_time_eq(sent.as_bytes(), session.csrf_token.as_bytes()) {
        return Err(ApiError::forbidden(
            "a request signed in by the session cookie must send the X-Tally-CSRF header \
             with the csrf_token of the login answer (GET /api/v1/session gives it again)",
        )
        .with_code("csrf"));
    }
    Ok(())
}

/// Refuses a request whose `Origin` is another host than the one it was sent to.
fn check_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host.trim_end_matches('/'));
    let target = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok());
    match (origin_host, target) {
        (Some(o), Some(t)) if o.eq_ignore_ascii_case(t) => Ok(()),
        _ => Err(ApiError::forbidden(
            "cross-site request refused: the Origin header names another site than this server",
        )
        .with_code("csrf")),
    }
}

fn came_over_https(headers: &HeaderMap) -> bool {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    value("x-forwarded-proto").split(',').next().map(str::trim) == Some("https")
        || value("forwarded")
            .split([';', ','])
            .any(|part| part.trim() == "proto=https")
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_found_among_others_and_in_a_second_header() {
        let h = headers(&[("cookie", "a=1; tally_session=tok; b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("tok"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "tally_session=t2")]);
        assert_eq!(cookie(&h, COOKIE), Some("t2"));
        assert_eq!(
            cookie(&headers(&[("cookie", "xtally_session=t")]), COOKIE),
            None
        );
        assert_eq!(
            cookie(&headers(&[("cookie", "tally_session=")]), COOKIE),
            None
        );
    }

    #[test]
    fn origin_must_name_the_host_the_request_went_to() {
        assert!(check_origin(&headers(&[("host", "a.test:8080")])).is_ok());
        assert!(check_origin(&headers(&[
            ("host", "a.test:8080"),
            ("origin", "http://a.test:8080")
        ]))
        .is_ok());
        for bad in ["http://evil.test", "null", "http://a.test:8081"] {
            let err =
                check_origin(&headers(&[("host", "a.test:8080"), ("origin", bad)])).unwrap_err();
            assert_eq!(err.code, "csrf", "{bad}");
        }
        // Behind a proxy the host the browser used is in X-Forwarded-Host.
        assert!(check_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "tally.example.com"),
            ("origin", "https://tally.example.com")
        ]))
        .is_ok());
    }

    #[test]
    fn https_is_read_from_the_proxy_headers() {
        assert!(!came_over_https(&headers(&[])));
        assert!(came_over_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(came_over_https(&headers(&[(
            "x-forwarded-proto",
            "HTTPS, http"
        )])));
        assert!(came_over_https(&headers(&[(
            "forwarded",
            "for=1.2.3.4;proto=https"
        )])));
        assert!(!came_over_https(&headers(&[("x-forwarded-proto", "http")])));
    }

    #[test]
    fn csrf_token_must_match_exactly() {
        let session = Session {
            email: "a@b".into(),
            csrf_token: "secret-token".into(),
            created_at: 0,
            expires_at: i64::MAX,
            password_version: 0,
        };
        assert!(check_csrf(&headers(&[("x-tally-csrf", "secret-token")]), &session).is_ok());
        for bad in ["", "secret-tokeN", "secret-token2"] {
            assert!(check_csrf(&headers(&[("x-tally-csrf", bad)]), &session).is_err());
        }
        assert!(check_csrf(&headers(&[]), &session).is_err());
    }
}
