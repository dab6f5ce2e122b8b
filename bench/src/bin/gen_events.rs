//! Writes a realistic product-analytics dataset straight into a Tally DuckDB file, through
//! the store's real insert path ([`Store::insert`], one transaction per batch), for the
//! query benchmark (`bench/query.sh`).
//!
//! The shape of the data, all drawn from one seeded RNG so a seed gives the same events
//! (with `--end` fixed, the same timestamps too):
//!
//! - users belong to one account each (account sizes Zipf-distributed); every user sends
//!   one identify call `{email, plan, country}` and one group call
//!   `{name, plan, employees}` in their first session;
//! - 60 % of users sign up inside the window (a `signup` event in their first session),
//!   the rest existed before it (a `login` event instead); half of the light users churn
//!   some weeks after their first visit;
//! - every event carries the user's device id (as browser SDKs send it); about 30 % of
//!   users start anonymous: their first page views carry only the device id, and from
//!   the sign-up/login on, events carry the user id too, which is how Tally links the
//!   anonymous visits to the person (the other users are signed in from their first
//!   event);
//! - user activity is Zipf-distributed (a few heavy users, a long tail), as are event
//!   names (40, `page_visit` the most common) and pages (500 paths);
//! - events come in sessions (a new `session_id` after 30 idle minutes), sessions start
//!   with a weekly and daily rhythm (quiet weekends and nights, UTC);
//! - track and page events of a signed-in user carry the account's `group_id` (as
//!   ThriveStack's SDK does) and `plan` and `page_path` properties; `purchase` carries an
//!   `amount`.
//!
//! Events are inserted in order of session start, as a live server would receive them,
//! so the table is laid out by time the way production data is. The file is written as
//! `OUT.tmp` and renamed when complete, so an interrupted run never leaves a file that
//! looks finished.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tally_model::{Event, EventBatch, EventType, StoredBatch};
use tally_store::duckdb::{DuckConfig, DuckStore};
use tally_store::Store;
use uuid::Uuid;

// The same allocator as the `tally` binary: these programs build and drop millions of
// small JSON values, across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Generate a benchmark dataset into a Tally DuckDB file.
#[derive(Parser, Debug)]
struct Args {
    /// Events to write, identify and group calls included.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Distinct accounts (groups).
    #[arg(long, default_value_t = 1_000)]
    accounts: u32,
    /// Days of history, ending at `--end`.
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// The DuckDB file to create (must not exist).
    #[arg(long, default_value = "events.duckdb")]
    out: PathBuf,
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Project id of the events.
    #[arg(long, default_value = "bench")]
    project: String,
    /// Events per insert (one store transaction each).
    #[arg(long, default_value_t = 50_000)]
    batch: usize,
    /// End of the time range, RFC 3339 (default: now).
    #[arg(long)]
    end: Option<DateTime<Utc>>,
}

const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// Idle time after which the next event starts a new session.
const SESSION_GAP: i64 = 30 * MINUTE;
/// The longest pause between two events of one session.
const MAX_EVENT_GAP: i64 = 4 * MINUTE;
/// Mean events per session (geometric), and the cap.
const MEAN_SESSION_LEN: f64 = 8.0;
const MAX_SESSION_LEN: u32 = 120;
const NEW_USER_SHARE: f64 = 0.6;
const ANONYMOUS_START_SHARE: f64 = 0.3;

/// Event names by popularity rank (`signup` is not drawn: it is sent once per new user).
const EVENT_NAMES: &[&str] = &[
    "page_visit",
    "feature_used",
    "button_clicked",
    "search_performed",
    "item_viewed",
    "dashboard_loaded",
    "form_submitted",
    "report_viewed",
    "filter_applied",
    "link_clicked",
    "modal_opened",
    "checkout_started",
    "comment_added",
    "file_uploaded",
    "notification_opened",
    "purchase",
    "settings_changed",
    "export_created",
    "invite_sent",
    "project_created",
    "video_played",
    "tab_switched",
    "integration_connected",
    "api_key_created",
    "help_opened",
    "tooltip_viewed",
    "error_shown",
    "profile_updated",
    "team_member_added",
    "plan_upgraded",
    "plan_downgraded",
    "password_reset",
    "logout",
    "login",
    "feedback_submitted",
    "onboarding_step_completed",
    "tour_started",
    "tour_completed",
    "subscription_cancelled",
];

