// Tally's own browser tracker (GET /js/tally.js) in headless Debian Chromium, on a page
// served from another loopback port, so every call is cross-origin (CORS preflight for
// x-api-key).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import {
  TALLY_URL, WRITE_KEY, SKIP, RUN, waitForEvents, eventsNamed, one, assertRowShape, absent,
} from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const skip = SKIP || (existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install chromium)`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const html = () => `<!doctype html>
<html><head><meta charset="utf-8"><title>Tally test home</title>
<script src="${TALLY_URL}/js/tally.js" data-api-key="${WRITE_KEY}"></script>
</head><body>
<button id="buy">Buy</button>
<a id="pricing" href="/pricing?utm_source=newsletter">Pricing</a>
<script>
  document.getElementById('buy').addEventListener('click', function () {
    tally.track('button_clicked', { color: 'blue' });
  });
  document.getElementById('pricing').addEventListener('click', function (e) {
    e.preventDefault();
    history.pushState({}, '', this.getAttribute('href'));
    document.title = 'Tally test pricing'; // as SPA routers do: after the URL changes
  });
</script>
</body></html>`;

let site; // the test site's origin, e.g. http://127.0.0.1:41234
let server;
let browser;

before(async () => {
  if (skip) return;
  server = http.createServer((req, res) => {
    if (req.url === '/favicon.ico') { res.writeHead(204).end(); return; }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(html());
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  site = `http://127.0.0.1:${server.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  await browser?.close();
  await new Promise((r) => (server ? server.close(r) : r()));
});

/** A fresh browser profile (so a new device id) with page-error and network-failure logs. */
async function newPage({ dnt = false, noKeepalive = false } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  const requests = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('request', (r) => requests.push(`${r.method()} ${r.url()}`));
  if (dnt) await page.addInitScript(() => Object.defineProperty(navigator, 'doNotTrack', { get: () => '1' }));
  if (noKeepalive) await page.addInitScript(() => { delete Request.prototype.keepalive; });
  return { context, page, problems, requests };
}

const stored = (page) => page.evaluate(() => ({
  device: localStorage.getItem('tally_device_id'),
  session: JSON.parse(localStorage.getItem('tally_session') || 'null'),
  user: localStorage.getItem('tally_user_id'),
}));

test('tracker: page views, SPA navigation, track, identify, unload flush', { skip }, async () => {
  const { context, page, problems } = await newPage();
  const userId = `web-user-${RUN}`;
  await page.goto(`${site}/`);
  await page.waitForFunction(() => window.tally && window.tally.__tally, null, { timeout: 10_000 })
    .catch(() => assert.fail(`window.tally missing: is ${TALLY_URL}/js/tally.js served? ${problems.join('; ')}`));

  await page.click('#buy');
  await sleep(1500); // the timed flush (about 1 s) sends the first page view and the click
  await page.click('#pricing');
  await page.waitForURL('**/pricing?utm_source=newsletter');
  // identify and the event after it are still queued (1 s batching) when the page closes,
  // so they reach the server only through the pagehide/visibilitychange flush.
  await page.evaluate((u) => {
    tally.identify(u, { email: `${u}@example.com`, plan: 'pro' });
    tally.track('checkout_started', { step: 1 });
  }, userId);
  const ids = await stored(page);
  assert.match(ids.device ?? '', /^[0-9a-f-]{36}$/, 'a device id is kept in localStorage');
  assert.match(ids.session?.id ?? '', /^[0-9a-f-]{36}$/, 'a session id is kept in localStorage');
  assert.equal(ids.user, userId);
  await page.close({ runBeforeUnload: true });

  const names = ['page_visit', 'button_clicked', '$identify', 'checkout_started'];
  const rows = await waitForEvents(names, {
    keep: (r) => r.device_id === ids.device,
    done: (rs) => rs.filter((r) => r.event === 'page_visit').length >= 2 && names.every((n) => rs.some((r) => r.event === n)),
    settleMs: 1500,
  });
  await context.close();
  assert.deepEqual(problems, []);
  assert.equal(rows.length, 5, `2 page views, a click, an identify, a track: ${JSON.stringify(rows, null, 1)}`);
  rows.forEach(assertRowShape);
  for (const r of rows) {
    assert.equal(r.device_id, ids.device, `${r.event}: device id`);
    assert.equal(r.session_id, ids.session.id, `${r.event}: session id`);
    assert.equal(r.context.source, 'product', `${r.event}: context.source`);
  }

  const views = rows.filter((r) => r.event === 'page_visit').sort((a, b) => a.timestamp.localeCompare(b.timestamp));
  const [home, pricing] = views.map((r) => r.properties);
  assert.equal(home.page_path, '/');
  assert.equal(home.page_url, `${site}/`);
  assert.equal(home.page_title, 'Tally test home');
  assert.equal(home.page_referrer, '');
  assert.ok(home.language, 'language');
  assert.ok(home.timezone, 'timezone');
  assert.equal(home.utm_source, undefined);
  assert.equal(pricing.page_path, '/pricing');
  assert.equal(pricing.page_url, `${site}/pricing?utm_source=newsletter`);
  assert.equal(pricing.page_title, 'Tally test pricing');
  assert.equal(pricing.page_referrer, `${site}/`);
  assert.equal(pricing.utm_source, 'newsletter');
  for (const v of views) assert.ok(absent(v.user_id), 'page views before identify are anonymous');

  const click = one(rows, 'button_clicked');
  assert.equal(click.properties.color, 'blue');
  assert.ok(absent(click.user_id), 'anonymous before identify');

  const identify = one(rows, '$identify');
  assert.equal(identify.type, 'identify');
  assert.equal(identify.user_id, userId);
  assert.deepEqual(identify.traits, { email: `${userId}@example.com`, plan: 'pro' });

  const checkout = one(rows, 'checkout_started');
  assert.equal(checkout.user_id, userId, 'events after identify carry the user id');
  assert.equal(checkout.properties.step, 1);
});

