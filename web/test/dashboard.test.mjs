// The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against a real Tally server that scripts/web-test.sh started and
// seeded with projects and users. This test sends the events itself, works out the
// Overview's numbers by hand below, and checks the screen against them and against the
// query API's answers for the same queries.
//
// The Insights pages (trends, funnel, retention) read a second dataset, of signed-in
// people in the project "app", worked out by hand below too.
//
// Env: TALLY_URL, SHOP_WRITE_KEY, SHOP_READ_KEY, BLOG_WRITE_KEY, APP_WRITE_KEY,
// APP_READ_KEY, ADMIN_EMAIL, VIEWER_EMAIL, PASSWORD, ARTIFACTS (screenshot folder).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE = require.resolve('axe-core/axe.min.js');
const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`web test: ${name} is not set (run scripts/web-test.sh)`);
  return v;
};
const URL_ = env('TALLY_URL');
const ARTIFACTS = env('ARTIFACTS');
const PASSWORD = env('PASSWORD');

// --- the dataset -------------------------------------------------------------------
// Days are UTC days before today (the browser runs in UTC too). "7d" is today and the
// six days before; its previous period the seven days before that.
const DAY = 86_400_000;
const todayStart = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
const at = (daysAgo, hh, mm = 0) => new Date(todayStart - daysAgo * DAY + (hh * 60 + mm) * 60_000).toISOString();
const CHROME = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36';
const FIREFOX = 'Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0';
const IPHONE = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1';
const ev = (device, session, ts, name, page, extra = {}) => ({
  event_name: name,
  user_id: '',
  ...(ts ? { timestamp: ts } : {}),
  context: { device_id: device, session_id: session, ...(extra.context ?? {}) },
  properties: { ...(page ? { page_url: `https://shop.example${page}` } : {}), ...(extra.properties ?? {}) },
});
const EVENTS = [
  // A: one visit of 10 minutes, two pages and a sign-up, from Google, Germany, Chrome.
  ev('dA', 'sA', at(2, 10), 'page_visit', '/home', { properties: { page_referrer: 'https://www.google.com/' }, context: { country: 'DE', user_agent: CHROME } }),
  ev('dA', 'sA', at(2, 10, 5), 'page_visit', '/pricing', { context: { country: 'DE', user_agent: CHROME } }),
  ev('dA', 'sA', at(2, 10, 10), 'signed_up', null, { context: { country: 'DE', user_agent: CHROME } }),
  // B: one page (a bounce), from a newsletter, US, Firefox.
  ev('dB', 'sB', at(1, 12), 'page_visit', '/home', { properties: { utm_source: 'newsletter' }, context: { country: 'US', user_agent: FIREFOX } }),
  // C: two pages two minutes apart, direct, Germany, an iPhone.
  ev('dC', 'sC', at(3, 9), 'page_visit', '/pricing', { context: { country: 'DE', user_agent: IPHONE } }),
  ev('dC', 'sC', at(3, 9, 2), 'page_visit', '/docs', { context: { country: 'DE', user_agent: IPHONE } }),
  // F: here right now (the live count), one page, US.
  ev('dF', 'sF', null, 'page_visit', '/home', { context: { country: 'US' } }),
  // D and E: the previous period, one bounce each.
  ev('dD', 'sD', at(9, 10), 'page_visit', '/home', { context: { country: 'FR' } }),
  ev('dE', 'sE', at(9, 11), 'page_visit', '/home', { context: { country: 'FR' } }),
];

// Worked out by hand from EVENTS.
// 7d: visitors A B C F = 4; visits 4; pageviews 2+1+2+1 = 6; views per visit 1.5;
// bounce: B and F of 4 = 50 %; duration (600 + 0 + 120 + 0) / 4 = 180 s.
// Previous 7 days: D and E: 2 visitors, 2 visits, 2 pageviews, 1 view per visit, 100 %
// bounce, 0 s; so visitors +100 %, pageviews +200 %, views per visit +50 %, bounce -50 %,
// duration: no change figure (from 0).
const HAND_7D = { visitors: 4, visits: 4, pageviews: 6, views_per_visit: 1.5, bounce_rate: 50, visit_duration: 180 };
const HAND_7D_CHANGE = { visitors: 100, visits: 100, pageviews: 200, views_per_visit: 50, bounce_rate: -50, visit_duration: 'none' };
// 28d: all six visitors: 6 visits, 8 pageviews, 8/6 = 1.33, bounces B F D E = 4/6 = 67 %,
// duration 720 / 6 = 120 s.
const HAND_28D = { visitors: 6, visits: 6, pageviews: 8, views_per_visit: 1.33, bounce_rate: 67, visit_duration: 120 };
// 7d top pages by visitors, ties by name: /home (B, A, F), /pricing (A, C), /docs (C).
const HAND_7D_PAGES = [['/home', 3, 3], ['/pricing', 2, 2], ['/docs', 1, 1]];
// 7d with the page filter /pricing: the visitors who saw it, A and C.
const HAND_7D_PRICING_VISITORS = 2;
// A custom range, 13 to 7 days ago (both included): D and E only (9 days ago), one
// bounced visit of one page each; the 7 days before it had nothing, so no change figure.
const HAND_CUSTOM = { visitors: 2, visits: 2, pageviews: 2, views_per_visit: 1, bounce_rate: 100, visit_duration: 0 };
const HAND_CUSTOM_CHANGE = Object.fromEntries(Object.keys(HAND_CUSTOM).map((k) => [k, 'none']));
// The live stream (project shop, the last 30 minutes): F's page view, sent when the test
// starts; then G's "live_check" (not a page view), sent while the page is open.
const LIVE_EVENT = { event_name: 'live_check', user_id: '', context: { device_id: 'dG', session_id: 'sG', country: 'US' }, properties: { page_url: 'https://shop.example/live' } };
const KPI_METRICS = ['visitors', 'visits', 'pageviews', 'views_per_visit', 'bounce_rate', 'visit_duration'];

// --- the product dataset (project "app"): four people in the last 7 days, one before ---
const day = (daysAgo) => new Date(todayStart - daysAgo * DAY).toISOString().slice(0, 10);
const uev = (user, ts, name, country, properties = {}) => ({
  event_name: name,
  user_id: user,
  timestamp: ts,
  context: { device_id: `d-${user}`, session_id: `s-${user}-${ts.slice(0, 10)}`, country },
  properties,
});
const APP_EVENTS = [
  // u1 (DE) converts in 20 minutes and comes back on days 5 and 3 ago.
  uev('u1', at(6, 10), 'page_visit', 'DE', { page_url: 'https://app.example/pricing' }),
  uev('u1', at(6, 10, 5), 'signed_up', 'DE'),
  uev('u1', at(6, 10, 20), 'purchase', 'DE', { amount: 30 }),
  uev('u1', at(5, 11), 'feature_used', 'DE'),
  uev('u1', at(3, 11), 'feature_used', 'DE'),
  // u2 (DE) signs up 22 hours after the visit, never buys, comes back a day later.
  uev('u2', at(6, 11), 'page_visit', 'DE', { page_url: 'https://app.example/pricing' }),
  uev('u2', at(5, 9), 'signed_up', 'DE'),
  uev('u2', at(4, 15), 'feature_used', 'DE'),
  // u3 (US) only visits.
  uev('u3', at(4, 9), 'page_visit', 'US', { page_url: 'https://app.example/home' }),
  // u4 (US) signs up 10 minutes after the visit.
  uev('u4', at(3, 12), 'page_visit', 'US', { page_url: 'https://app.example/home' }),
  uev('u4', at(3, 12, 10), 'signed_up', 'US'),
  // u5 (FR): the previous 7 days only.
  uev('u5', at(10, 9), 'page_visit', 'FR', { page_url: 'https://app.example/home' }),
  uev('u5', at(10, 9, 30), 'signed_up', 'FR'),
  // u6: 20 days ago only, out of every period below but the accounts' 30 days.
  uev('u6', at(20, 9), 'page_visit', 'FR', { page_url: 'https://app.example/home' }),
];
// Accounts: u1 u2 in acme, u3 u4 in globex, u6 in initech (the events' group id); u5 in
// none.
const ACCOUNT_OF = { u1: 'acme', u2: 'acme', u3: 'globex', u4: 'globex', u6: 'initech' };
for (const e of APP_EVENTS) if (ACCOUNT_OF[e.user_id]) e.context.group_id = ACCOUNT_OF[e.user_id];
// Trends, 7d by day (6 days ago first, today last):
//   A = signed_up, total: u1 d6, u2 d5, u4 d3 → 3; previous 7 days u5 → 1: +200 %.
//   B = page_visit, unique: u1 u2 d6, u3 d4, u4 d3 → 4; previous u5 → 1: +300 %.
//   A / B * 100 per day: 1/2, 1/0, 0/1, 1/1, then 0/0: 50, null, 0, 100, null ×3; over
//   the range 3/4 → 75; previous 1/1 → 100: -25 %.
const HAND_TRENDS = [
  ['A: signed_up (Total events)', 3, 1, 200, 1, 1, 0, 1, 0, 0, 0],
  ['B: page_visit (Unique people)', 4, 1, 300, 2, 0, 1, 1, 0, 0, 0],
];
const HAND_TRENDS_FORMULA = ['Formula: A / B * 100', 75, 100, -25, 50, null, 0, 100, null, null, null];
// By country, totals: A: DE u1 u2 = 2, US u4 = 1; B: DE 2, US 2; formula DE 2/2, US 1/2.
const HAND_TRENDS_BY_COUNTRY = { 'A|DE': 2, 'A|US': 1, 'B|DE': 2, 'B|US': 2, 'formula|DE': 100, 'formula|US': 50 };
// Funnel page_visit → signed_up → purchase over 7d, 14-day window: 4 visit; u1, u2, u4
// sign up (after 300, 79,200 and 600 s: median 600, mean 26,700); u1 buys 900 s later.
const HAND_FUNNEL = [
  [1, 'page_visit', 4, 100, 100, 0, null, null],
  [2, 'signed_up', 3, 75, 75, 1, 600, 26700],
  [3, 'purchase', 1, 25, 33.33, 2, 900, 900],
];
// With a 1-hour window u2's sign-up is too late: 4 → 2 → 1. By country (first touch):
// DE u1 u2: 2 → 1 → 1; US u3 u4: 2 → 1 → 0.
const HAND_FUNNEL_1H_COUNTS = [4, 2, 1];
const HAND_FUNNEL_1H_BY_COUNTRY = { All: [4, 2, 1], DE: [2, 1, 1], US: [2, 1, 0] };
// Retention, first-time signed_up, back for any event, by day, 4 intervals, 7d: cohorts
// of 6 days ago to today; an interval that has not begun is left out.
//   d6: u1, back d5 and d3 (intervals 1, 3); d5: u2, back d4 (1); d3: u4, never back.
const HAND_RETENTION = [
  [day(6), 1, [1, 1, 0, 1]],
  [day(5), 1, [1, 1, 0, 0]],
  [day(4), 0, [0, 0, 0, 0]],
  [day(3), 1, [1, 0, 0, 0]],
  [day(2), 0, [0, 0, 0]],
  [day(1), 0, [0, 0]],
  [day(0), 0, [0]],
];
// Recurring, any event: a cohort per day someone was active in.
//   d6: u1 u2; d5: both back (u1 feature, u2 sign-up); d4: u2; d3: u1.
//   d5: u1 u2; d4: u2; d3: u1; d2: nobody.  d4: u2 u3, neither back.  d3: u1 u4, neither.
const HAND_RETENTION_RECURRING = [
  [day(6), 2, [2, 2, 1, 1]],
  [day(5), 2, [2, 1, 1, 0]],
  [day(4), 2, [2, 0, 0, 0]],
  [day(3), 2, [2, 0, 0, 0]],
  [day(2), 0, [0, 0, 0]],
  [day(1), 0, [0, 0]],
  [day(0), 0, [0]],
];