const FEATURES: &[&str] = &[
    "dashboards",
    "funnels",
    "retention",
    "segments",
    "alerts",
    "exports",
    "sql_editor",
    "annotations",
    "cohorts",
    "paths",
    "session_replay",
    "feature_flags",
    "experiments",
    "surveys",
    "webhooks",
    "api",
    "sso",
    "audit_log",
    "custom_domains",
    "scheduled_reports",
];

const BUTTONS: &[&str] = &[
    "save",
    "cancel",
    "share",
    "new",
    "delete",
    "duplicate",
    "refresh",
    "download",
    "upgrade",
    "invite",
    "next",
    "back",
];

/// Pages an anonymous visitor lands on and browses before signing up.
const MARKETING_PAGES: &[&str] = &[
    "/",
    "/pricing",
    "/features",
    "/signup",
    "/blog",
    "/integrations",
    "/customers",
    "/about",
    "/security",
    "/contact",
];

const REFERRERS: &[&str] = &[
    "",
    "google.com",
    "linkedin.com",
    "news.ycombinator.com",
    "twitter.com",
    "github.com",
    "bing.com",
    "reddit.com",
    "duckduckgo.com",
    "producthunt.com",
];

const COUNTRIES: &[(&str, f64)] = &[
    ("US", 35.0),
    ("GB", 10.0),
    ("DE", 9.0),
    ("IN", 8.0),
    ("FR", 6.0),
    ("CA", 5.0),
    ("BR", 5.0),
    ("JP", 4.0),
    ("AU", 4.0),
    ("NL", 3.0),
    ("ES", 3.0),
    ("SE", 2.0),
    ("PL", 2.0),
    ("MX", 2.0),
    ("IT", 2.0),
];

const PLANS: &[(&str, f64)] = &[("free", 60.0), ("pro", 30.0), ("enterprise", 10.0)];

const PRICES: &[f64] = &[29.0, 9.0, 49.0, 99.0, 19.0, 199.0, 499.0, 999.0];

const NAME_HEADS: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Aperture",
    "Pied Piper",
    "Massive",
    "Blue Sun",
    "Northwind",
    "Brightline",
    "Quantum",
    "Sterling",
    "Oceanic",
    "Monarch",
];

const NAME_TAILS: &[&str] = &[
    "Labs",
    "Systems",
    "Corp",
    "Inc",
    "Analytics",
    "Cloud",
    "Works",
    "Dynamics",
    "Software",
    "Group",
];

/// Draws an index with probabilities proportional to fixed weights, by binary search in
/// the precomputed cumulative distribution.
struct Cdf {
    cdf: Vec<f64>,
}

impl Cdf {
    fn from_weights(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        assert!(acc > 0.0, "weights must not all be zero");
        for c in &mut cdf {
            *c /= acc;
        }
        Self { cdf }
    }

