// The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against a real Tally server that scripts/web-test.sh started and
// seeded with projects and users. This test sends the events itself, works out the
// Overview's numbers by hand below, and checks the screen against them and against the
// query API's answers for the same queries.
//
// Env: TALLY_URL, SHOP_WRITE_KEY, SHOP_READ_KEY, BLOG_WRITE_KEY, ADMIN_EMAIL,
// VIEWER_EMAIL, PASSWORD, ARTIFACTS (screenshot folder).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
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
const KPI_METRICS = ['visitors', 'visits', 'pageviews', 'views_per_visit', 'bounce_rate', 'visit_duration'];

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

async function seed() {
  const r = await api('/api/track', { key: env('SHOP_WRITE_KEY'), body: EVENTS });
  assert.equal(r.accepted, EVENTS.length, JSON.stringify(r));
  const deadline = Date.now() + 15_000;
  for (;;) {
    const q = await shopQuery({ metrics: ['events'], date_range: 'all' });
    if (q.results[0].metrics[0] >= EVENTS.length) {
      assert.equal(q.results[0].metrics[0], EVENTS.length);
      return;
    }
    assert.ok(Date.now() < deadline, 'the events did not reach the store within 15 s');
    await new Promise((r) => setTimeout(r, 100));
  }
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

test('the dashboard: login, overview numbers, filters, projects, access, accessibility', { timeout: 180_000 }, async () => {
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
  let axeMinor = 0;
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const problems = watch(page);

    // --- login page; a wrong password is refused ---
    await page.goto(`${URL_}/?tz=UTC`);
    await page.waitForSelector('form.login');
    assert.equal(new URL(page.url()).pathname, '/login', 'not logged in: the login page');
    axeMinor += await axe(page, 'login');
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
    axeMinor += await axe(page, 'overview');
    shots.push(await shot(page, '03-overview-7d'));

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

    // --- the project switcher, and the empty state of a project without events ---
    await page.selectOption('#project', 'blog');
    await page.waitForSelector('#empty .empty-state');
    const snippet = await page.textContent('#snippet');
    assert.ok(snippet.includes(`${URL_}/js/tally.js`) && snippet.includes(env('BLOG_WRITE_KEY')), snippet);
    assert.match(await page.textContent('#curl'), /curl -s .*\/api\/track -H 'x-api-key: /);
    axeMinor += await axe(page, 'empty project');
    shots.push(await shot(page, '05-empty-project'));

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
    axeMinor += await axe(page, 'no access');
    shots.push(await shot(page, '06-viewer-no-access'));

    await quiet(page);
    assert.deepEqual(problems, [], 'no console error, failed request or error answer');
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    console.log(`web test: screenshots in ${ARTIFACTS}: ${shots.map((s) => s.split('/').pop()).join(', ')}`);
    console.log(`web test: axe-core minor/moderate findings: ${axeMinor}`);
  }
});