// Lifecycle, any event, by day over 7d (6 days ago first): active d6 u1 u2 (new), d5 u1
// u2 (returning), d4 u2 (returning) u3 (new) with u1 dormant, d3 u1 (resurrecting) u4
// (new) with u2 u3 dormant, d2 nobody with u1 u4 dormant.
//   [new, returning, resurrecting, dormant, active]
const HAND_LIFECYCLE = [
  [day(6), 2, 0, 0, 0, 2],
  [day(5), 0, 2, 0, 0, 2],
  [day(4), 1, 1, 0, -1, 2],
  [day(3), 1, 0, 1, -2, 2],
  [day(2), 0, 0, 0, -2, 0],
  [day(1), 0, 0, 0, 0, 0],
  [day(0), 0, 0, 0, 0, 0],
];
// Stickiness: u1 (d6 d5 d3) and u2 (d6 d5 d4) 3 days, u3 and u4 1 day: 4 people.
const HAND_STICKINESS = [[1, 2, 50], [2, 0, 0], [3, 2, 50], [4, 0, 0], [5, 0, 0], [6, 0, 0], [7, 0, 0]];
// Accounts over 7d, most events first: acme (u1 5 + u2 3 events, 2 users, first seen 6
// days ago: New), globex (1 + 2, 2 users, New), initech (u6 20 days ago: no events in
// the period, not new: Inactive). [id, users, events, health]
const HAND_ACCOUNTS = [['acme', 2, 8, 'New'], ['globex', 2, 3, 'New'], ['initech', 0, 0, 'Inactive']];
// The previous period is the 7 days before (13 to 7 days ago): nobody's events but u5's,
// who has no account; u6's event 20 days ago is older, so no account had any and none
// has a trend. [previous_events, trend]
const HAND_ACCOUNTS_PREVIOUS = [[0, null], [0, null], [0, null]];
// Paths from the first sign-up in 7d, what came next, 3 steps: u1 signed up (d6), then
// purchase, feature_used (d5), feature_used (d3); u2 (d5) then feature_used (d4); u4 (d3)
// nothing after. 3 people; ties (1 each) by from, then to. [step, from, to, people, %]
const HAND_PATHS = [
  [1, 'signed_up', 'feature_used', 1, 33.33],
  [1, 'signed_up', 'purchase', 1, 33.33],
  [2, 'purchase', 'feature_used', 1, 33.33],
  [3, 'feature_used', 'feature_used', 1, 33.33],
];
// What led there, 1 step: each of the three visited first.
const HAND_PATHS_PREVIOUS = [[1, 'signed_up', 'page_visit', 3, 100]];
// acme's page over 7d: New (first seen 6 days ago, the first event of u1; within 14
// days of today), 8 events, none before; u1 5 events on 3 days (d6 d5 d3), u2 3 on 3
// (d6 d5 d4). initech: Inactive (u6 only, 20 days ago), nobody in the period.
const HAND_ACME = { users: 2, events: 8, previous_events: 0, trend: null };
const HAND_ACME_PEOPLE = [['u1', 5, 3], ['u2', 3, 3]];
// acme's activity per day over 7d: d6 u1 ×3 + u2 ×1, d5 u1 + u2, d4 u2, d3 u1, then none.
const HAND_ACME_ACTIVITY = [[day(6), 4, 2], [day(5), 2, 2], [day(4), 1, 1], [day(3), 1, 1], [day(2), 0, 0], [day(1), 0, 0], [day(0), 0, 0]];
// u1's page over 7d: 5 events, newest first; device d-u1 linked by the first (each
// event has both ids); account acme, named on every event; no identify call, no traits.
const HAND_U1_TIMELINE = [
  [at(3, 11), 'feature_used'], [at(5, 11), 'feature_used'], [at(6, 10, 20), 'purchase'],
  [at(6, 10, 5), 'signed_up'], [at(6, 10), 'page_visit'],
].map(([t, e]) => [t.slice(0, 19).replace('T', ' '), e]);
const ACCOUNT_COLUMNS = ['account_id', 'name', 'health', 'users', 'dau', 'wau', 'mau', 'stickiness', 'events', 'previous_events', 'trend', 'last_active'];

async function api(path, { key, body, method = 'POST' } = {}) {
  const r = await fetch(`${URL_}${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(key ? { 'x-api-key': key } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await r.json();
  assert.ok(r.ok, `${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}
const shopQuery = (body) => api('/api/v1/query', { key: env('SHOP_READ_KEY'), body: { timezone: 'UTC', ...body } });

const appQuery = (body) => api('/api/v1/query', { key: env('APP_READ_KEY'), body: { timezone: 'UTC', ...body } });

async function seedOne(writeKey, run, events) {
  const r = await api('/api/track', { key: writeKey, body: events });
  assert.equal(r.accepted, events.length, JSON.stringify(r));
  const deadline = Date.now() + 15_000;
  for (;;) {
    const q = await run({ metrics: ['events'], date_range: 'all' });
    if (q.results[0].metrics[0] >= events.length) {
      assert.equal(q.results[0].metrics[0], events.length);
      return;
    }
    assert.ok(Date.now() < deadline, 'the events did not reach the store within 15 s');
    await new Promise((r) => setTimeout(r, 100));
  }
}
async function seed() {
  await seedOne(env('SHOP_WRITE_KEY'), shopQuery, EVENTS);
  await seedOne(env('APP_WRITE_KEY'), appQuery, APP_EVENTS);
}

// --- the browser -------------------------------------------------------------------
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** What went wrong in the page: console errors, page errors, failed requests and error
 * answers. `allow` takes out the ones a step expects (a refused login). */
function watch(page) {
  const problems = [];
  page.on('console', (m) => m.type() === 'error' && problems.push({ kind: 'console', text: m.text(), url: m.location()?.url ?? '' }));
  page.on('pageerror', (e) => problems.push({ kind: 'pageerror', text: String(e) }));
  page.on('requestfailed', (r) => problems.push({ kind: 'requestfailed', text: `${r.method()} ${r.url()} ${r.failure()?.errorText}` }));
  page.on('response', (r) => r.status() >= 400 && problems.push({ kind: 'http', status: r.status(), text: `${r.request().method()} ${r.url()} → ${r.status()}`, url: r.url() }));
  return problems;
}

async function axe(page, name) {
  await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }));
  });
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad, [], `${name}: serious or critical accessibility violations`);
  return violations.length;
}

/** Waits until the page has no request of its own in flight (api.ts counts them). */
const quiet = (page) => page.waitForFunction(() => document.documentElement.dataset.pending === '0');

async function shot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** The headline numbers on screen, once loaded: {metric: value}, and their changes. */
async function readKpis(page) {
  await page.waitForFunction(() => document.querySelectorAll('.kpi[data-value]').length === 6 && !document.querySelector('.kpi.loading'));
  return page.evaluate(() => {
    const values = {};
    const changes = {};
    for (const el of document.querySelectorAll('.kpi')) {
      values[el.dataset.metric] = Number(el.dataset.value);
      const c = el.querySelector('.kpi-change')?.dataset.change;
      if (c !== undefined) changes[el.dataset.metric] = c === 'none' ? 'none' : Number(c);
    }
    return { values, changes };
  });
}

async function readTable(page, id) {
  await page.waitForSelector(`#table-${id} table, #table-${id} .empty`);
  return page.$$eval(`#table-${id} tbody tr`, (rows) =>
    rows.map((r) => [r.dataset.key, ...[...r.querySelectorAll('td[data-value]')].map((td) => Number(td.dataset.value))]),
  );
}