    /// Zipf–Mandelbrot over ranks `0..n`: P(k) ∝ 1 / (k + 1 + q)^s. The offset `q`
    /// flattens the head, so the top rank is large but not most of the total.
    fn zipf(n: usize, s: f64, q: f64) -> Self {
        Self::from_weights((0..n).map(|k| 1.0 / (k as f64 + 1.0 + q).powf(s)))
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Relative traffic at a UTC instant: quiet weekends, a daytime peak around 15:00 UTC
/// (Europe's afternoon, America's morning).
fn traffic_weight(micros: i64) -> f64 {
    const WEEKDAY: [f64; 7] = [1.0, 1.05, 1.05, 1.0, 0.85, 0.4, 0.35];
    let days = micros.div_euclid(DAY);
    // 1970-01-01 was a Thursday; index 0 is Monday.
    let weekday = (days + 3).rem_euclid(7) as usize;
    let hour = micros.rem_euclid(DAY) as f64 / HOUR as f64;
    let d = (hour - 15.0).abs();
    let d = d.min(24.0 - d);
    let daily = 0.2 + 0.8 * (-(d * d) / (2.0 * 4.5 * 4.5)).exp();
    WEEKDAY[weekday] * daily
}

/// An instant in `[from, to)` drawn with the weekly and daily rhythm (rejection sampling;
/// gives up on the rhythm after a few tries, which only matters for very short ranges).
fn sample_time(rng: &mut impl Rng, from: i64, to: i64) -> i64 {
    if to <= from {
        return from;
    }
    let mut t = from;
    for _ in 0..32 {
        t = rng.random_range(from..to);
        if rng.random::<f64>() * 1.05 < traffic_weight(t) {
            return t;
        }
    }
    t
}

/// Events in a session: 1 + geometric, mean [`MEAN_SESSION_LEN`].
fn session_len(rng: &mut impl Rng) -> u32 {
    let p = 1.0 / MEAN_SESSION_LEN;
    let u: f64 = 1.0 - rng.random::<f64>();
    let extra = (u.ln() / (1.0 - p).ln()).floor() as u32;
    (1 + extra).min(MAX_SESSION_LEN)
}

fn random_uuid(rng: &mut impl Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

struct Account {
    id: String,
    name: String,
    plan: &'static str,
    employees: u32,
}

struct User {
    id: String,
    device: String,
    account: u32,
    country: &'static str,
    is_new: bool,
    anonymous_start: bool,
    /// When the user first shows up (their sign-up, or first visit in the window).
    first_seen: i64,
    /// After this the user has churned and sends nothing.
    active_until: i64,
}

/// One visit, before it is expanded into events.
#[derive(Clone, Copy)]
struct Session {
    start: i64,
    user: u32,
    /// Track/page events; a first session also sends identify and group calls.
    len: u32,
    first: bool,
}

impl Session {
    fn planned_events(&self) -> u64 {
        u64::from(self.len) + if self.first { 2 } else { 0 }
    }
}

struct World {
    accounts: Vec<Account>,
    users: Vec<User>,
    /// Page paths by popularity rank.
    pages: Vec<String>,
    start: i64,
    end: i64,
}

fn build_world(args: &Args, rng: &mut StdRng, end: i64) -> World {
    let start = end - i64::from(args.days) * DAY;
    let plans = Cdf::from_weights(PLANS.iter().map(|p| p.1));
    let countries = Cdf::from_weights(COUNTRIES.iter().map(|c| c.1));
    let accounts: Vec<Account> = (0..args.accounts)
        .map(|i| {
            let plan = PLANS[plans.sample(rng)].0;
            // Log-uniform head counts, larger for bigger plans.
            let (lo, hi): (f64, f64) = match plan {
                "free" => (1.0, 50.0),
                "pro" => (10.0, 500.0),
                _ => (200.0, 20_000.0),
            };
            let employees = (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp() as u32;
            let name = format!(
                "{} {}",
                NAME_HEADS[rng.random_range(0..NAME_HEADS.len())],
                NAME_TAILS[rng.random_range(0..NAME_TAILS.len())]
            );
            Account {
                id: format!("acct_{i:05}"),
                name,
                plan,
                employees,
            }
        })
        .collect();
    let account_sizes = Cdf::zipf(accounts.len(), 1.0, 10.0);
    // Newcomers need room for a first session before the end.
    let last_join = (end - 2 * HOUR).max(start);
    let regulars_window = (start + 21 * DAY).min(last_join);
    let users = (0..args.users)
        .map(|i| {
            let is_new = rng.random_bool(NEW_USER_SHARE);
            let first_seen = if is_new {
                sample_time(rng, start, last_join)
            } else {
                sample_time(rng, start, regulars_window)
            };
            // The heaviest 5 % never churn; of the rest, half churn after a few weeks.
            let heavy = u64::from(i) * 20 < u64::from(args.users);
            let active_until = if heavy || rng.random_bool(0.5) {
                end
            } else {
                let lifetime = -(1.0 - rng.random::<f64>()).ln() * 30.0 * DAY as f64;
                (first_seen + DAY + lifetime as i64).min(end)
            };
            User {
                id: format!("user_{i:06}"),
                device: random_uuid(rng).to_string(),
                account: account_sizes.sample(rng) as u32,
                country: COUNTRIES[countries.sample(rng)].0,
                is_new,
                anonymous_start: rng.random_bool(ANONYMOUS_START_SHARE),
                first_seen,
                active_until,
            }
        })
        .collect();
    World {
        accounts,
        users,
        pages: page_paths(500),
        start,
        end,
    }
}

/// Plans every session of the dataset: one first session per user, then visits drawn by
/// Zipf user activity, spaced so one user's sessions never overlap, until the planned
/// events reach the target exactly.
fn plan_sessions(world: &World, target: u64, rng: &mut StdRng) -> Vec<Session> {
    // Offset 200: the heaviest user has ~250 times the median user's sessions.
    let activity = Cdf::zipf(world.users.len(), 1.0, 200.0);
    let mut sessions: Vec<Session> = world
        .users
        .iter()
        .enumerate()
        .map(|(i, u)| Session {
            start: u.first_seen,
            user: i as u32,
            len: session_len(rng).max(3),
            first: true,
        })
        .collect();
    let mut last_planned = 0;
    loop {
        let planned: u64 = sessions.iter().map(Session::planned_events).sum();
        if planned >= target {
            break;
        }
        assert!(
            planned > last_planned,
            "cannot fit {target} events: raise --days or --users"
        );
        last_planned = planned;
        // Draw a little more than the deficit: spacing below drops or trims some.
        let mut todo = (target - planned) as f64 * 1.05 + 1.0;
        while todo > 0.0 {
            let user = activity.sample(rng) as u32;
            let u = &world.users[user as usize];
            let from = u.first_seen + SESSION_GAP;
            if from >= u.active_until {
                continue;
            }
            let len = session_len(rng);
            todo -= f64::from(len);
            sessions.push(Session {
                start: sample_time(rng, from, u.active_until),
                user,
                len,
                first: false,
            });
        }
        space_out(&mut sessions, world.end);
    }
    // Trim the excess from random repeat sessions so the total is exact.
    let planned: u64 = sessions.iter().map(Session::planned_events).sum();
    let mut excess = planned - target;
    // First sessions keep their shape; repeat sessions keep at least one event.
    let mut trimmable: u64 = sessions
        .iter()
        .filter(|s| !s.first)
        .map(|s| u64::from(s.len - 1))
        .sum();
    while excess > 0 && trimmable > 0 {
        let i = rng.random_range(0..sessions.len());
        let s = &mut sessions[i];
        if s.first || s.len <= 1 {
            continue;
        }
        let cut = excess.min(u64::from(s.len - 1)) as u32;
        s.len -= cut;
        excess -= u64::from(cut);
        trimmable -= u64::from(cut);
    }
    sessions.sort_by_key(|s| (s.start, s.user));
    if excess > 0 {
        // Tiny targets, smaller than the users' first sessions: drop the latest sessions
        // (a user's later sessions go before their first).
        while excess > 0 {
            let Some(s) = sessions.pop() else { break };
            excess = excess.saturating_sub(s.planned_events());
        }
    }
    sessions
}

/// Pushes each user's sessions apart (at least [`SESSION_GAP`] between the possible end of
/// one and the start of the next), drops those pushed past `end`, and shortens sessions
/// that would run past it.
fn space_out(sessions: &mut Vec<Session>, end: i64) {
    sessions.sort_by_key(|s| (s.user, s.start));
    let mut prev_user = u32::MAX;
    let mut free_at = i64::MIN;
    sessions.retain_mut(|s| {
        if s.user != prev_user {
            prev_user = s.user;
            free_at = i64::MIN;
        }
        s.start = s.start.max(free_at);
        if s.start >= end {
            return false;
        }
        let fits = ((end - 1 - s.start) / MAX_EVENT_GAP + 1) as u32;
        s.len = s.len.min(fits).max(1);
        free_at = s.start + i64::from(s.len - 1) * MAX_EVENT_GAP + SESSION_GAP;
        true
    });
}

/// Turns planned sessions into events.
struct Expander<'a> {
    world: &'a World,
    rng: StdRng,
    names: Cdf,
    pages: Cdf,
    marketing: Cdf,
    referrers: Cdf,
    features: Cdf,
    buttons: Cdf,
    prices: Cdf,
    context: Map<String, Value>,
}

impl<'a> Expander<'a> {
    fn new(world: &'a World, rng: StdRng) -> Self {
        let mut context = Map::new();
        context.insert(
            "library".into(),
            json!({"name": "thrivestack-js", "version": "1.4.2"}),
        );
        Self {
            world,
            rng,
            // With every session opening on a page view, page_visit ends up near 40 %.
            names: Cdf::zipf(EVENT_NAMES.len(), 1.1, 0.0),
            pages: Cdf::zipf(world.pages.len(), 1.0, 2.0),
            marketing: Cdf::zipf(MARKETING_PAGES.len(), 1.0, 0.5),
            referrers: Cdf::zipf(REFERRERS.len(), 1.2, 0.0),
            features: Cdf::zipf(FEATURES.len(), 0.9, 1.0),
            buttons: Cdf::zipf(BUTTONS.len(), 0.9, 1.0),
            prices: Cdf::zipf(PRICES.len(), 1.0, 1.0),
            context,
        }
    }

    fn expand(&mut self, s: &Session, out: &mut Vec<Event>) {
        let world = self.world;
        let user = &world.users[s.user as usize];
        let account = &world.accounts[user.account as usize];
        let session_id = random_uuid(&mut self.rng).to_string();
        // Page views before the sign-up/login moment; only in a first session.
        let before_login = if s.first {
            (1 + self.rng.random_range(0..3)).min(s.len.saturating_sub(2))
        } else {
            0
        };
        let mut ts = s.start;
        let mut page: &str = "/";
        let mut prev: &str = "";
        for k in 0..s.len {
            if k > 0 {
                let u: f64 = self.rng.random();
                ts += 5_000_000 + (u * u * (MAX_EVENT_GAP - 5_000_000) as f64) as i64;
            }
            let signed_in = !(s.first && user.anonymous_start && k < before_login);
            let (kind, name) = if s.first && k == before_login {
                (
                    EventType::Track,
                    if user.is_new { "signup" } else { "login" },
                )
            } else if k == 0 || (s.first && k < before_login) {
                (EventType::Page, "page_visit")
            } else if prev == "checkout_started" && self.rng.random_bool(0.35) {
                (EventType::Track, "purchase")
            } else {
                match EVENT_NAMES[self.names.sample(&mut self.rng)] {
                    "page_visit" => (EventType::Page, "page_visit"),
                    other => (EventType::Track, other),
                }
            };
            let mut properties = Map::new();
            if kind == EventType::Page {
                page = if signed_in && !(s.first && k <= before_login) {
                    &world.pages[self.pages.sample(&mut self.rng)]
                } else {
                    MARKETING_PAGES[self.marketing.sample(&mut self.rng)]
                };
                if k == 0 {
                    let referrer = REFERRERS[self.referrers.sample(&mut self.rng)];
                    if !referrer.is_empty() {
                        properties.insert("referrer".into(), referrer.into());
                    }
                }
            }
            properties.insert("page_path".into(), page.into());
            if signed_in {
                properties.insert("plan".into(), account.plan.into());
            }
            match name {
                "purchase" => {
                    let price = PRICES[self.prices.sample(&mut self.rng)];
                    let quantity = 1 + self.rng.random_range(0..3);
                    properties.insert("amount".into(), (price * f64::from(quantity)).into());
                    properties.insert("currency".into(), "USD".into());
                }
                "feature_used" => {
                    let feature = FEATURES[self.features.sample(&mut self.rng)];
                    properties.insert("feature".into(), feature.into());
                }
                "button_clicked" => {
                    let button = BUTTONS[self.buttons.sample(&mut self.rng)];
                    properties.insert("button".into(), button.into());
                }
                _ => {}
            }
            out.push(self.event(
                kind,
                name,
                user,
                signed_in.then_some(account),
                &session_id,
                ts,
                properties,
                Map::new(),
            ));
            if s.first && k == before_login {
                let traits = json!({
                    "email": format!("{}@{}.example.com", user.id, account.id),
                    "plan": account.plan,
                    "country": user.country,
                });
                let identify = self.event(
                    EventType::Identify,
                    "$identify",
                    user,
                    None,
                    &session_id,
                    ts + 1_000,
                    Map::new(),
                    into_map(traits),
                );
                out.push(identify);
                let traits = json!({
                    "name": account.name,
                    "plan": account.plan,
                    "employees": account.employees,
                });
                let group = self.event(
                    EventType::Group,
                    "$group",
                    user,
                    Some(account),
                    &session_id,
                    ts + 2_000,
                    Map::new(),
                    into_map(traits),
                );
                out.push(group);
            }
            prev = name;
        }
    }

    /// One event of `user`; `account` is set once the user is signed in (it also decides
    /// whether the user id is sent).
    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        kind: EventType,
        name: &str,
        user: &User,
        account: Option<&Account>,
        session_id: &str,
        ts: i64,
        properties: Map<String, Value>,
        traits: Map<String, Value>,
    ) -> Event {
        let signed_in = account.is_some() || kind == EventType::Identify;
        Event {
            uuid: random_uuid(&mut self.rng),
            kind,
            event: name.to_owned(),
            user_id: signed_in.then(|| user.id.clone()),
            // Browser SDKs send the device id with every call, signed in or not.
            device_id: Some(user.device.clone()),
            session_id: Some(session_id.to_owned()),
            group_id: account.map(|a| a.id.clone()),
            previous_id: None,
            timestamp: ts,
            received_at: ts + self.rng.random_range(20_000..2_000_000),
            properties,
            traits,
            context: self.context.clone(),
        }
    }
}

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `n` page paths, the app's and marketing site's main pages first (they are the most
/// visited), then docs, blog posts, projects and reports.
fn page_paths(n: usize) -> Vec<String> {
    let mut paths: Vec<String> = [
        "/dashboard",
        "/app/projects",
        "/",
        "/app/reports",
        "/pricing",
        "/app/analytics",
        "/docs",
        "/settings",
        "/features",
        "/app/team",
        "/blog",
        "/integrations",
        "/app/billing",
        "/changelog",
        "/signup",
        "/login",
        "/customers",
        "/about",
        "/security",
        "/contact",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    const DOC_SECTIONS: &[&str] = &["getting-started", "sdk", "api", "guides", "reference"];
    let mut i = 0;
    while paths.len() < n {
        let section = DOC_SECTIONS[i % DOC_SECTIONS.len()];
        for p in [
            format!("/app/projects/{}", 1000 + i),
            format!("/docs/{section}/topic-{i}"),
            format!("/app/reports/{}", 5000 + i),
            format!("/blog/post-{i}"),
        ] {
            if paths.len() < n {
                paths.push(p);
            }
        }
        i += 1;
    }
    paths
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.users == 0 || args.accounts == 0 || args.days == 0 || args.batch == 0 {
        return Err("--users, --accounts, --days and --batch must be positive".into());
    }
    if args.out.exists() {
        return Err(format!("{} exists; delete it first", args.out.display()).into());
    }
    let end = args.end.unwrap_or_else(Utc::now).timestamp_micros();
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let world = build_world(&args, &mut rng, end);
    let sessions = plan_sessions(&world, args.events, &mut rng);
    let planned: u64 = sessions.iter().map(Session::planned_events).sum();
    eprintln!(
        "planned {} sessions, {planned} events, {} users, {} accounts, {} .. {} ({:.1} s)",
        sessions.len(),
        world.users.len(),
        world.accounts.len(),
        tally_store::duckdb::format_micros(world.start),
        tally_store::duckdb::format_micros(world.end),
        started.elapsed().as_secs_f64()
    );

    let tmp = with_suffix(&args.out, ".tmp");
    let tmp_wal = with_suffix(&tmp, ".wal");
    for stale in [&tmp, &tmp_wal] {
        if stale.exists() {
            std::fs::remove_file(stale)?;
        }
    }
    let store = DuckStore::open(&tmp, DuckConfig::default())?;
    let mut lsn = store.committed_lsn()?;

    // Generation runs on its own thread so it overlaps with DuckDB's inserts.
    // One batch queued while one is built and one inserted bounds memory (~1 KiB/event).
    let (tx, rx) = mpsc::sync_channel::<Vec<Event>>(1);
    let batch = args.batch;
    let expander_rng = StdRng::seed_from_u64(rng.random());
    let mut inserted = 0u64;
    let mut insert_secs = 0.0;
    let generate_secs = std::thread::scope(|scope| -> Result<f64, Box<dyn std::error::Error>> {
        let world = &world;
        let sessions = &sessions;
        let generator = scope.spawn(move || {
            // Time spent building events, not waiting for the inserter.
            let mut busy = 0.0;
            let mut t = Instant::now();
            let mut expander = Expander::new(world, expander_rng);
            let capacity = batch + MAX_SESSION_LEN as usize + 2;
            let mut events = Vec::with_capacity(capacity);
            for s in sessions {
                expander.expand(s, &mut events);
                if events.len() >= batch {
                    let full = std::mem::replace(&mut events, Vec::with_capacity(capacity));
                    busy += t.elapsed().as_secs_f64();
                    if tx.send(full).is_err() {
                        return busy;
                    }
                    t = Instant::now();
                }
            }
            busy += t.elapsed().as_secs_f64();
            if !events.is_empty() {
                let _ = tx.send(events);
            }
            busy
        });
        let mut next_report = 1_000_000;
        for events in rx {
            inserted += events.len() as u64;
            lsn += 1;
            let batch = EventBatch {
                project_id: args.project.clone(),
                events,
            };
            // Encoded and read back as the writer reads a queue record, outside the timing.
            let record = batch.encode();
            let stored = StoredBatch::decode(&record)?;
            let t = Instant::now();
            store.insert(std::slice::from_ref(&stored), lsn)?;
            insert_secs += t.elapsed().as_secs_f64();
            if inserted >= next_report {
                let secs = started.elapsed().as_secs_f64();
                eprintln!("{inserted} events ({:.0} events/s)", inserted as f64 / secs);
                next_report = inserted + 1_000_000;
            }
        }
        Ok(generator
            .join()
            .expect("the generator thread does not panic"))
    })?;
    store.checkpoint()?;
    drop(store);
    std::fs::rename(&tmp, &args.out)?;
    if tmp_wal.exists() {
        std::fs::rename(&tmp_wal, with_suffix(&args.out, ".wal"))?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {inserted} events to {} in {secs:.1} s, {:.0} events/s overall ({:.2} GiB); \
         generating them alone: {:.0} events/s; Store::insert: {insert_secs:.1} s",
        args.out.display(),
        inserted as f64 / secs,
        file_size(&args.out) as f64 / (1u64 << 30) as f64,
        inserted as f64 / generate_secs.max(1e-9),
    );
    Ok(())
}