test('tracker: group adds context.group_id; sendBeacon fallback (?api_key=) on unload', { skip }, async () => {
  // Without fetch keepalive the unload flush goes by sendBeacon, with the key in the URL.
  const { context, page, problems } = await newPage({ noKeepalive: true });
  const groupId = `web-acme-${RUN}`;
  await page.goto(`${site}/`);
  await page.waitForFunction(() => window.tally && window.tally.__tally, null, { timeout: 10_000 });
  await page.evaluate((g) => {
    tally.group(g, { account_name: 'Acme', group_type: 'Account' });
    tally.track('report_exported', { format: 'csv' });
  }, groupId);
  const ids = await stored(page);
  await page.close({ runBeforeUnload: true });

  const rows = await waitForEvents(['page_visit', '$group', 'report_exported'], {
    keep: (r) => r.device_id === ids.device,
    done: (rs) => rs.length >= 3,
    settleMs: 1000,
  });
  await context.close();
  assert.deepEqual(problems, []);
  assert.equal(rows.length, 3, JSON.stringify(rows, null, 1));
  const group = one(rows, '$group');
  assert.equal(group.type, 'group');
  assert.equal(group.group_id, groupId);
  assert.deepEqual(group.traits, { account_name: 'Acme', group_type: 'Account' });
  assert.equal(one(rows, 'report_exported').group_id, groupId, 'later events carry the group');
  assert.ok(absent(one(rows, 'page_visit').group_id), 'the page view came before group()');
});

test('tracker: Do Not Track sends and stores nothing', { skip }, async () => {
  const { context, page, problems, requests } = await newPage({ dnt: true });
  const probe = `dnt_probe_${RUN}`;
  await page.goto(`${site}/dnt-${RUN}`);
  await page.waitForFunction(() => window.tally && window.tally.__tally, null, { timeout: 10_000 });
  await page.click('#buy');
  await page.click('#pricing');
  await page.evaluate((p) => {
    tally.identify('dnt-user', { email: 'x@example.com' });
    tally.group('dnt-group');
    tally.track(p, {});
    tally.flush();
  }, probe);
  await sleep(1500);
  const keys = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('tally_')));
  await page.close({ runBeforeUnload: true });
  await sleep(1500);
  await context.close();

  assert.deepEqual(problems, []);
  assert.deepEqual(keys, [], 'nothing stored in localStorage');
  const toTally = requests.filter((r) => r.includes(TALLY_URL) && !r.endsWith('/js/tally.js'));
  assert.deepEqual(toTally, [], 'no request to Tally but the script itself');
  assert.equal((await eventsNamed([probe])).length, 0);
  const views = (await eventsNamed(['page_visit'])).filter((r) => r.properties?.page_path === `/dnt-${RUN}`);
  assert.equal(views.length, 0);
});