const apiKpis = async (range, filters = []) => {
  const r = await shopQuery({ metrics: KPI_METRICS, date_range: range, filters, compare: 'previous_period' });
  const row = r.results[0];
  const values = Object.fromEntries(KPI_METRICS.map((m, i) => [m, row.metrics[i]]));
  const changes = Object.fromEntries(KPI_METRICS.map((m, i) => [m, row.comparison.change[i] ?? 'none']));
  return { values, changes };
};

/** A table as its cells' raw values (data-value): numbers as numbers, null as null. */
async function readGrid(page, selector) {
  await page.waitForSelector(selector);
  return page.$$eval(`${selector} tbody tr`, (rows) =>
    rows.map((r) =>
      [...r.children].map((c) => {
        const v = c.dataset.value;
        if (v === 'null') return null;
        return v !== '' && !Number.isNaN(Number(v)) ? Number(v) : v;
      }),
    ),
  );
}
const rowKeys = (page, selector) => page.$$eval(`${selector} tbody tr`, (rows) => rows.map((r) => r.dataset.key));
const headers = (page, selector) => page.$$eval(`${selector} thead th`, (ths) => ths.map((t) => t.textContent));

/** Waits until the page's requests are done and `selector` is drawn. */
async function settled(page, selector) {
  await quiet(page);
  await page.waitForSelector(selector);
  await quiet(page);
}

/** RFC 4180, enough for the exports: quoted fields, doubled quotes, CRLF. */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') (field += '"'), i++;
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') row.push(field), (field = '');
    else if (c === '\r' && text[i + 1] === '\n') row.push(field), rows.push(row), (row = []), (field = ''), i++;
    else field += c;
  }
  assert.equal(field, '', 'the CSV ends with a line break');
  return rows;
}

async function downloadCsv(page, button, name = /^tally-[a-z]+-app-7d\.csv$/) {
  const [download] = await Promise.all([page.waitForEvent('download'), page.click(button)]);
  assert.match(download.suggestedFilename(), name);
  return parseCsv(readFileSync(await download.path(), 'utf8'));
}
const asCsv = (rows) => rows.map((r) => r.map((v) => (v === null ? '' : String(v))));

/** Opens `url` in a fresh tab of the same session and hands its page to `read`. */
async function reopen(context, url, read) {
  const tab = await context.newPage();
  const problems = watch(tab);
  try {
    await tab.goto(url);
    const out = await read(tab);
    await quiet(tab);
    assert.deepEqual(problems, [], `no error reopening ${url}`);
    return out;
  } finally {
    await tab.close();
  }
}

const TRENDS_TABLE = '#trends-table';
/** The trends table's numbers (every column but the series' and breakdown's names) as
 * the query API answers them, with the previous period `previous` for the compare. */
async function apiTrends(body, previous, breakdown = false) {
  const now = await appQuery({ kind: 'trends', date_range: '7d', ...body });
  const before = await appQuery({ kind: 'trends', date_range: previous, ...body });
  const rows = (r) => [
    ...r.results.map((x) => ({ key: [x.series, ...x.breakdown].join('|'), total: x.total, data: x.data })),
    ...(r.formula?.results ?? []).map((x) => ({ key: ['formula', ...x.breakdown].join('|'), total: x.total, data: x.data })),
  ];
  const prev = new Map(rows(before).map((x) => [x.key, x.total]));
  return rows(now).map((x) => {
    const p = prev.get(x.key) ?? 0;
    const change = p === 0 || x.total === null ? null : Math.round(((x.total - p) / p) * 10_000) / 100;
    return [x.key, x.total, p, change, ...x.data];
  });
}
const numbersOf = (grid, keys, nameCols) => grid.map((r, i) => [keys[i], ...r.slice(nameCols)]);

const apiFunnelRows = (r) =>
  r.results.flatMap((g) =>
    g.steps.map((s) => [
      s.step + 1,
      s.event,
      ...(g.breakdown === null && r.results.length === 1 ? [] : [g.breakdown === null ? 'All' : g.breakdown]),
      s.count,
      s.conversion_rate,
      s.step_conversion_rate,
      s.dropped,
      s.median_time_to_convert_s,
      s.avg_time_to_convert_s,
    ]),
  );

async function readRetention(page) {
  await page.waitForSelector('#retention-table');
  return page.$$eval('#retention-table tbody tr', (rows) =>
    rows.map((r) => [r.dataset.key, Number(r.dataset.size), [...r.querySelectorAll('td.cell')].map((td) => Number(td.dataset.count))]),
  );
}
const readRetentionPct = (page) =>
  page.$$eval('#retention-table tbody tr', (rows) => rows.map((r) => [...r.querySelectorAll('td.cell')].map((td) => Number(td.dataset.pct))));

