// Shared by the SDK tests: the server under test comes from the environment
// (TALLY_URL, WRITE_KEY, READ_KEY), as scripts/sdk-test.sh sets it.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

export const TALLY_URL = (process.env.TALLY_URL || '').replace(/\/+$/, '');
export const WRITE_KEY = process.env.WRITE_KEY || '';
export const READ_KEY = process.env.READ_KEY || '';

/** Passed as node:test's `skip` option: a reason when the server is not configured. */
export const SKIP = TALLY_URL && WRITE_KEY && READ_KEY
  ? false
  : 'set TALLY_URL, WRITE_KEY and READ_KEY (scripts/sdk-test.sh does)';

/** A suffix that keeps names and ids of this run apart from earlier runs on the same server. */
export const RUN = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** POST /api/v1/query with the read key; returns the parsed body or throws with the body. */
export async function query(body) {
  const res = await fetch(`${TALLY_URL}/api/v1/query`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': READ_KEY },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`query answered ${res.status}: ${text}`);
  return JSON.parse(text);
}

/** All stored events whose name is one of `names` (every page of them). */
export async function eventsNamed(names) {
  const out = [];
  const limit = 1000;
  for (let offset = 0; offset < 50 * limit; offset += limit) {
    const { results } = await query({
      kind: 'events',
      date_range: 'all',
      filters: [['is', 'event:name', names]],
      pagination: { limit, offset },
    });
    out.push(...results);
    if (results.length < limit) break;
  }
  return out;
}

/**
 * Polls the events query until `done(rows)` holds for the rows named `names` that pass
 * `keep`, for up to `timeoutMs`. Returns those rows. On time-out, fails showing what was
 * stored. `done` defaults to "at least one row".
 */
export async function waitForEvents(names, { keep = () => true, done = (rows) => rows.length > 0, timeoutMs = 10_000, settleMs = 300 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let rows = [];
  for (;;) {
    rows = (await eventsNamed(names)).filter(keep);
    if (done(rows)) {
      // Give late duplicates a moment to show up, so count checks are meaningful.
      if (settleMs > 0) {
        await sleep(settleMs);
        rows = (await eventsNamed(names)).filter(keep);
      }
      return rows;
    }
    if (Date.now() > deadline) {
      assert.fail(`timed out waiting for events ${JSON.stringify(names)}; stored: ${JSON.stringify(rows, null, 1)}`);
    }
    await sleep(150);
  }
}

/** The one row among `rows` named `event` (fails when there are none or several). */
export function one(rows, event, pred = () => true) {
  const hits = rows.filter((r) => r.event === event && pred(r));
  assert.equal(hits.length, 1, `expected exactly one ${event} row, found ${hits.length}: ${JSON.stringify(rows, null, 1)}`);
  return hits[0];
}

/** Asserts that an RFC 3339 UTC timestamp with microseconds lies within `slackMs` of `near`. */
export function assertTimeNear(ts, near = Date.now(), slackMs = 15_000, what = 'timestamp') {
  assert.match(ts, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, `${what} ${ts} is not RFC 3339 UTC with microseconds`);
  const t = Date.parse(ts);
  assert.ok(Math.abs(t - near) <= slackMs, `${what} ${ts} is ${(t - near) / 1000}s away from ${new Date(near).toISOString()}`);
}

/** Checks the fields every stored row has, and that its times are close to now. */
export function assertRowShape(row) {
  for (const k of ['uuid', 'type', 'event', 'timestamp', 'received_at', 'properties', 'traits', 'context']) {
    assert.ok(k in row, `row lacks ${k}: ${JSON.stringify(row)}`);
  }
  assert.match(row.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
  assertTimeNear(row.timestamp, Date.now(), 60_000, `${row.event} timestamp`);
  assertTimeNear(row.received_at, Date.now(), 60_000, `${row.event} received_at`);
  // The event time is the client's clock corrected for skew; here client and server share a
  // clock, so it may differ from the receive time only by the SDK's own queueing delay.
  const lag = Date.parse(row.received_at) - Date.parse(row.timestamp);
  assert.ok(lag >= -2000 && lag <= 15_000, `${row.event}: timestamp ${row.timestamp} vs received_at ${row.received_at}`);
}

/** A user or device id that is "absent": the server stores null (or, leniently, ""). */
export const absent = (v) => v === null || v === undefined || v === '';

/** POST a raw body to a Tally route; returns {status, body}. */
export async function post(path, body, headers = {}) {
  const res = await fetch(`${TALLY_URL}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: json ?? text };
}

export const basicAuth = (key) => `Basic ${Buffer.from(`${key}:`).toString('base64')}`;
