// Records the request bodies the real Segment and PostHog SDKs send, as golden fixtures
// for crates/server/tests/recorded_sdks.rs.
//
//   node tests/sdk/record.mjs [out_dir]      (default: crates/server/tests/fixtures/recorded)
//
// A capture server on 127.0.0.1 (random port) answers like Tally would and keeps every
// request (method, path with query, content-type / content-encoding / authorization, the
// raw body as base64). The Node SDKs run in this process; the Python SDKs run in
// record_python.py, started with the server's URL. Each SDK's requests go to
// <out_dir>/<sdk>.json. The write key is the placeholder REC_WRITE_KEY (see the README
// next to the recordings); ids and names are fixed so the Rust test can assert exactly.
import http from 'node:http';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Analytics } from '@segment/analytics-node';
import { PostHog } from 'posthog-node';

const HERE = dirname(fileURLToPath(import.meta.url));
const OUT = resolve(process.argv[2] || join(HERE, '../../crates/server/tests/fixtures/recorded'));
const REC_WRITE_KEY = 'REC_WRITE_KEY_0000000000000000000000000000000';

// Fixed ids, shared with record_python.py and the Rust test.
const USER = 'rec_user_1';
const ANON = 'rec_anon_1';
const ALIAS = 'rec_alias_1';
const GROUP = 'rec_group_1';
const EVENT = 'recorded_event';
const SEGMENT_NODE_TRACK_ID = '3f1e6a52-7c0d-4b8e-9a61-5d2c8e4f0a01';
const POSTHOG_NODE_CAPTURE_ID = '3f1e6a52-7c0d-4b8e-9a61-5d2c8e4f0a02';

// --- the capture server ----------------------------------------------------------------
const recorded = new Map(); // sdk name -> requests
let current = null;

const POSTHOG_CAPTURE = /^\/(e|i\/v0\/e|capture|batch|engage|track)\/?(\?|$)/;
const POSTHOG_FLAGS = /^\/(decide|flags)\/?(\?|$)/;

function answer(req) {
  const url = req.url;
  if (req.method === 'OPTIONS') return [204, null];
  if (req.method === 'POST' && /^\/v1\/[^/?]+\/?(\?|$)/.test(url)) return [200, { success: true }];
  if ((req.method === 'GET' || req.method === 'POST') && POSTHOG_CAPTURE.test(url)) return [200, { status: 1 }];
  if ((req.method === 'GET' || req.method === 'POST') && POSTHOG_FLAGS.test(url)) return [200, { featureFlags: {} }];
  return [404, { error: 'not_found' }];
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const headers = {};
    for (const h of ['content-type', 'content-encoding', 'authorization']) {
      if (req.headers[h] !== undefined) headers[h] = req.headers[h];
    }
    const entry = {
      method: req.method,
      path: req.url,
      headers,
      body_base64: Buffer.concat(chunks).toString('base64'),
    };
    if (!current) throw new Error(`request outside a recording: ${req.method} ${req.url}`);
    recorded.get(current).push(entry);
    const [status, body] = answer(req);
    const cors = {
      'access-control-allow-origin': req.headers.origin || '*',
      'access-control-allow-methods': 'GET, POST, OPTIONS',
      'access-control-allow-headers': req.headers['access-control-request-headers'] || '*',
      'access-control-allow-credentials': 'true',
      'access-control-max-age': '600',
    };
    if (body === null) {
      res.writeHead(status, cors);
      res.end();
    } else {
      res.writeHead(status, { ...cors, 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    }
    if (status >= 400) console.error(`record: ${current}: ${req.method} ${req.url} answered ${status}`);
  });
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const URL_ = `http://127.0.0.1:${server.address().port}`;
console.error(`record: capture server on ${URL_}`);

async function recording(sdk, run) {
  current = sdk;
  recorded.set(sdk, []);
  await run();
  // Late requests (none expected once the SDK has flushed) still land in this recording.
  await new Promise((r) => setTimeout(r, 200));
  current = null;
  const reqs = recorded.get(sdk);
  if (reqs.length === 0) throw new Error(`${sdk} sent nothing`);
  console.error(`record: ${sdk}: ${reqs.length} request(s): ${reqs.map((r) => `${r.method} ${r.path}`).join(', ')}`);
}

// --- @segment/analytics-node -------------------------------------------------------------
await recording('segment-node', async () => {
  const analytics = new Analytics({ writeKey: REC_WRITE_KEY, host: URL_, flushInterval: 200, maxRetries: 0 });
  const errors = [];
  analytics.on('error', (e) => errors.push(e));
  analytics.track({
    userId: USER, event: EVENT, messageId: SEGMENT_NODE_TRACK_ID,
    properties: { plan: 'pro', revenue: 42.5, seats: 3, nested: { tags: ['a', 'b'] } },
  });
  analytics.identify({ userId: USER, anonymousId: ANON, traits: { email: `${USER}@example.com`, name: 'Ada', plan: 'pro' } });
  analytics.page({ userId: USER, name: 'Pricing', category: 'Docs', properties: { path: '/pricing', url: 'https://example.com/pricing' } });
  analytics.group({ userId: USER, groupId: GROUP, traits: { name: 'Acme', employees: 50 } });
  analytics.alias({ userId: USER, previousId: ANON });
  await analytics.closeAndFlush({ timeout: 15_000 });
  if (errors.length) throw new Error(`segment-node errors: ${errors.map(String).join('; ')}`);
});

// --- posthog-node ------------------------------------------------------------------------
await recording('posthog-node', async () => {
  // The SDK's default transport (v0, POST /batch/), not capture v1.
  delete process.env.POSTHOG_CAPTURE_MODE;
  const client = new PostHog(REC_WRITE_KEY, { host: URL_, fetchRetryCount: 0 });
  const errors = [];
  client.on('error', (e) => errors.push(e));
  client.capture({
    distinctId: USER, event: EVENT, uuid: POSTHOG_NODE_CAPTURE_ID,
    properties: { plan: 'pro', amount: 9.99, nested: { tags: ['a', 'b'] } },
    groups: { company: GROUP },
  });
  client.identify({ distinctId: USER, properties: { email: `${USER}@example.com`, name: 'Ada' } });
  client.groupIdentify({ groupType: 'company', groupKey: GROUP, properties: { name: 'Acme', employees: 50 }, distinctId: USER });
  client.alias({ distinctId: USER, alias: ALIAS });
  await client.shutdown(15_000);
  if (errors.length) throw new Error(`posthog-node errors: ${errors.map(String).join('; ')}`);
});

// --- the Python SDKs, in record_python.py ---------------------------------------------------
const PYTHON = [join(HERE, '.venv/bin/python'), 'python3'].find((p) => p === 'python3' || existsSync(p));
for (const [sdk, which] of [['posthog-python', 'posthog'], ['segment-python', 'segment']]) {
  await recording(sdk, () => new Promise((ok, fail) => {
    const env = { ...process.env };
    delete env.POSTHOG_CAPTURE_MODE;
    const child = spawn(PYTHON, [join(HERE, 'record_python.py'), URL_, which], { stdio: 'inherit', env });
    child.on('error', fail);
    child.on('exit', (code) => (code === 0 ? ok() : fail(new Error(`record_python.py ${which} exited ${code}`))));
  }));
}

server.close();
mkdirSync(OUT, { recursive: true });
for (const [sdk, reqs] of recorded) {
  writeFileSync(join(OUT, `${sdk}.json`), `${JSON.stringify(reqs, null, 2)}\n`);
}
console.error(`record: wrote ${[...recorded.keys()].map((s) => `${s}.json`).join(', ')} to ${OUT}`);