/** Insights → Trends, Funnel and Retention on the product dataset. */
async function insights(page, context, problems, shots) {
  // --- Trends: the tab keeps the project and range; the switcher keeps the page ---
  await page.click('#tab-trends');
  await page.waitForURL(/\/insights\/trends\?project=blog&range=7d/);
  await page.selectOption('#project', 'app');
  await page.waitForURL(/\/insights\/trends\?project=app/);
  await settled(page, TRENDS_TABLE);
  await page.selectOption('#series-A-event', 'signed_up');
  await page.waitForURL(/s=total%7Csigned_up/);
  await page.click('#add-series');
  await page.selectOption('#series-B-event', 'page_visit');
  await page.waitForURL(/s=total%7Cpage_visit/);
  await page.selectOption('#series-B-math', 'unique');
  await page.waitForURL(/s=unique%7Cpage_visit/);
  await settled(page, TRENDS_TABLE);
  const previous = [day(13), day(7)];
  assert.equal(await page.textContent('#trends-period'), `${day(6)} to ${day(0)}, against ${previous[0]} to ${previous[1]}`);
  assert.deepEqual(await headers(page, TRENDS_TABLE), ['Series', 'Total', 'Previous period', 'Change %', ...[6, 5, 4, 3, 2, 1, 0].map(day)]);
  let grid = await readGrid(page, TRENDS_TABLE);
  assert.deepEqual(grid, HAND_TRENDS, 'trends, worked out by hand');
  const seriesAB = { series: [{ event: 'signed_up' }, { event: 'page_visit', math: 'unique' }] };
  assert.deepEqual(numbersOf(grid, await rowKeys(page, TRENDS_TABLE), 1), await apiTrends(seriesAB, previous), 'trends, as the API answers');
  assert.equal(await page.$$eval('#trends-chart canvas', (c) => c.length), 1, 'the chart is drawn');
  // The legend: two series and their previous periods.
  assert.equal(await page.$$eval('#trends-chart .u-legend .u-series', (s) => s.length), 1 + 4);

  await page.fill('#formula', 'A / B * 100');
  await page.press('#formula', 'Tab');
  await page.waitForURL(/formula=A\+%2F\+B\+\*\+100/);
  await settled(page, TRENDS_TABLE);
  grid = await readGrid(page, TRENDS_TABLE);
  assert.deepEqual(grid, [...HAND_TRENDS, HAND_TRENDS_FORMULA], 'the formula, by hand');
  const withFormula = { ...seriesAB, formula: 'A / B * 100' };
  assert.deepEqual(numbersOf(grid, await rowKeys(page, TRENDS_TABLE), 1), await apiTrends(withFormula, previous));
  axeMinor.n += await axe(page, 'trends');
  shots.push(await shot(page, '07-trends'));
  await assertFresh(page, 'trends');

  await page.selectOption('#breakdown', 'visit:country');
  await page.waitForURL(/bd=visit%3Acountry/);
  await settled(page, TRENDS_TABLE);
  grid = await readGrid(page, TRENDS_TABLE);
  const keys = await rowKeys(page, TRENDS_TABLE);
  assert.deepEqual(Object.fromEntries(keys.map((k, i) => [k, grid[i][2]])), HAND_TRENDS_BY_COUNTRY, 'totals by country, by hand');
  assert.deepEqual(grid.map((r) => r[1]), keys.map((k) => k.split('|')[1]), 'the country column');
  const byCountry = { ...withFormula, breakdown: ['visit:country'] };
  assert.deepEqual(numbersOf(grid, keys, 2), await apiTrends(byCountry, previous, true), 'by country, as the API answers');

  // CSV: the table as it is on screen.
  const csv = await downloadCsv(page, '#trends-csv');
  assert.deepEqual(csv, [await headers(page, TRENDS_TABLE), ...asCsv(grid)], 'the CSV is the table');
  // The URL reproduces the view.
  const trendsUrl = page.url();
  assert.deepEqual(await reopen(context, trendsUrl, async (tab) => (await settled(tab, TRENDS_TABLE), readGrid(tab, TRENDS_TABLE))), grid, 'the link reproduces the trends');

  // The interval: weeks, as the API answers.
  await page.selectOption('#interval', 'week');
  await page.waitForURL(/interval=week/);
  await settled(page, TRENDS_TABLE);
  const weekly = await readGrid(page, TRENDS_TABLE);
  assert.deepEqual(numbersOf(weekly, await rowKeys(page, TRENDS_TABLE), 2), await apiTrends({ ...byCountry, interval: 'week' }, previous, true));
  assert.deepEqual(weekly.map((r) => r[2]), grid.map((r) => r[2]), 'the totals do not depend on the interval');

  // The error state: 91 days by the hour is over the API's 2,000 buckets.
  await page.goto(`${URL_}/insights/trends?project=app&range=91d&tz=UTC&interval=hour`);
  await page.waitForSelector('#trends .error[role=alert]');
  assert.match(await page.textContent('#trends .error'), /Could not load the trends: .*2,?000/);
  await quiet(page);
  const expected = problems.splice(0).filter((p) => !(p.kind === 'http' && p.status === 400 && p.url.includes('/api/v1/query')) && !(p.kind === 'console' && /400/.test(p.text)));
  assert.deepEqual(expected, [], 'only the refused query went wrong');

  // --- Funnel ---
  await page.goto(`${URL_}/insights/trends?project=app&range=7d&tz=UTC`);
  await settled(page, TRENDS_TABLE);
  await page.click('#tab-funnel');
  await page.waitForURL(/\/insights\/funnel\?project=app&range=7d/);
  await page.waitForSelector('#funnel-hint');
  await page.selectOption('#step-0', 'page_visit');
  await page.waitForURL(/step=page_visit/);
  await page.selectOption('#step-1', 'signed_up');
  await page.waitForURL(/step=signed_up/);
  await settled(page, '#funnel-table');
  await page.click('#add-step');
  await page.selectOption('#step-2', 'purchase');
  await page.waitForURL(/step=purchase/);
  await settled(page, '#funnel-table');
  const bars = () => page.$$eval('#funnel-bars .funnel-step', (li) => li.map((l) => [Number(l.dataset.count), Number(l.dataset.conversion)]));
  assert.deepEqual(await bars(), [[4, 100], [3, 75], [1, 25]], 'the bars, by hand');
  let funnelGrid = await readGrid(page, '#funnel-table');
  assert.deepEqual(funnelGrid, HAND_FUNNEL, 'the funnel, by hand');
  const steps = [{ event: 'page_visit' }, { event: 'signed_up' }, { event: 'purchase' }];
  const funnelQuery = (extra) => appQuery({ kind: 'funnel', date_range: '7d', steps, ...extra });
  assert.deepEqual(funnelGrid, apiFunnelRows(await funnelQuery({})), 'the funnel, as the API answers');
  assert.match(await page.textContent('#funnel-bars'), /75% of step 1; 1 dropped off; median time 10m 0s/);
  assert.match(await page.textContent('#funnel-summary'), /1 of 4 converted \(25%\)/);
  axeMinor.n += await axe(page, 'funnel');
  shots.push(await shot(page, '08-funnel'));
  await assertFresh(page, 'funnel');

  await page.fill('#window-value', '1');
  await page.press('#window-value', 'Tab');
  await page.waitForURL(/window=1d/);
  await page.selectOption('#window-unit', 'h');
  await page.waitForURL(/window=1h/);
  await settled(page, '#funnel-table');
  assert.deepEqual((await bars()).map((b) => b[0]), HAND_FUNNEL_1H_COUNTS, 'a 1-hour window, by hand');
  const hour = { window: { value: 1, unit: 'hour' } };
  assert.deepEqual(await readGrid(page, '#funnel-table'), apiFunnelRows(await funnelQuery(hour)));

  await page.selectOption('#breakdown', 'visit:country');
  await page.waitForURL(/bd=visit%3Acountry/);
  await settled(page, '#funnel-table');
  funnelGrid = await readGrid(page, '#funnel-table');
  const byValue = {};
  for (const r of funnelGrid) (byValue[r[2]] ??= []).push(r[3]);
  assert.deepEqual(byValue, HAND_FUNNEL_1H_BY_COUNTRY, 'by country, by hand');
  assert.deepEqual(funnelGrid, apiFunnelRows(await funnelQuery({ ...hour, breakdown: 'visit:country' })), 'by country, as the API answers');
  assert.deepEqual(await downloadCsv(page, '#funnel-csv'), [await headers(page, '#funnel-table'), ...asCsv(funnelGrid)], 'the CSV is the table');
  assert.deepEqual(await reopen(context, page.url(), async (tab) => (await settled(tab, '#funnel-table'), readGrid(tab, '#funnel-table'))), funnelGrid, 'the link reproduces the funnel');

  // --- Retention ---
  await page.click('#tab-retention');
  await page.waitForURL(/\/insights\/retention\?project=app&range=7d/);
  await settled(page, '#retention-box > *');
  await page.selectOption('#target', 'signed_up');
  await page.waitForURL(/target=signed_up/);
  await page.selectOption('#period', 'day');
  await page.waitForURL(/period=day/);
  await page.fill('#intervals', '4');
  await page.press('#intervals', 'Tab');
  await page.waitForURL(/intervals=4/);
  await settled(page, '#retention-table');
  const retentionQuery = (extra) =>
    appQuery({ kind: 'retention', date_range: '7d', period: 'day', intervals: 4, returning: { event: '$any' }, ...extra });
  const apiRetention = (r) => r.results.map((c) => [c.cohort, c.size, c.values.map((v) => v.count)]);
  assert.deepEqual(await readRetention(page), HAND_RETENTION, 'first-time retention, by hand');
  let r = await retentionQuery({ target: { event: 'signed_up' } });
  assert.deepEqual(await readRetention(page), apiRetention(r), 'first-time retention, as the API answers');
  assert.deepEqual(await readRetentionPct(page), r.results.map((c) => c.values.map((v) => v.percentage)));
  assert.deepEqual((await readRetentionPct(page))[0], [100, 100, 0, 100]);

  await page.selectOption('#type', 'recurring');
  await page.waitForURL(/type=recurring/);
  await page.selectOption('#target', '$any');
  await page.waitForURL(/target=%24any/);
  await settled(page, '#retention-table');
  assert.deepEqual(await readRetention(page), HAND_RETENTION_RECURRING, 'recurring retention, by hand');
  r = await retentionQuery({ type: 'recurring', target: { event: '$any' } });
  assert.deepEqual(await readRetention(page), apiRetention(r), 'recurring retention, as the API answers');
  assert.deepEqual((await readRetentionPct(page))[1], [100, 50, 50, 0]);
  const csvExpected = [
    ['Cohort', 'People', ...[0, 1, 2, 3].flatMap((i) => [`Day ${i}`, `Day ${i} %`])],
    ...r.results.map((c) => [c.cohort, c.size, ...[0, 1, 2, 3].flatMap((i) => (c.values[i] ? [c.values[i].count, c.values[i].percentage] : [null, null]))]),
  ];
  assert.deepEqual(await downloadCsv(page, '#retention-csv'), asCsv(csvExpected), 'the CSV: each cell, people and %');
  const retentionUrl = page.url();
  assert.deepEqual(await reopen(context, retentionUrl, async (tab) => (await settled(tab, '#retention-table'), readRetention(tab))), HAND_RETENTION_RECURRING, 'the link reproduces the retention');
  axeMinor.n += await axe(page, 'retention');
  shots.push(await shot(page, '09-retention'));
  await assertFresh(page, 'retention');

  // Empty: a project without events shows how to send the first one.
  await page.selectOption('#project', 'blog');
  await page.waitForURL(/\/insights\/retention\?project=blog/);
  await page.waitForSelector('#retention-box .empty-state');
  assert.match(await page.textContent('#retention-box'), /No data in this period/);
  await quiet(page);
  // The browser's back button goes back to the app's retention, as it was.
  await page.goBack();
  await page.waitForURL(retentionUrl);
  await settled(page, '#retention-table');
  assert.deepEqual(await readRetention(page), HAND_RETENTION_RECURRING);
}

