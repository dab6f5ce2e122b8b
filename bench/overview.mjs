// The Overview in headless Chromium (Debian's, through playwright-core) against a Tally
// that bench/overview.sh started on a generated dataset: how long until the page is
// fully drawn (every request answered and drawn: <html data-pending="0"> after the
// first request went out), cold (the server's first look at these questions: every tile
// computed by the store) and then warm (the same view opened again in a new tab, as a
// colleague would: the server's cache answers). Prints JSON.
//
//   node bench/overview.mjs URL EMAIL PASSWORD PROJECT RUNS
// playwright-core is the web test's, in web/node_modules.
const { chromium } = await import(new URL('../web/node_modules/playwright-core/index.mjs', import.meta.url).href);

const [url, email, password, project, runs] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
const login = await context.newPage();
await login.goto(`${url}/login`);
await login.fill('#email', email);
await login.fill('#password', password);
await login.click('#login-submit');
await login.waitForSelector('.shell');
await login.close();

/** Opens the Overview in a new tab; ms from navigation start until fully drawn. */
async function open(range) {
  const page = await context.newPage();
  const problems = [];
  page.on('response', (r) => r.status() >= 400 && problems.push(`${r.url()} ${r.status()}`));
  await page.goto(`${url}/?project=${project}&range=${range}&tz=UTC`);
  await page.waitForFunction(() => document.querySelectorAll('.kpi[data-value]').length === 6, null, { timeout: 600_000 });
  await page.waitForFunction(() => document.documentElement.dataset.pending === '0', null, { timeout: 600_000, polling: 10 });
  const ms = await page.evaluate(() => performance.now());
  const requests = await page.evaluate(() => performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/v1/query')).length);
  await page.close();
  if (problems.length) throw new Error(`error answers: ${problems.join(', ')}`);
  return { ms, requests };
}

const out = {};
for (const range of ['28d', '91d']) {
  const cold = await open(range);
  const warm = [];
  for (let i = 0; i < Number(runs); i++) warm.push((await open(range)).ms);
  warm.sort((a, b) => a - b);
  out[range] = { cold_ms: cold.ms, requests: cold.requests, warm_ms: warm, warm_median_ms: warm[Math.floor(warm.length / 2)] };
}
console.log(JSON.stringify(out));
await browser.close();
