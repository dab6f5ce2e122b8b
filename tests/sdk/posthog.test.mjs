// The real PostHog Node SDK (posthog-node) against a running Tally server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { PostHog } from 'posthog-node';
import {
  TALLY_URL, WRITE_KEY, SKIP, RUN, waitForEvents, one, assertRowShape, absent, post,
} from './helpers.mjs';

test('posthog-node: capture, identify, groupIdentify, alias', { skip: SKIP }, async () => {
  const userId = `ph-user-${RUN}`;
  const anonId = `ph-anon-${RUN}`;
  const aliasId = `ph-alias-${RUN}`;
  const groupKey = `ph-acme-${RUN}`;
  const E_CAPTURE = `ph_signed_up_${RUN}`;
  const E_ANON = `ph_viewed_ad_${RUN}`;
  const captureId = randomUUID();

  // The SDK's own v0 transport (POST /batch/, gzip) is what is under test, not capture v1.
  delete process.env.POSTHOG_CAPTURE_MODE;
  const client = new PostHog(WRITE_KEY, { host: TALLY_URL, flushAt: 1, flushInterval: 0, fetchRetryCount: 1 });
  const errors = [];
  client.on('error', (e) => errors.push(e));

  client.capture({
    distinctId: userId, event: E_CAPTURE, uuid: captureId,
    properties: { plan: 'pro', amount: 9.99, nested: { tags: ['a', 'b'] } },
    groups: { company: groupKey },
  });
  // posthog-js style anonymous visitor: distinct id = device id, not identified.
  client.capture({ distinctId: anonId, event: E_ANON, properties: { $device_id: anonId, $is_identified: false, campaign: 'spring' } });
  client.capture({ distinctId: userId, event: '$pageview', properties: { $current_url: `https://example.com/pricing?run=${RUN}` } });
  client.identify({ distinctId: userId, properties: { email: `${userId}@example.com`, name: 'Ada' } });
  client.groupIdentify({ groupType: 'company', groupKey, properties: { name: 'Acme', employees: 50 }, distinctId: userId });
  client.alias({ distinctId: userId, alias: aliasId });
  const sentAt = Date.now();
  await client.shutdown(15_000);
  assert.deepEqual(errors.map(String), [], 'the SDK reported errors');

  const names = [E_CAPTURE, E_ANON, '$pageview', '$identify', '$groupidentify', '$create_alias'];
  const rows = await waitForEvents(names, {
    keep: (r) => r.user_id === userId || r.device_id === anonId,
    done: (rs) => names.every((n) => rs.some((r) => r.event === n)),
  });
  assert.equal(rows.length, names.length, `one row per call: ${JSON.stringify(rows, null, 1)}`);
  rows.forEach(assertRowShape);
  for (const r of rows) {
    assert.ok(Math.abs(Date.parse(r.timestamp) - sentAt) < 15_000, `${r.event} at ${r.timestamp}`);
  }

  const capture = one(rows, E_CAPTURE);
  assert.equal(capture.type, 'track');
  assert.equal(capture.user_id, userId);
  assert.equal(capture.uuid, captureId, 'the event uuid is kept');
  assert.equal(capture.group_id, groupKey, '$groups gives the group');
  assert.equal(capture.properties.plan, 'pro');
  assert.equal(capture.properties.amount, 9.99);
  assert.deepEqual(capture.properties.nested, { tags: ['a', 'b'] });
  assert.equal(capture.properties.$lib, 'posthog-node');

  const anon = one(rows, E_ANON);
  assert.equal(anon.type, 'track');
  assert.ok(absent(anon.user_id), `anonymous capture has no user id: ${anon.user_id}`);
  assert.equal(anon.device_id, anonId);
  assert.equal(anon.properties.campaign, 'spring');

  const pageview = one(rows, '$pageview');
  assert.equal(pageview.type, 'page');
  assert.equal(pageview.properties.$current_url, `https://example.com/pricing?run=${RUN}`);

  const identify = one(rows, '$identify');
  assert.equal(identify.type, 'identify');
  assert.equal(identify.user_id, userId);
  assert.deepEqual(identify.traits, { email: `${userId}@example.com`, name: 'Ada' });

  const group = one(rows, '$groupidentify');
  assert.equal(group.type, 'group');
  assert.equal(group.user_id, userId);
  assert.equal(group.group_id, groupKey);
  // PostHog's group type is kept with the traits.
  assert.deepEqual(group.traits, { name: 'Acme', employees: 50, group_type: 'company' });

  const alias = one(rows, '$create_alias');
  assert.equal(alias.type, 'alias');
  assert.equal(alias.user_id, userId);
});

test('posthog capture API: gzip, clock skew, offset, GET, bad token', { skip: SKIP }, async () => {
  const distinct = `ph-raw-${RUN}`;
  const E_SKEW = `ph_skewed_${RUN}`;
  const E_OFFSET = `ph_offset_${RUN}`;
  const E_GET = `ph_get_${RUN}`;

  // A client whose clock runs an hour fast: event 2 s before it was sent, by its clock.
  const fast = Date.now() + 3600_000;
  const batch = {
    api_key: WRITE_KEY,
    sent_at: new Date(fast).toISOString(),
    batch: [
      { event: E_SKEW, distinct_id: distinct, properties: { n: 1 }, timestamp: new Date(fast - 2000).toISOString() },
      // `offset` (ms before sending) wins over the timestamp.
      { event: E_OFFSET, distinct_id: distinct, properties: { n: 2 }, timestamp: new Date(fast).toISOString(), offset: 5000 },
    ],
  };
  let res = await fetch(`${TALLY_URL}/batch/`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
    body: gzipSync(JSON.stringify(batch)),
  });
  assert.equal(res.status, 200, await res.text());

  // posthog-js style GET with base64 data.
  const data = Buffer.from(JSON.stringify({ event: E_GET, distinct_id: distinct, properties: { token: WRITE_KEY, via: 'get' } })).toString('base64');
  res = await fetch(`${TALLY_URL}/e/?data=${encodeURIComponent(data)}&compression=base64`);
  assert.equal(res.status, 200, await res.text());

  const bad = await post('/i/v0/e', { api_key: 'not-a-key', event: `ph_refused_${RUN}`, distinct_id: distinct });
  assert.equal(bad.status, 401, JSON.stringify(bad.body));

  const rows = await waitForEvents([E_SKEW, E_OFFSET, E_GET], { done: (rs) => rs.length >= 3 });
  assert.equal(rows.length, 3, JSON.stringify(rows, null, 1));
  const skewed = one(rows, E_SKEW);
  let expected = Date.parse(skewed.received_at) - 2000;
  assert.ok(Math.abs(Date.parse(skewed.timestamp) - expected) <= 50,
    `stored ${skewed.timestamp}, expected received_at ${skewed.received_at} − 2 s`);
  const offset = one(rows, E_OFFSET);
  expected = Date.parse(offset.received_at) - 5000;
  assert.ok(Math.abs(Date.parse(offset.timestamp) - expected) <= 50,
    `stored ${offset.timestamp}, expected received_at ${offset.received_at} − 5 s`);
  assert.equal(one(rows, E_GET).properties.via, 'get');
  for (const r of rows) assert.equal(r.user_id, distinct);
});