/** Insights → Lifecycle and Stickiness, and Accounts, on the product dataset. */
async function activityAndAccounts(page, context, shots) {
  // --- Lifecycle ---
  await page.click('#tab-lifecycle');
  await page.waitForURL(/\/insights\/lifecycle\?project=app&range=7d/);
  await settled(page, '#lifecycle-table');
  const lc = await readGrid(page, '#lifecycle-table');
  assert.deepEqual(lc, HAND_LIFECYCLE, 'lifecycle, by hand');
  const rl = (await appQuery({ kind: 'lifecycle', date_range: '7d', interval: 'day' })).results;
  assert.deepEqual(lc, rl.labels.map((l, i) => [l, rl.new[i], rl.returning[i], rl.resurrecting[i], rl.dormant[i], rl.new[i] + rl.returning[i] + rl.resurrecting[i]]), 'lifecycle, as the API answers');
  assert.equal(await page.$$eval('#lifecycle-box .stack', (s) => s.length), 7, 'a bar per day');
  assert.deepEqual(await downloadCsv(page, '#lifecycle-csv'), [await headers(page, '#lifecycle-table'), ...asCsv(lc)], 'the CSV is the table');
  axeMinor.n += await axe(page, 'lifecycle');
  shots.push(await shot(page, '10-lifecycle'));
  await assertFresh(page, 'lifecycle');
  await page.selectOption('#target', 'signed_up');
  await page.waitForURL(/target=signed_up/);
  await settled(page, '#lifecycle-table');
  const rs = (await appQuery({ kind: 'lifecycle', date_range: '7d', interval: 'day', target: { event: 'signed_up' } })).results;
  assert.deepEqual((await readGrid(page, '#lifecycle-table')).map((r) => r[1]), rs.new, 'sign-ups: everyone is new once');
  assert.deepEqual(rs.new, [1, 1, 0, 1, 0, 0, 0]);
  assert.deepEqual(await reopen(context, page.url(), async (tab) => (await settled(tab, '#lifecycle-table'), readGrid(tab, '#lifecycle-table'))), await readGrid(page, '#lifecycle-table'), 'the link reproduces the lifecycle');

  // --- Stickiness ---
  await page.click('#tab-stickiness');
  await page.waitForURL(/\/insights\/stickiness\?project=app&range=7d/);
  await settled(page, '#stickiness-table');
  const st = await readGrid(page, '#stickiness-table');
  assert.deepEqual(st, HAND_STICKINESS, 'stickiness, by hand');
  const rst = await appQuery({ kind: 'stickiness', date_range: '7d', interval: 'day' });
  assert.deepEqual(st, rst.results.map((x) => [x.intervals, x.count, x.percentage]), 'stickiness, as the API answers');
  assert.match(await page.textContent('#stickiness-summary'), /4 active people, 7 days/);
  assert.deepEqual(await downloadCsv(page, '#stickiness-csv'), [await headers(page, '#stickiness-table'), ...asCsv(st)], 'the CSV is the table');
  axeMinor.n += await axe(page, 'stickiness');
  shots.push(await shot(page, '11-stickiness'));
  await assertFresh(page, 'stickiness');

  // --- Accounts ---
  await page.click('#tab-accounts');
  await page.waitForURL(/\/accounts\?project=app&range=7d/);
  await settled(page, '#accounts-table');
  const ACC = '#accounts-table';
  const apiAccounts = async (extra = {}) =>
    (await appQuery({ kind: 'accounts', date_range: '7d', ...extra })).results.map((a) => ACCOUNT_COLUMNS.map((c) => a[c] ?? null));
  const pick = (rows) => rows.map((r) => [r[0], r[3], r[8], r[2]]);
  let acc = await readGrid(page, ACC);
  assert.deepEqual(pick(acc), HAND_ACCOUNTS, 'accounts, by hand');
  assert.deepEqual(acc.map((r) => [r[9], r[10]]), HAND_ACCOUNTS_PREVIOUS, 'the previous period, by hand');
  assert.deepEqual(acc, await apiAccounts(), 'accounts, as the API answers');
  assert.equal(await page.textContent('#accounts-range'), '1–3 of 3');
  axeMinor.n += await axe(page, 'accounts');
  shots.push(await shot(page, '12-accounts'));
  await assertFresh(page, 'accounts');
  // Sorting: a click on Account sorts A to Z, a second Z to A.
  await page.click('button[data-sort="account_id"]');
  await page.waitForURL(/sort=account_id&dir=asc/);
  await settled(page, ACC);
  assert.deepEqual((await readGrid(page, ACC)).map((r) => r[0]), ['acme', 'globex', 'initech']);
  await page.click('button[data-sort="account_id"]');
  await page.waitForURL(/sort=account_id&dir=desc/);
  await settled(page, ACC);
  acc = await readGrid(page, ACC);
  assert.deepEqual(acc.map((r) => r[0]), ['initech', 'globex', 'acme']);
  assert.deepEqual(acc, await apiAccounts({ order_by: [['account_id', 'desc']] }));
  assert.equal(await page.getAttribute(`${ACC} th[aria-sort]`, 'aria-sort'), 'descending');
  // Filtering by health.
  await page.selectOption('#health', 'Inactive');
  await page.waitForURL(/health=Inactive/);
  await settled(page, ACC);
  assert.deepEqual((await readGrid(page, ACC)).map((r) => r[0]), ['initech']);
  await page.selectOption('#health', '');
  await page.waitForFunction(() => !location.search.includes('health='));
  await settled(page, ACC);
  // Paging, two a page: the state is in the URL too.
  await quiet(page);
  await page.goto(`${URL_}/accounts?project=app&range=7d&tz=UTC&per=2`);
  await settled(page, ACC);
  assert.deepEqual((await readGrid(page, ACC)).map((r) => r[0]), ['acme', 'globex']);
  assert.equal(await page.textContent('#accounts-range'), '1–2 of 3');
  await page.click('#accounts-next');
  await page.waitForURL(/page=2/);
  await settled(page, ACC);
  acc = await readGrid(page, ACC);
  assert.deepEqual(acc.map((r) => r[0]), ['initech']);
  assert.deepEqual(acc, await apiAccounts({ pagination: { limit: 2, offset: 2 } }));
  assert.equal(await page.textContent('#accounts-range'), '3–3 of 3');
  // The CSV has every matching account, not only this page.
  assert.deepEqual(
    await downloadCsv(page, '#accounts-csv'),
    [await page.$$eval(`${ACC} thead th`, (t) => t.map((x) => x.textContent.replace(/ [▲▼]$/, ''))), ...asCsv(await apiAccounts())],
    'the CSV: all accounts',
  );
  assert.deepEqual(await reopen(context, page.url(), async (tab) => (await settled(tab, ACC), readGrid(tab, ACC))), acc, 'the link reproduces the page of accounts');
}

const axeMinor = { n: 0 };

/** One account's page: from the accounts table's link. */
async function accountPage(page, context, problems, shots) {
  await page.goto(`${URL_}/accounts?project=app&range=7d&tz=UTC`);
  await settled(page, '#accounts-table');
  await page.click('#accounts-table a.account-link:text-is("acme")');
  await page.waitForURL(/account=acme/);
  await settled(page, '#account-people-table');
  await page.waitForSelector('#account-health');
  const facts = () => page.$$eval('#account .kpi', (k) => Object.fromEntries(k.map((x) => [x.dataset.metric, x.dataset.value === 'null' ? null : Number(x.dataset.value)])));
  const row = (await appQuery({ kind: 'accounts', date_range: '7d', filters: [['is', 'account:id', ['acme']]] })).results[0];
  const f = await facts();
  assert.deepEqual({ users: f.users, events: f.events, previous_events: f.previous_events, trend: f.trend }, HAND_ACME, 'acme, by hand');
  assert.deepEqual(f, Object.fromEntries(Object.keys(f).map((k) => [k, row[k]])), 'acme, as the API answers');
  assert.equal(await page.textContent('#account-health'), 'New');
  assert.equal(await page.textContent('#account-why'), `First seen ${day(6)}, within 14 days of the period's end (${day(0)}).`);
  const people = await readGrid(page, '#account-people-table');
  assert.deepEqual(people.map((r) => r.slice(0, 3)), HAND_ACME_PEOPLE, 'its people, by hand');
  const users = (await appQuery({ kind: 'accounts', account_id: 'acme', date_range: '7d', pagination: { limit: 100, offset: 0 } })).results;
  assert.deepEqual(people, users.map((u) => [u.user_id, u.events, u.days_active, u.last_active, '']), 'its people, as the API answers');
  assert.deepEqual(await downloadCsv(page, '#account-csv', /^tally-account-acme-app-7d\.csv$/), [await headers(page, '#account-people-table'), ...asCsv(people)], 'the CSV is the table');
  // Its activity over time: the chart is drawn, the table equals the hand and the API.
  await page.waitForSelector('#account-activity-chart .uplot');
  const activity = await page.$$eval('#account-activity-table tbody tr', (rows) => rows.map((r) => [r.children[0].textContent, Number(r.children[1].dataset.value), Number(r.children[2].dataset.value)]));
  assert.deepEqual(activity, HAND_ACME_ACTIVITY, "acme's activity, by hand");
  const apiActivity = (await appQuery({ kind: 'accounts', account_id: 'acme', date_range: '7d', pagination: { limit: 100, offset: 0 } })).activity;
  assert.deepEqual(activity, apiActivity.map((d) => [d.day, d.events, d.people]), "acme's activity, as the API answers");
  axeMinor.n += await axe(page, 'account');
  shots.push(await shot(page, '16-account'));
  await assertFresh(page, 'account');
  assert.deepEqual(await reopen(context, page.url(), async (tab) => (await settled(tab, '#account-people-table'), readGrid(tab, '#account-people-table'))), people, 'the link reproduces the account');
  // A person opens from the account's people: u1's profile, by hand and as the API answers.
  await page.click('#account-people-table a:text-is("u1")');
  await page.waitForURL(/\/people\?.*person=u1/);
  await page.waitForSelector('#timeline-table');
  await quiet(page);
  assert.equal(await page.textContent('#person-title'), 'u1');
  const timeline = await page.$$eval('#timeline-table tbody tr', (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)));
  assert.deepEqual(timeline.map((r) => r.slice(0, 2)), HAND_U1_TIMELINE, "u1's timeline, by hand");
  const profile = (await appQuery({ kind: 'person', person_id: 'u1', date_range: '7d' })).results;
  assert.deepEqual(timeline.map((r) => r[5]), profile.timeline.map((e) => e.uuid), 'the same events as the API');
  assert.equal(profile.events, 5);
  assert.deepEqual(await page.$$eval('#person-devices li', (l) => l.map((x) => x.dataset.device)), ['d-u1']);
  assert.deepEqual(await page.$$eval('#person-accounts a', (l) => l.map((x) => x.textContent)), ['acme']);
  assert.ok(await page.$('#person-no-traits'), 'no identify call: no traits');
  assert.match(await page.textContent('#timeline-summary'), /^1–5 of 5/);
  axeMinor.n += await axe(page, 'person');
  shots.push(await shot(page, '19-person'));
  assert.deepEqual(await downloadCsv(page, '#timeline-csv', /^tally-person-u1-app-7d\.csv$/), [await headers(page, '#timeline-table'), ...timeline], 'the CSV is the table');
  // Its device id opens the same person; an unknown id says so.
  await page.fill('#person-id', 'd-u1');
  await page.click('#person-open');
  await page.waitForURL(/person=d-u1/);
  await page.waitForSelector('#timeline-table');
  assert.equal(await page.textContent('#person-title'), 'u1');
  await page.fill('#person-id', 'nobody-at-all');
  await page.click('#person-open');
  await page.waitForURL(/person=nobody-at-all/);
  await page.waitForFunction(() => /check the id/.test(document.querySelector('#timeline-box')?.textContent ?? ''));
  await quiet(page);
  // An inactive account, and the way back.
  await page.goto(`${URL_}/accounts?project=app&range=7d&tz=UTC&account=initech`);
  await settled(page, '#account-health');
  assert.equal(await page.textContent('#account-health'), 'Inactive');
  assert.equal(await page.textContent('#account-why'), 'No activity in the period.');
  assert.match(await page.textContent('#account-people-box'), /^Nobody/);
  // The error state: the API refuses an unknown timezone, and the page says so.
  await quiet(page);
  await page.goto(`${URL_}/accounts?project=app&range=7d&tz=Nowhere/Nothing&account=acme`);
  await page.waitForSelector('#account .error[role=alert]');
  assert.match(await page.textContent('#account .error'), /Could not load the account: .*timezone/i);
  await quiet(page);
  await page.goto(`${URL_}/insights/paths?project=app&range=7d&tz=Nowhere/Nothing&start=signed_up`);
  await page.waitForSelector('#paths .error[role=alert]');
  assert.match(await page.textContent('#paths .error'), /Could not load the paths: .*timezone/i);
  await quiet(page);
  const refused = problems.splice(0).filter((p) => !(p.kind === 'http' && p.status === 400 && p.url.includes('/api/v1/query')) && !(p.kind === 'console' && /400/.test(p.text)));
  assert.deepEqual(refused, [], 'only the refused queries went wrong');
  await page.goto(`${URL_}/accounts?project=app&range=7d&tz=UTC&account=initech`);
  await settled(page, '#account-health');
  await page.click('#all-accounts');
  await page.waitForFunction(() => location.pathname === '/accounts' && !location.search.includes('account='));
  await settled(page, '#accounts-table');
}

