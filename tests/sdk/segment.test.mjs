// The real Segment Node SDK (@segment/analytics-node) against a running Tally server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Analytics } from '@segment/analytics-node';
import {
  TALLY_URL, WRITE_KEY, SKIP, RUN, waitForEvents, one, assertRowShape, absent, post, basicAuth,
} from './helpers.mjs';

/** A client that reports every HTTP answer and error, so a refused batch fails the test. */
function client() {
  const analytics = new Analytics({ writeKey: WRITE_KEY, host: TALLY_URL, flushAt: 20, flushInterval: 200, maxRetries: 2 });
  const answers = [];
  const errors = [];
  analytics.on('http_response', (r) => answers.push(r));
  analytics.on('error', (e) => errors.push(e));
  return { analytics, answers, errors };
}

function assertDelivered({ answers, errors }) {
  assert.deepEqual(errors, [], 'the SDK reported errors');
  assert.ok(answers.length > 0, 'the SDK sent nothing');
  for (const a of answers) {
    assert.equal(a.status, 200, `${a.url} answered ${a.status}`);
    assert.ok(a.url.endsWith('/v1/batch'), a.url);
  }
}

test('segment analytics-node: track, identify, page, screen, group, alias', { skip: SKIP }, async () => {
  const userId = `seg-user-${RUN}`;
  const anonymousId = `seg-anon-${RUN}`;
  const groupId = `seg-acme-${RUN}`;
  const E_TRACK = `seg_signed_up_${RUN}`;
  const E_ANON = `seg_viewed_ad_${RUN}`;
  const PAGE = `Pricing ${RUN}`;
  const SCREEN = `Home ${RUN}`;
  const trackId = randomUUID();

  const c = client();
  const { analytics } = c;
  analytics.track({
    userId, event: E_TRACK, messageId: trackId,
    properties: { plan: 'pro', revenue: 42.5, seats: 3, nested: { tags: ['a', 'b'] } },
    context: { groupId },
  });
  analytics.track({ anonymousId, event: E_ANON, properties: { campaign: 'spring' } });
  analytics.identify({ userId, anonymousId, traits: { email: `${userId}@example.com`, name: 'Ada', plan: 'pro' } });
  analytics.page({ userId, name: PAGE, category: 'Docs', properties: { path: '/pricing', url: 'https://example.com/pricing' } });
  analytics.page({ userId, properties: { path: '/unnamed' } });
  analytics.screen({ userId, name: SCREEN, properties: { orientation: 'portrait' } });
  analytics.screen({ userId, properties: { orientation: 'landscape' } });
  analytics.group({ userId, groupId, traits: { name: 'Acme', plan: 'enterprise', employees: 50 } });
  analytics.alias({ userId, previousId: anonymousId });
  const sentAt = Date.now();
  await analytics.closeAndFlush({ timeout: 15_000 });
  assertDelivered(c);

  const names = [E_TRACK, E_ANON, '$identify', PAGE, 'page_visit', SCREEN, 'screen_view', '$group', '$alias'];
  const mine = (r) => r.user_id === userId || r.device_id === anonymousId;
  const rows = await waitForEvents(names, {
    keep: mine,
    done: (rs) => names.every((n) => rs.some((r) => r.event === n)),
  });
  assert.equal(rows.length, names.length, `one row per call: ${JSON.stringify(rows, null, 1)}`);
  rows.forEach(assertRowShape);
  for (const r of rows) {
    assert.ok(Math.abs(Date.parse(r.timestamp) - sentAt) < 15_000, `${r.event} at ${r.timestamp}`);
  }

  const track = one(rows, E_TRACK);
  assert.equal(track.type, 'track');
  assert.equal(track.user_id, userId);
  assert.equal(track.uuid, trackId, 'a UUID messageId becomes the event id');
  assert.equal(track.group_id, groupId, 'context.groupId is stored as the group');
  assert.deepEqual(
    { plan: track.properties.plan, revenue: track.properties.revenue, seats: track.properties.seats, nested: track.properties.nested },
    { plan: 'pro', revenue: 42.5, seats: 3, nested: { tags: ['a', 'b'] } },
  );
  assert.equal(track.context.library?.name, '@segment/analytics-node', 'the rest of context is kept');

  const anon = one(rows, E_ANON);
  assert.equal(anon.type, 'track');
  assert.ok(absent(anon.user_id), `anonymous call has no user id: ${anon.user_id}`);
  assert.equal(anon.device_id, anonymousId, 'anonymousId is the device id');
  assert.equal(anon.properties.campaign, 'spring');

  const identify = one(rows, '$identify');
  assert.equal(identify.type, 'identify');
  assert.equal(identify.user_id, userId);
  assert.equal(identify.device_id, anonymousId);
  assert.deepEqual(identify.traits, { email: `${userId}@example.com`, name: 'Ada', plan: 'pro' });

  const page = one(rows, PAGE);
  assert.equal(page.type, 'page');
  assert.equal(page.user_id, userId);
  assert.equal(page.properties.path, '/pricing');
  assert.equal(page.properties.url, 'https://example.com/pricing');
  const unnamedPage = one(rows, 'page_visit');
  assert.equal(unnamedPage.type, 'page');
  assert.equal(unnamedPage.properties.path, '/unnamed');

  const screen = one(rows, SCREEN);
  assert.equal(screen.type, 'screen');
  assert.equal(screen.properties.orientation, 'portrait');
  const unnamedScreen = one(rows, 'screen_view');
  assert.equal(unnamedScreen.type, 'screen');
  assert.equal(unnamedScreen.properties.orientation, 'landscape');

  const group = one(rows, '$group');
  assert.equal(group.type, 'group');
  assert.equal(group.user_id, userId);
  assert.equal(group.group_id, groupId);
  assert.deepEqual(group.traits, { name: 'Acme', plan: 'enterprise', employees: 50 });

  const alias = one(rows, '$alias');
  assert.equal(alias.type, 'alias');
  assert.equal(alias.user_id, userId);
});

