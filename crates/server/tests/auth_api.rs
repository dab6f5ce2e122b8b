//! Dashboard sign-in over real HTTP: login, the session cookie on the query API, CSRF,
//! logout, password changes, and the login rate limits.

mod common;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_server::meta::{Projects, UserRole};

const ADMIN: &str = "admin@example.com";
const VIEWER: &str = "viewer@example.com";
const PASSWORD: &str = "correct horse battery";

/// A server with projects `test` and `other`, an admin, and a viewer of `test` only,
/// all in projects.json before it starts. The folder lives as long as the `TempDir`.
async fn server_with_users(
    tweak: impl FnOnce(&mut tally_server::Config),
) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let mut projects = Projects::default();
    let test = projects.create_project("test").unwrap();
    projects.create_project("other").unwrap();
    projects
        .create_user(ADMIN, UserRole::Admin, &[], PASSWORD)
        .unwrap();
    projects
        .create_user(VIEWER, UserRole::Viewer, &["test".into()], PASSWORD)
        .unwrap();
    projects.save(dir.path()).unwrap();
    let mut server = TestServer::launch(dir.path().to_owned(), tweak).await;
    server.write_key = test.write_key;
    server.read_key = test.read_key;
    (dir, server)
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// POST /api/v1/login; returns the status, the cookie pair (name=value) and the body.
async fn login(server: &TestServer, email: &str, password: &str) -> (StatusCode, String, Value) {
    let r = client()
        .post(format!("{}/api/v1/login", server.base))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = r.json().await.unwrap();
    (status, cookie, body)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// POST /api/v1/query?project=... with the cookie and (optionally) the CSRF header.
async fn query_as(
    server: &TestServer,
    cookie: &str,
    csrf: Option<&str>,
    project: &str,
    q: Value,
) -> (StatusCode, Value) {
    let mut req = client()
        .post(format!("{}/api/v1/query?project={project}", server.base))
        .header("cookie", cookie)
        .json(&q);
    if let Some(token) = csrf {
        req = req.header("x-tally-csrf", token);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

fn events_query() -> Value {
    json!({"metrics": ["events"], "date_range": "all"})
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_a_wrong_password_is_refused() {
    let (_dir, server) = server_with_users(|_| {}).await;
    let (status, set_cookie, body) = login(&server, ADMIN, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(set_cookie.starts_with("tally_session="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain http: no Secure, or the browser would drop the cookie: {set_cookie}"
    );
    assert_eq!(body["user"]["email"], ADMIN);
    assert_eq!(body["user"]["role"], "admin");
    let ids: Vec<&str> = body["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["test", "other"], "an admin sees every project");
    assert_eq!(body["projects"][0]["write_key"], server.write_key.as_str());
    assert!(body["csrf_token"].as_str().unwrap().len() >= 40);

    // Email case does not matter; the password does.
    let (status, _, _) = login(&server, "ADMIN@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let (status, set_cookie, body) = login(&server, ADMIN, "correct horse batterY").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_credentials");
    assert_eq!(body["message"], "wrong email or password");
    assert!(set_cookie.is_empty(), "no cookie on a refused login");
    let (status, _, body) = login(&server, "nobody@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["message"], "wrong email or password",
        "an unknown email is refused in the same words"
    );

    // Not JSON of the right shape: a clear 400.
    let r = client()
        .post(format!("{}/api/v1/login", server.base))
        .body("{\"email\": \"a@b\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_login");
    assert!(
        body["message"].as_str().unwrap().contains("password"),
        "{body}"
    );
}

#[tokio::test]
async fn behind_an_https_proxy_the_cookie_is_secure() {
    let (_dir, server) = server_with_users(|_| {}).await;
    let r = client()
        .post(format!("{}/api/v1/login", server.base))
        .header("x-forwarded-proto", "https")
        .json(&json!({"email": ADMIN, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
}

#[tokio::test]
async fn the_cookie_authorizes_queries_for_the_users_projects_only() {
    let (_dir, server) = server_with_users(|_| {}).await;
    let r = server
        .track(json!([{"event_name": "signed_up", "user_id": "u1"}]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    server.wait_for_events(1).await;

    let (_, set_cookie, body) = login(&server, VIEWER, PASSWORD).await;
    let cookie = cookie_pair(&set_cookie);
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let ids: Vec<&str> = body["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["test"], "a viewer sees only their projects");
    assert!(
        body["projects"][0]["write_key"].is_null(),
        "keys are for admins"
    );

    // Same answer as with the read key.
    let (status, by_cookie) = query_as(&server, &cookie, Some(&csrf), "test", events_query()).await;
    assert_eq!(status, StatusCode::OK, "{by_cookie}");
    let by_key = server.query(events_query()).await;
    assert_eq!(by_cookie["results"], by_key.body["results"]);
    assert_eq!(by_cookie["results"][0]["metrics"][0], 1);

    // Another project: refused, and so is a project that does not exist.
    let (status, body) = query_as(&server, &cookie, Some(&csrf), "other", events_query()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "no_access");
    let (status, _) = query_as(&server, &cookie, Some(&csrf), "nope", events_query()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // No project named: a clear 400.
    let r = client()
        .post(format!("{}/api/v1/query", server.base))
        .header("cookie", &cookie)
        .header("x-tally-csrf", &csrf)
        .json(&events_query())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "missing_project");

    // An admin reaches both; a made-up cookie nothing.
    let (_, set_cookie, body) = login(&server, ADMIN, PASSWORD).await;
    let admin = cookie_pair(&set_cookie);
    let admin_csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let (status, body) =
        query_as(&server, &admin, Some(&admin_csrf), "other", events_query()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["metrics"][0], 0);
    let (status, body) = query_as(
        &server,
        "tally_session=forged",
        Some(&csrf),
        "test",
        events_query(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "not_logged_in");

    // GET /api/v1/session says who is in, and gives the CSRF token again.
    let r = client()
        .get(format!("{}/api/v1/session", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["email"], VIEWER);
    assert_eq!(body["csrf_token"], csrf.as_str());
    let r = client()
        .get(format!("{}/api/v1/session", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body["user"].is_null(), "nobody is logged in: {body}");
    assert!(body.get("csrf_token").is_none());
}

#[tokio::test]
async fn cookie_requests_without_the_csrf_token_or_from_another_origin_are_refused() {
    let (_dir, server) = server_with_users(|_| {}).await;
    let (_, set_cookie, body) = login(&server, ADMIN, PASSWORD).await;
    let cookie = cookie_pair(&set_cookie);
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();

    let (status, body) = query_as(&server, &cookie, None, "test", events_query()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "csrf");
    assert!(body["message"].as_str().unwrap().contains("X-Tally-CSRF"));
    let (status, body) = query_as(&server, &cookie, Some("guess"), "test", events_query()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "csrf");

    // The right token, but sent from another site's page.
    let r = client()
        .post(format!("{}/api/v1/query?project=test", server.base))
        .header("cookie", &cookie)
        .header("x-tally-csrf", &csrf)
        .header("origin", "http://evil.example")
        .json(&events_query())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "csrf");
    // From this server's own origin it goes through.
    let r = client()
        .post(format!("{}/api/v1/query?project=test", server.base))
        .header("cookie", &cookie)
        .header("x-tally-csrf", &csrf)
        .header("origin", &server.base)
        .json(&events_query())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Logout is a state change too: without the token the session survives.
    let r = client()
        .post(format!("{}/api/v1/logout", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (status, _) = query_as(&server, &cookie, Some(&csrf), "test", events_query()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the refused logout did not end the session"
    );

    // A login posted from another site is refused before the password is checked.
    let r = client()
        .post(format!("{}/api/v1/login", server.base))
        .header("origin", "http://evil.example")
        .json(&json!({"email": ADMIN, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server_and_a_password_change_ends_them_all() {
    let (_dir, server) = server_with_users(|_| {}).await;
    let (_, set_cookie, body) = login(&server, ADMIN, PASSWORD).await;
    let cookie = cookie_pair(&set_cookie);
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let r = client()
        .post(format!("{}/api/v1/logout", server.base))
        .header("cookie", &cookie)
        .header("x-tally-csrf", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cleared = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cleared.starts_with("tally_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    // The old cookie, replayed (a browser would have dropped it), opens nothing.
    let (status, body) = query_as(&server, &cookie, Some(&csrf), "test", events_query()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "not_logged_in");

    // Sessions are on disk as hashes only, and a password change ends them.
    let (_, set_cookie, body) = login(&server, VIEWER, PASSWORD).await;
    let cookie = cookie_pair(&set_cookie);
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let token = cookie.trim_start_matches("tally_session=");
    let file = std::fs::read_to_string(server.data_dir.join("sessions.json")).unwrap();
    assert!(!file.contains(token), "the cookie's token is not stored");
    let (status, _) = query_as(&server, &cookie, Some(&csrf), "test", events_query()).await;
    assert_eq!(status, StatusCode::OK);
    let mut projects = Projects::load(&server.data_dir).unwrap();
    projects.set_password(VIEWER, "a new password").unwrap();
    projects.save(&server.data_dir).unwrap();
    let mut ended = false;
    for _ in 0..60 {
        let (status, _) = query_as(&server, &cookie, Some(&csrf), "test", events_query()).await;
        if status == StatusCode::UNAUTHORIZED {
            ended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ended, "the session outlived the password change");
}

#[tokio::test]
async fn sessions_survive_a_restart() {
    let (_dir, mut server) = server_with_users(|_| {}).await;
    let (_, set_cookie, body) = login(&server, ADMIN, PASSWORD).await;
    let cookie = cookie_pair(&set_cookie);
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    // Data too, so the restart is a real one (store and WAL reopened).
    let r = server
        .track(json!([{"event_name": "e", "user_id": "u1"}]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    server.wait_for_events(1).await;
    server.stop().await;
    let mut again = TestServer::launch(server.data_dir.clone(), |_| {}).await;
    let (status, body) = query_as(&again, &cookie, Some(&csrf), "test", events_query()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    again.stop().await;
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_email_and_per_address() {
    let (_dir, server) = server_with_users(|c| {
        c.auth.login_attempts_per_email_per_minute = 3;
        c.auth.login_attempts_per_ip_per_minute = 6;
    })
    .await;
    // Three tries for one email, then 429.
    for _ in 0..3 {
        let (status, _, _) = login(&server, ADMIN, "wrong password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let r = client()
        .post(format!("{}/api/v1/login", server.base))
        .json(&json!({"email": ADMIN, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "too_many_requests");
    assert!(
        body["message"].as_str().unwrap().contains("for this email"),
        "{body}"
    );

    // Other emails from the same address: the address's limit (6, of which 4 are
    // spent) runs out too.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let (status, _, body) = login(&server, &format!("user{i}@example.com"), "x").await;
        statuses.push((status, body["message"].as_str().unwrap_or("").to_owned()));
    }
    let limited: Vec<_> = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(limited.len(), 2, "{statuses:?}");
    assert_eq!(statuses[0].0, StatusCode::UNAUTHORIZED, "{statuses:?}");
    assert!(limited[0].1.contains("from this address"), "{statuses:?}");
}

#[tokio::test]
async fn the_dashboard_is_served_at_the_root() {
    let (_dir, server) = server_with_users(|_| {}).await;
    let r = client()
        .get(format!("{}/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = r.text().await.unwrap();
    // Either the built app or the page that says it was not built, never a 404.
    assert!(
        html.contains("<div id=\"app\"") || html.contains("The dashboard was not built"),
        "{html}"
    );
    // Every view of the dashboard is the same page, so a link to one opens cold.
    for view in [
        "/login",
        "/insights/trends",
        "/insights/funnel",
        "/accounts",
        "/events",
        "/people",
        "/settings",
    ] {
        let r = client()
            .get(format!("{}{view}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{view}");
        assert_eq!(r.text().await.unwrap(), html, "{view}");
    }
    let r = client()
        .get(format!("{}/assets/nope.js", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
}

/// A cookie-signed request to a Settings route: GET without a body, POST with one.
async fn settings_call(
    server: &TestServer,
    (cookie, csrf): (&str, Option<&str>),
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("{}{path}", server.base);
    let mut req = match &body {
        Some(b) => client().post(url).json(b),
        None => client().get(url),
    }
    .header("cookie", cookie);
    if let Some(token) = csrf {
        req = req.header("x-tally-csrf", token);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

/// Sends one event to /api/track with `key`; the status.
async fn track_with(server: &TestServer, key: &str) -> StatusCode {
    client()
        .post(format!("{}/api/track", server.base))
        .header("x-api-key", key)
        .json(&json!([{"event_name": "e", "user_id": "u1"}]))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn settings_are_for_admins_and_their_keys_and_users_work_at_once() {
    let (_dir, server) = server_with_users(|_| {}).await;
    let (_, set_cookie, body) = login(&server, ADMIN, PASSWORD).await;
    let admin = cookie_pair(&set_cookie);
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let me = (admin.as_str(), Some(csrf.as_str()));

    // Nobody, a viewer, a read key, and an admin without the CSRF token are refused.
    let (status, body) = settings_call(&server, ("", None), "/api/v1/settings", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, set_cookie, body) = login(&server, VIEWER, PASSWORD).await;
    let viewer = cookie_pair(&set_cookie);
    let viewer_csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let (status, body) = settings_call(&server, (&viewer, None), "/api/v1/settings", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "admin_only");
    let (status, body) = settings_call(
        &server,
        (&viewer, Some(&viewer_csrf)),
        "/api/v1/projects/test/keys",
        Some(json!({"kind": "read"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let r = client()
        .get(format!("{}/api/v1/settings", server.base))
        .header("x-api-key", &server.read_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = settings_call(
        &server,
        (&admin, None),
        "/api/v1/projects",
        Some(json!({"name": "Shop"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "csrf");

    // The listing: projects with write keys and read-key prefixes, users, no secrets.
    let (status, listing) = settings_call(&server, me, "/api/v1/settings", None).await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    assert_eq!(listing["projects"][0]["id"], "test");
    assert_eq!(
        listing["projects"][0]["write_keys"][0],
        server.write_key.as_str()
    );
    let prefix = listing["projects"][0]["read_keys"][0]["prefix"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(server.read_key.starts_with(&prefix));
    let text = listing.to_string();
    assert!(
        !text.contains(&server.read_key) && !text.contains("sha256") && !text.contains("argon2")
    );
    assert_eq!(listing["users"].as_array().unwrap().len(), 2);

    // A new project's keys work at once: ingest with its write key, read with its read key.
    let (status, made) = settings_call(
        &server,
        me,
        "/api/v1/projects",
        Some(json!({"name": "Shop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["project"], "shop");
    assert_eq!(
        track_with(&server, made["write_key"].as_str().unwrap()).await,
        StatusCode::OK
    );
    let (status, body) = settings_call(
        &server,
        me,
        "/api/v1/projects",
        Some(json!({"name": "shop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A second write key; revoking the first refuses it from then on, the second works.
    let (status, key) = settings_call(
        &server,
        me,
        "/api/v1/projects/test/keys",
        Some(json!({"kind": "write"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let second = key["key"].as_str().unwrap().to_owned();
    let (status, body) = settings_call(
        &server,
        me,
        "/api/v1/projects/test/keys/revoke",
        Some(json!({"kind": "write", "key": server.write_key})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        track_with(&server, &server.write_key).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(track_with(&server, &second).await, StatusCode::OK);
    // The read key by its prefix: queries with it are refused.
    let (status, body) = settings_call(
        &server,
        me,
        "/api/v1/projects/test/keys/revoke",
        Some(json!({"kind": "read", "key": prefix})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        server.query(events_query()).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Revoking it again, or in a project that does not exist: 404 saying what.
    let (status, body) = settings_call(
        &server,
        me,
        "/api/v1/projects/test/keys/revoke",
        Some(json!({"kind": "read", "key": prefix})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains(&prefix),
        "{body}"
    );
    let (status, _) = settings_call(
        &server,
        me,
        "/api/v1/projects/nope/keys",
        Some(json!({"kind": "read"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A bad body names the field.
    let (status, body) = settings_call(
        &server,
        me,
        "/api/v1/projects/test/keys",
        Some(json!({"kind": "admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_settings");

    // A user made in Settings logs in with the generated password; removed, their
    // session ends. The last admin cannot be removed.
    let (status, made) = settings_call(
        &server,
        me,
        "/api/v1/users",
        Some(json!({"email": "new@example.com", "role": "viewer", "projects": ["shop"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let password = made["password"].as_str().unwrap().to_owned();
    let (status, set_cookie, body) = login(&server, "new@example.com", &password).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = cookie_pair(&set_cookie);
    let new_csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let (status, _) = query_as(&server, &new, Some(&new_csrf), "shop", events_query()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = settings_call(
        &server,
        me,
        "/api/v1/users",
        Some(json!({"email": "v2@example.com", "role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = settings_call(
        &server,
        me,
        "/api/v1/users/remove",
        Some(json!({"email": "new@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = query_as(&server, &new, Some(&new_csrf), "shop", events_query()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = settings_call(
        &server,
        me,
        "/api/v1/users/remove",
        Some(json!({"email": ADMIN})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Everything is in projects.json, where the CLI and the next start read it.
    let saved = Projects::load(&server.data_dir).unwrap();
    assert_eq!(saved.projects.len(), 3);
    assert_eq!(saved.users.len(), 2);
    let test = saved.projects.iter().find(|p| p.id == "test").unwrap();
    assert_eq!(test.write_keys, [second]);
    assert!(test.read_keys.is_empty());
}