/** Insights → Paths on the product dataset. */
async function pathsPage(page, context, shots) {
  await page.click('#tab-paths');
  await page.waitForURL(/\/insights\/paths\?project=app&range=7d/);
  await settled(page, '#paths-box > *');
  await page.selectOption('#path-start', 'signed_up');
  await page.waitForURL(/start=signed_up/);
  await settled(page, '#paths-table');
  const apiPaths = async (extra) => {
    const r = (await appQuery({ kind: 'paths', date_range: '7d', start: { event: 'signed_up' }, ...extra })).results;
    return r.steps.flatMap((s) => s.edges.map((e) => [s.step, e.from, e.to, e.count, Math.round((e.count / r.people) * 10_000) / 100]));
  };
  let grid = await readGrid(page, '#paths-table');
  assert.deepEqual(grid, HAND_PATHS, 'paths, by hand');
  assert.deepEqual(grid, await apiPaths({ depth: 3 }), 'paths, as the API answers');
  assert.match(await page.textContent('#paths-summary'), /: 3 people started$/);
  assert.equal(await page.$$eval('#paths-box .path-column', (c) => c.length), 4, 'the start and three steps');
  assert.deepEqual(await downloadCsv(page, '#paths-csv'), [await headers(page, '#paths-table'), ...asCsv(grid)], 'the CSV is the table');
  axeMinor.n += await axe(page, 'paths');
  shots.push(await shot(page, '15-paths'));
  await assertFresh(page, 'paths');
  await page.selectOption('#path-dir', 'previous');
  await page.waitForURL(/dir=previous/);
  await page.selectOption('#path-depth', '1');
  await page.waitForURL(/depth=1/);
  await settled(page, '#paths-table');
  grid = await readGrid(page, '#paths-table');
  assert.deepEqual(grid, HAND_PATHS_PREVIOUS, 'what led to a sign-up, by hand');
  assert.deepEqual(grid, await apiPaths({ depth: 1, direction: 'previous' }), 'as the API answers');
  assert.deepEqual(await reopen(context, page.url(), async (tab) => (await settled(tab, '#paths-table'), readGrid(tab, '#paths-table'))), grid, 'the link reproduces the paths');
}

/** The "updated N s ago" line: its text and its numbers. */
async function readFreshness(page) {
  await page.waitForFunction(() => document.querySelector('#freshness')?.dataset.ageS !== undefined);
  return page.$eval('#freshness', (el) => ({ text: el.textContent, age: Number(el.dataset.ageS), computedAt: el.dataset.computedAt }));
}
async function assertFresh(page, name) {
  const f = await readFreshness(page);
  assert.match(f.text, /^Updated \d+ s ago/, `${name}: the freshness line`);
  assert.equal(f.text.match(/\d+/)[0], String(f.age), `${name}: the text says the age`);
}

/** The query answers' cache blocks, as they arrive (for the freshness line). */
function cacheBlocks(page) {
  const seen = [];
  page.on('response', async (r) => {
    if (!r.url().includes('/api/v1/query') || r.status() !== 200) return;
    const body = JSON.parse(r.request().postData() ?? '{}');
    try {
      seen.push({ kind: body.kind ?? 'stats', body, cache: (await r.json()).cache });
    } catch {
      /* a page that went away */
    }
  });
  return seen;
}