test('segment analytics-node: the same messageId sent twice is stored once', { skip: SKIP }, async () => {
  const userId = `seg-dedup-${RUN}`;
  const E_UUID = `seg_dedup_uuid_${RUN}`;
  const E_NODE = `seg_dedup_nodeid_${RUN}`;
  const uuidId = randomUUID();
  // The SDK's own messageIds are not UUIDs: "node-next-<ms>-<uuid>".
  const nodeId = `node-next-${Date.now()}-${randomUUID()}`;

  const c = client();
  for (let round = 0; round < 2; round++) {
    // Two separate requests, like an SDK retrying a batch whose answer it lost.
    c.analytics.track({ userId, event: E_UUID, messageId: uuidId, properties: { round } });
    c.analytics.track({ userId, event: E_NODE, messageId: nodeId, properties: { round } });
    await c.analytics.flush({ timeout: 15_000 });
  }
  await c.analytics.closeAndFlush({ timeout: 15_000 });
  assertDelivered(c);
  assert.ok(c.answers.length >= 2, `expected two requests, saw ${c.answers.length}`);

  const rows = await waitForEvents([E_UUID, E_NODE], {
    done: (rs) => rs.some((r) => r.event === E_UUID) && rs.some((r) => r.event === E_NODE),
    settleMs: 1000,
  });
  assert.equal(rows.filter((r) => r.event === E_UUID).length, 1, JSON.stringify(rows, null, 1));
  assert.equal(rows.filter((r) => r.event === E_NODE).length, 1, JSON.stringify(rows, null, 1));
  assert.equal(one(rows, E_UUID).uuid, uuidId);
  assert.equal(one(rows, E_UUID).properties.round, 0, 'the first copy is the one kept');
});

test('segment HTTP API: key in the body, clock skew corrected, bad key refused', { skip: SKIP }, async () => {
  const userId = `seg-raw-${RUN}`;
  const E_BODYKEY = `seg_body_key_${RUN}`;
  const E_SKEW = `seg_skewed_${RUN}`;

  // writeKey in the body instead of Basic auth, on a single-call route.
  let r = await post('/v1/track', { writeKey: WRITE_KEY, userId, event: E_BODYKEY, properties: { ok: true } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.success, true);

  // A client whose clock runs an hour fast: event 2 s before it was sent, by its clock.
  const fast = Date.now() + 3600_000;
  r = await post('/v1/batch', {
    batch: [{ type: 'track', userId, event: E_SKEW, timestamp: new Date(fast - 2000).toISOString(), messageId: randomUUID() }],
    sentAt: new Date(fast).toISOString(),
  }, { authorization: basicAuth(WRITE_KEY) });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.success, true);

  r = await post('/v1/track', { userId, event: `seg_refused_${RUN}` }, { authorization: basicAuth('not-a-key') });
  assert.equal(r.status, 401, JSON.stringify(r.body));

  const rows = await waitForEvents([E_BODYKEY, E_SKEW], {
    done: (rs) => rs.length >= 2,
  });
  assert.equal(rows.length, 2, JSON.stringify(rows, null, 1));
  assert.equal(one(rows, E_BODYKEY).properties.ok, true);
  const skewed = one(rows, E_SKEW);
  const expected = Date.parse(skewed.received_at) - 2000;
  assert.ok(Math.abs(Date.parse(skewed.timestamp) - expected) <= 50,
    `stored ${skewed.timestamp}, expected received_at ${skewed.received_at} − 2 s`);
});