/** Events → the live stream, on the shop project (F now; then G sent while watching). */
/** Node-side POST with a key or none; the status and the JSON answer. */
async function post(path, body, key) {
  const r = await fetch(`${URL_}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { 'x-api-key': key } : {}) },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}
const oneEvent = [{ event_name: 'settings_check', user_id: 'u-settings' }];
/** The key or password a Settings notice shows once, by its label. */
async function noticeValue(page, label) {
  return page.$$eval('#settings-notice p', (ps, label) => {
    const p = ps.find((x) => x.textContent.startsWith(`${label}: `));
    return p ? p.querySelector('code').textContent : null;
  }, label);
}
async function settingsReloaded(page) {
  await quiet(page);
  await page.waitForSelector('#settings-users');
}

/** Settings as the admin: a project made on the page whose keys work at once, a write
 * key made and another revoked (ingest with it refused from then on), a user made with a
 * generated password who can log in and, removed, no longer can; a refusal shown. */
async function settingsPage(page, problems, shots) {
  await page.click('#tab-settings');
  await page.waitForURL(/\/settings\?project=/);
  await settingsReloaded(page);
  const listed = await page.$$eval('#settings-projects li a', (as) => as.map((a) => a.textContent));
  assert.deepEqual(listed, ['shop', 'blog', 'app']);
  assert.ok((await page.textContent('#keys-shop')).includes(env('SHOP_WRITE_KEY')), 'the write key is listed');
  assert.ok(!(await page.textContent('#settings-body')).includes(env('SHOP_READ_KEY')), 'a read key never is');
  assert.ok((await page.textContent('#snippet-blog')).includes(env('BLOG_WRITE_KEY')));

  // A new project: its keys, shown once, work for ingest and queries at once.
  await page.fill('#new-project-name', 'Web shop');
  await page.click('#new-project-submit');
  await page.waitForSelector('#notice-title');
  assert.equal(await page.textContent('#notice-title'), 'Project web-shop created');
  const write = await noticeValue(page, 'Write key');
  const read = await noticeValue(page, 'Read key');
  assert.equal((await post('/api/track', oneEvent, write)).status, 200);
  assert.equal((await post('/api/v1/query', { metrics: ['events'], date_range: 'all' }, read)).status, 200);
  await settingsReloaded(page);
  assert.ok(await page.$('#project option[value="web-shop"]'), 'the switcher lists the new project');
  assert.ok(await page.$('#project-web-shop'));
  await page.click('#notice-close');

  // A second write key, then the first revoked: two clicks (the first arms the button).
  await page.click('#new-write-key-web-shop');
  await page.waitForSelector('#notice-title');
  const second = await noticeValue(page, 'Write key');
  await settingsReloaded(page);
  assert.equal(await page.$$eval('#keys-web-shop tr[data-kind=write]', (r) => r.length), 2);
  const revoke = `#keys-web-shop tr[data-key="${write}"] button`;
  await page.click(revoke);
  assert.match(await page.textContent(revoke), /Confirm revoke/);
  await page.click(revoke);
  await page.waitForFunction((k) => !document.querySelector(`#keys-web-shop tr[data-key="${k}"]`), write);
  await settingsReloaded(page);
  assert.equal((await post('/api/track', oneEvent, write)).status, 401, 'the revoked key is refused');
  assert.equal((await post('/api/track', oneEvent, second)).status, 200, 'the other one works');
  shots.push(await shot(page, '17-settings'));

  // A viewer of web-shop with a generated password: logs in (elsewhere), then is removed.
  await page.fill('#new-user-email', 'new@web-test.example');
  await page.selectOption('#new-user-role', 'viewer');
  await page.check('#new-user-project-web-shop');
  await page.click('#new-user-submit');
  await page.waitForFunction(() => document.querySelector('#notice-title')?.textContent === 'User new@web-test.example created');
  const password = await noticeValue(page, 'Password');
  assert.ok(password && password.length >= 16, password);
  const asNew = await post('/api/v1/login', { email: 'new@web-test.example', password });
  assert.equal(asNew.status, 200, JSON.stringify(asNew.body));
  assert.deepEqual(asNew.body.projects.map((p) => p.id), ['web-shop']);
  await settingsReloaded(page);
  const row = '#users-table tr[data-email="new@web-test.example"]';
  assert.match(await page.textContent(row), /viewer.*web-shop/);
  await page.click(`${row} button`);
  await page.click(`${row} button`);
  await page.waitForFunction((r) => !document.querySelector(r), row);
  assert.equal((await post('/api/v1/login', { email: 'new@web-test.example', password })).status, 401);
  await settingsReloaded(page);
  axeMinor.n += await axe(page, 'settings');

  // A refusal shows the server's words: the project exists already.
  await page.fill('#new-project-name', 'web shop');
  await page.click('#new-project-submit');
  await page.waitForSelector('#settings-error');
  assert.match(await page.textContent('#settings-error'), /already exists/);
  await quiet(page);
  const refused = problems.splice(0).filter((p) => !(p.kind === 'http' && p.status === 409 && p.url.includes('/api/v1/projects')) && !(p.kind === 'console' && /409/.test(p.text)));
  assert.deepEqual(refused, [], 'only the refused project went wrong');
}

async function liveStream(page, context, shots) {
  const STREAM = '#stream-table';
  const streamRows = () => page.$$eval(`${STREAM} tbody tr`, (rows) => rows.map((r) => [r.dataset.key, ...[...r.querySelectorAll('[data-value]')].map((c) => c.dataset.value)]));
  const apiStream = async (filters = []) => {
    const now = Date.now();
    const r = await shopQuery({ kind: 'events', date_range: [new Date(now - 30 * 60_000).toISOString(), new Date(now + 60_000).toISOString()], filters, timezone: undefined });
    return r.results.reverse();
  };
  const readLive = () => page.$$eval('#live-kpis .kpi', (k) => Object.fromEntries(k.map((x) => [x.dataset.metric, Number(x.dataset.value)])));
  const apiLive = async () => {
    const x = (await shopQuery({ kind: 'realtime', minutes: 30, timezone: undefined })).results;
    return { visitors: x.visitors, devices: x.devices, events: x.events, pageviews: x.pageviews };
  };
  await page.goto(`${URL_}/events?project=shop&range=7d&tz=UTC`);
  await page.waitForSelector(STREAM);
  await page.waitForSelector('#live-kpis .kpi');
  await quiet(page);
  let rows = await streamRows();
  assert.deepEqual(rows.map((r) => r.slice(2, 6)), [['page_visit', 'track', 'dF', '']], 'the stream: F (a track call), by hand');
  assert.equal(rows[0][6], '/home');
  assert.deepEqual(rows.map((r) => r[0]), (await apiStream()).map((e) => e.uuid), 'the stream, as the API answers');
  assert.deepEqual(await readLive(), { visitors: 1, devices: 1, events: 1, pageviews: 1 }, 'the last 30 minutes, by hand');
  assert.deepEqual(await readLive(), await apiLive(), 'the last 30 minutes, as the API answers');
  await assertFresh(page, 'events');
  // An event sent now shows up without a reload, on top.
  const sent = await api('/api/track', { key: env('SHOP_WRITE_KEY'), body: [LIVE_EVENT] });
  assert.equal(sent.accepted, 1);
  await page.waitForFunction(() => document.querySelectorAll('#stream-table tbody tr').length === 2, null, { timeout: 20_000 });
  await page.waitForFunction(() => document.querySelector('#live-kpis .kpi[data-metric="events"]')?.dataset.value === '2', null, { timeout: 20_000 });
  await quiet(page);
  rows = await streamRows();
  assert.deepEqual(rows.map((r) => r.slice(2, 5)), [['live_check', 'track', 'dG'], ['page_visit', 'track', 'dF']], 'G on top, by hand');
  assert.deepEqual(rows.map((r) => r[0]), (await apiStream()).map((e) => e.uuid), 'the stream, as the API answers');
  assert.deepEqual(await readLive(), { visitors: 2, devices: 2, events: 2, pageviews: 1 }, 'G is no page view');
  assert.deepEqual(await readLive(), await apiLive());
  assert.match(await page.textContent('#stream-summary'), /^2 events in the last 30 minutes/);
  // A row opens to its JSON.
  await page.click(`${STREAM} tbody tr:first-child summary`);
  assert.match(await page.textContent(`${STREAM} tbody tr:first-child pre`), /"page_url": "https:\/\/shop\.example\/live"/);
  const csv = await downloadCsv(page, '#stream-csv', /^tally-events-shop-30min\.csv$/);
  assert.deepEqual(csv.slice(1).map((r) => r[6]), rows.map((r) => r[0]), 'the CSV: every row, with its uuid');
  assert.deepEqual(csv.slice(1).map((r) => r.slice(0, 6)), rows.map((r) => r.slice(1, 7)), 'the CSV is the table');
  axeMinor.n += await axe(page, 'events');
  shots.push(await shot(page, '13-events'));
  // The event filter, from the URL.
  const filtered = `${URL_}/events?project=shop&tz=UTC&minutes=5&event=live_check`;
  const only = await reopen(context, filtered, async (tab) => {
    await tab.waitForSelector('#stream-table');
    await quiet(tab);
    return tab.$$eval('#stream-table tbody tr', (r) => r.map((x) => x.dataset.key));
  });
  assert.deepEqual(only, (await apiStream([['is', 'event:name', ['live_check']]])).map((e) => e.uuid));
  assert.equal(only.length, 1);
  // A date range instead of the last minutes: 10 days ago, u5's visit and sign-up, oldest
  // first (project app).
  await quiet(page);
  await page.goto(`${URL_}/events?project=app&tz=UTC&range=custom&from=${day(10)}&to=${day(10)}&minutes=0`);
  await settled(page, STREAM);
  rows = await streamRows();
  assert.deepEqual(rows.map((r) => r.slice(2, 7)), [['page_visit', 'track', 'u5', '', '/home'], ['signed_up', 'track', 'u5', '', '']], 'the events of a day, by hand');
  const dayEvents = (await appQuery({ kind: 'events', date_range: [day(10), day(10)] })).results;
  assert.deepEqual(rows.map((r) => r[0]), dayEvents.map((e) => e.uuid), 'as the API answers');
  assert.deepEqual(rows.map((r) => r[1]), dayEvents.map((e) => e.timestamp.slice(0, 19).replace('T', ' ')));
  assert.equal(await page.inputValue('#range'), 'custom');
  assert.equal(await page.isDisabled('#stream-next'), true, 'one page');
  assert.match(await page.textContent('#stream-summary'), /oldest first: events 1–2$/);
  assert.equal(await page.$$eval('#live-kpis', (k) => k.length), 0, 'no live numbers');
  await assertFresh(page, 'events of a range');
  axeMinor.n += await axe(page, 'events of a range');
}

test('the dashboard: login, overview, insights, filters, projects, access, accessibility', { timeout: 220_000 }, async () => {
  await seed();
  mkdirSync(ARTIFACTS, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'tally-web-test-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    timezoneId: 'UTC',
    viewport: { width: 1280, height: 900 },
    bypassCSP: true, // only so that axe-core can be injected; the app itself runs under the CSP
  });
  const shots = [];
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const problems = watch(page);

    // --- login page; a wrong password is refused ---
    await page.goto(`${URL_}/?tz=UTC`);
    await page.waitForSelector('form.login');
    assert.equal(new URL(page.url()).pathname, '/login', 'not logged in: the login page');
    axeMinor.n += await axe(page, 'login');
    shots.push(await shot(page, '01-login'));
    await page.fill('#email', env('ADMIN_EMAIL'));
    await page.fill('#password', 'not the password');
    await page.click('#login-submit');
    await page.waitForFunction(() => document.querySelector('#login-error')?.textContent !== '');
    assert.equal(await page.textContent('#login-error'), 'wrong email or password');
    assert.equal(new URL(page.url()).pathname, '/login');
    // That refusal is the one expected error: a 401 from /api/v1/login and the
    // browser's console line about it.
    const refused = problems.splice(0).filter((p) => !(p.url ?? '').includes('/api/v1/login') && !(p.kind === 'console' && /401/.test(p.text)));
    assert.deepEqual(refused, [], 'only the refused login went wrong');
    shots.push(await shot(page, '02-login-refused'));

    // --- log in as the admin: the Overview of the first project ---
    await page.fill('#password', PASSWORD);
    await page.click('#login-submit');
    await page.waitForSelector('.overview');
    const url = new URL(page.url());
    assert.equal(url.searchParams.get('project'), 'shop');
    assert.equal(url.searchParams.get('range'), '28d', 'the default range is in the URL');
    assert.match(await page.textContent('#who'), /admin/);

    const k28 = await readKpis(page);
    assert.deepEqual(k28.values, HAND_28D, '28 days, worked out by hand');
    assert.deepEqual(k28, await apiKpis('28d'), '28 days, as the query API answers');

    // --- changing the date range changes the numbers, as the API does ---
    await page.selectOption('#range', '7d');
    await page.waitForURL(/range=7d/);
    const k7 = await readKpis(page);
    assert.deepEqual(k7.values, HAND_7D, '7 days, worked out by hand');
    assert.deepEqual(k7.changes, HAND_7D_CHANGE, 'changes against the previous 7 days, by hand');
    assert.deepEqual(k7, await apiKpis('7d'), '7 days, as the query API answers');
    assert.notDeepEqual(k7.values, k28.values);
    assert.match(await page.textContent('.kpi[data-metric="visit_duration"] .kpi-value'), /^3m 0s$/);

    const pages = await readTable(page, 'pages');
    assert.deepEqual(pages, HAND_7D_PAGES, 'top pages, by hand');
    const apiPages = await shopQuery({ metrics: ['visitors', 'pageviews'], date_range: '7d', dimensions: ['event:page'], filters: [['is_set', 'event:page']], pagination: { limit: 10, offset: 0 } });
    assert.deepEqual(pages, apiPages.results.map((r) => [r.dimensions[0], ...r.metrics]), 'top pages, as the API answers');
    for (const [id, dimension, metrics] of [
      ['sources', 'visit:source', ['visitors']],
      ['countries', 'visit:country', ['visitors']],
      ['devices', 'visit:device', ['visitors']],
      ['browsers', 'visit:browser', ['visitors']],
      ['events', 'event:name', ['visitors', 'events']],
    ]) {
      const onScreen = await readTable(page, id);
      const r = await shopQuery({ metrics, date_range: '7d', dimensions: [dimension], pagination: { limit: 10, offset: 0 } });
      assert.deepEqual(onScreen, r.results.map((x) => [x.dimensions[0], ...x.metrics]), `${id}, as the API answers`);
    }
    assert.deepEqual(await readTable(page, 'countries'), [['DE', 2], ['US', 2]], 'countries, by hand (A C; B F)');
    assert.deepEqual(await readTable(page, 'events'), [['page_visit', 4, 6], ['signed_up', 1, 1]], 'top events, by hand');

    // The live count: F, a minute ago at most.
    await page.waitForSelector('#live[data-value]');
    const live = Number(await page.getAttribute('#live', 'data-value'));
    const rt = await shopQuery({ kind: 'realtime', minutes: 5, timezone: undefined });
    assert.equal(live, 1, 'one visitor in the last 5 minutes (F)');
    assert.equal(live, rt.results.visitors);
    await page.waitForSelector('#chart canvas');
    await quiet(page);
    axeMinor.n += await axe(page, 'overview');
    shots.push(await shot(page, '03-overview-7d'));

    // --- how fresh the numbers are: the oldest answer's age, from its cache block ---
    await assertFresh(page, 'overview');
    // Asked again 3 s later, the answers are kept ones (nothing new arrived): the line
    // says how old they are, not when they arrived, and ticks on.
    await new Promise((r) => setTimeout(r, 3000));
    const blocks = cacheBlocks(page);
    await page.reload();
    await readKpis(page);
    await page.waitForSelector('#live[data-value]');
    await quiet(page);
    const kept = blocks.filter((b) => b.kind === 'stats');
    assert.ok(kept.length >= 8 && kept.every((b) => b.cache.hit === true && b.cache.age_s >= 3), JSON.stringify(kept.map((b) => b.cache)));
    const oldest = Math.max(...kept.map((b) => b.cache.age_s));
    const f1 = await readFreshness(page);
    assert.ok(f1.age >= 3 && Math.abs(f1.age - oldest) <= 1, `updated ${f1.age} s ago; the oldest answer is ${oldest} s old`);
    assert.ok(kept.some((b) => b.cache.computed_at === f1.computedAt), 'the line names a kept answer');
    // It ticks: 2 s more within 4 s (the line is redrawn each second, so it may lag by one).
    const t1 = Date.now();
    await page.waitForFunction((n) => Number(document.querySelector('#freshness').dataset.ageS) >= n, f1.age + 2, { timeout: 4000 });
    const f2 = await readFreshness(page);
    assert.ok(f2.age - f1.age <= Math.ceil((Date.now() - t1) / 1000) + 1, `it ticks: ${f1.age} s, then ${f2.age} s`);
    assert.equal(f2.text, `Updated ${f2.age} s ago`);
    // Refresh: the page again, every answer computed now ("refresh": "force").
    const forced = cacheBlocks(page);
    await page.click('#refresh');
    await readKpis(page);
    await page.waitForSelector('#chart canvas');
    await quiet(page);
    const asked = forced.filter((b) => b.kind === 'stats');
    assert.ok(asked.length >= 8 && asked.every((b) => b.body.refresh === 'force' && b.cache.hit === false && b.cache.age_s < 1), JSON.stringify(asked.map((b) => [b.body.refresh, b.cache])));
    assert.ok((await readFreshness(page)).age <= 1, 'updated just now');
    assert.deepEqual((await readKpis(page)).values, HAND_7D, 'the same numbers');

    // --- a click on a row filters the whole page; the chip takes it off again ---
    await page.click('#table-pages button.row-filter:text-is("/pricing")');
    await page.waitForURL(/f=event%3Apage%7C%2Fpricing/);
    const filtered = await readKpis(page);
    assert.equal(filtered.values.visitors, HAND_7D_PRICING_VISITORS, 'visitors who saw /pricing, by hand');
    assert.deepEqual(filtered, await apiKpis('7d', [['is', 'event:page', ['/pricing']]]), 'filtered, as the API answers');
    assert.match(await page.textContent('#filters'), /Page is \/pricing/);
    shots.push(await shot(page, '04-overview-filtered'));
    await page.click('#filters .chip-remove');
    await page.waitForFunction(() => !location.search.includes('f='));
    assert.deepEqual((await readKpis(page)).values, HAND_7D);

    // --- the compare toggle: off, no change figures; back on with the browser's back ---
    await page.uncheck('#compare');
    await page.waitForURL(/compare=0/);
    await readKpis(page);
    assert.equal(await page.$$eval('.kpi-change[data-change]', (els) => els.length), 0);

    // --- the state is in the URL: a reload shows the same view ---
    // (Each navigation waits for the page's requests to end, so none is cut off.)
    await quiet(page);
    await page.goto(`${URL_}/?project=shop&range=7d&tz=UTC&f=${encodeURIComponent('visit:country|DE')}`);
    const de = await readKpis(page);
    assert.equal(de.values.visitors, 2, 'Germany: A and C');
    assert.deepEqual(de, await apiKpis('7d', [['is', 'visit:country', ['DE']]]));

    // --- a custom range: from and to in the URL, kept by the tabs ---
    await quiet(page);
    await page.goto(`${URL_}/?project=shop&range=7d&tz=UTC`);
    await readKpis(page);
    assert.equal(await page.isVisible('#custom-range'), false);
    await page.selectOption('#range', 'custom');
    assert.equal(await page.isVisible('#custom-range'), true, 'choosing Custom shows the days');
    assert.match(page.url(), /range=7d/, 'and changes nothing until applied');
    await page.fill('#range-from', day(7));
    await page.fill('#range-to', day(13));
    await page.click('#range-apply');
    assert.equal(await page.textContent('#range-error'), 'The first day is after the last.');
    assert.match(page.url(), /range=7d/);
    await page.fill('#range-from', day(13));
    await page.fill('#range-to', day(7));
    await page.click('#range-apply');
    await page.waitForURL(new RegExp(`range=custom&from=${day(13)}&to=${day(7)}`));
    const custom = await readKpis(page);
    assert.deepEqual(custom.values, HAND_CUSTOM, 'a custom range, by hand');
    assert.deepEqual(custom.changes, HAND_CUSTOM_CHANGE);
    assert.deepEqual(custom, await apiKpis([day(13), day(7)]), 'a custom range, as the API answers');
    assert.equal(await page.textContent('#period'), `${day(13)} to ${day(7)}`);
    assert.equal(await page.inputValue('#range'), 'custom');
    await quiet(page);
    axeMinor.n += await axe(page, 'custom range');
    shots.push(await shot(page, '14-custom-range'));
    assert.deepEqual(await reopen(context, page.url(), readKpis), custom, 'the link reproduces the custom range');
    // The tabs keep it: the trends of the same days.
    await page.click('#tab-trends');
    await page.waitForURL(new RegExp(`/insights/trends\\?project=shop&range=custom&from=${day(13)}&to=${day(7)}`));
    await settled(page, TRENDS_TABLE);
    assert.match(await page.textContent('#trends-period'), new RegExp(`^${day(13)} to ${day(7)}, against ${day(20)} to ${day(14)}`));
    assert.equal(await page.inputValue('#range-from'), day(13));
    await assertFresh(page, 'trends');
    await page.goBack();
    await readKpis(page);
    await page.selectOption('#range', '7d');
    await page.waitForFunction(() => location.search.includes('range=7d') && !location.search.includes('from='));
    assert.deepEqual((await readKpis(page)).values, HAND_7D, 'back to a preset');

    // --- the project switcher, and the empty state of a project without events ---
    await page.selectOption('#project', 'blog');
    await page.waitForSelector('#empty .empty-state');
    const snippet = await page.textContent('#snippet');
    assert.ok(snippet.includes(`${URL_}/js/tally.js`) && snippet.includes(env('BLOG_WRITE_KEY')), snippet);
    assert.match(await page.textContent('#curl'), /curl -s .*\/api\/track -H 'x-api-key: /);
    axeMinor.n += await axe(page, 'empty project');
    shots.push(await shot(page, '05-empty-project'));

    // --- Insights: trends, funnel, retention ---
    await quiet(page);
    await insights(page, context, problems, shots);
    await activityAndAccounts(page, context, shots);
    await quiet(page);
    await pathsPage(page, context, shots);
    await quiet(page);
    await accountPage(page, context, problems, shots);

    // --- Events: the live stream ---
    await quiet(page);
    await liveStream(page, context, shots);

    // --- Settings ---
    await quiet(page);
    await settingsPage(page, problems, shots);

    // --- logout ends the session ---
    await quiet(page);
    await page.click('#logout');
    await page.waitForSelector('form.login');
    const after = await context.request.get(`${URL_}/api/v1/session`);
    assert.equal((await after.json()).user, null, 'logged out on the server too');

    // --- a viewer sees only their project and cannot reach another ---
    await page.fill('#email', env('VIEWER_EMAIL'));
    await page.fill('#password', PASSWORD);
    await page.click('#login-submit');
    await page.waitForSelector('.overview');
    assert.deepEqual(await page.$$eval('#project option', (o) => o.map((x) => x.value)), ['shop']);
    await quiet(page);
    await page.goto(`${URL_}/?project=blog&tz=UTC`);
    await page.waitForSelector('#no-access');
    assert.equal(await page.$$eval('.kpi', (k) => k.length), 0, 'no numbers of another project');
    const session = await (await context.request.get(`${URL_}/api/v1/session`)).json();
    const denied = await context.request.post(`${URL_}/api/v1/query?project=blog`, {
      headers: { 'x-tally-csrf': session.csrf_token, 'content-type': 'application/json' },
      data: { metrics: ['visitors'], date_range: '7d' },
    });
    assert.equal(denied.status(), 403, 'the API refuses the viewer too');
    assert.equal((await denied.json()).error, 'no_access');
    axeMinor.n += await axe(page, 'no access');
    shots.push(await shot(page, '06-viewer-no-access'));
    // No Settings tab for a viewer; the page, opened by its path, says why; the API
    // refuses too.
    assert.equal(await page.$('#tab-settings'), null);
    await page.goto(`${URL_}/settings?project=shop&tz=UTC`);
    await page.waitForSelector('#settings-refused');
    assert.match(await page.textContent('#settings-refused'), /viewer/);
    const settingsDenied = await context.request.get(`${URL_}/api/v1/settings`);
    assert.equal(settingsDenied.status(), 403);
    assert.equal((await settingsDenied.json()).error, 'admin_only');
    axeMinor.n += await axe(page, 'settings refused');
    shots.push(await shot(page, '18-settings-viewer'));

    await quiet(page);
    assert.deepEqual(problems, [], 'no console error, failed request or error answer');
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    console.log(`web test: screenshots in ${ARTIFACTS}: ${shots.map((s) => s.split('/').pop()).join(', ')}`);
    console.log(`web test: axe-core minor/moderate findings: ${axeMinor.n}`);
  }
});
