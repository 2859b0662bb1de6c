// Drives the gateway's web page (gateway/src/web/) in Debian's Chromium through
// playwright-core, for tests/tests/web.rs. Usage: node web.mjs '<scenario JSON>'.
// Scenarios: `player` (resolve, play, download, seek, bad URLs, screenshot) and `key` (a
// tenant whose resolve needs an API key). Prints one JSON line of what it saw; the Rust
// test makes the assertions (and compares bytes), so this file only observes.
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

const scenario = JSON.parse(process.argv[2]);
const WAIT = 60_000;

// Without the background-networking flags a closed network makes Chromium hang on lookups.
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const profile = mkdtempSync(join(tmpdir(), 'streamgate-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ARGS,
  acceptDownloads: true,
  viewport: { width: 1100, height: 860 },
});
const out = { console: [] };
try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => { if (m.type() === 'error') out.console.push(m.text()); });
  page.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`));
  if (scenario.mode === 'player') await player(page, scenario);
  else if (scenario.mode === 'key') await key(page, scenario);
  else throw new Error(`unknown mode ${scenario.mode}`);
} catch (e) {
  // What was seen up to the failure, for the test's message.
  out.error = String(e && e.stack || e);
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));

/** Records every `/v1/stream` response: status, the request's Range, Content-Range. */
function watchStreams(page) {
  const seen = [];
  page.on('response', async (r) => {
    if (new URL(r.url()).pathname !== '/v1/stream') return;
    const headers = await r.request().allHeaders();
    seen.push({
      status: r.status(),
      range: headers.range || null,
      content_range: r.headers()['content-range'] || null,
    });
  });
  return seen;
}

/** Types `url` in the page's field, presses Enter, returns `/v1/resolve`'s status and JSON. */
async function resolve(page, url) {
  const field = page.getByLabel('Media URL');
  await field.fill(url);
  const [resp] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === '/v1/resolve'),
    field.press('Enter'),
  ]);
  const body = await resp.json().catch(() => null);
  const sent = await resp.request().allHeaders();
  if (resp.ok()) await page.locator('#result').waitFor({ state: 'visible' });
  else await page.locator('#problem').waitFor({ state: 'visible' });
  return { status: resp.status(), body, sent };
}

/** Samples `el.currentTime` until it passes `past` (or WAIT runs out). */
async function playedPast(page, selector, past) {
  await page.waitForFunction(([s, t]) => document.querySelector(s).currentTime > t,
    [selector, past], { timeout: WAIT, polling: 100 });
  return page.$eval(selector, (v) => v.currentTime);
}

async function player(page, s) {
  const streams = watchStreams(page);
  const nav = await page.goto(s.base + '/');
  out.page = { status: nav.status(), headers: nav.headers(), title: await page.title() };

  // Resolve the short fixture; the title gets the focus.
  const first = await resolve(page, s.video);
  out.resolve = { status: first.status, answer: first.body };
  out.focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  out.rows = await page.$$eval('#formats tbody tr',
    (rows) => rows.map((r) => [...r.children].map((c) => c.textContent.trim())));
  const id = first.body.formats[0].id;

  // Play it from the keyboard; currentTime advances.
  await page.getByRole('button', { name: `Play format ${id}` }).focus();
  await page.keyboard.press('Enter');
  const t0 = await playedPast(page, '#video', 0.3);
  const t1 = await playedPast(page, '#video', t0 + 1.0);
  out.play = { t0, t1, paused: await page.$eval('#video', (v) => v.paused) };
  mkdirSync(dirname(s.screenshot), { recursive: true });
  await page.screenshot({ path: s.screenshot, fullPage: true });

  // Download it through the link.
  const link = page.getByRole('link', { name: `Download format ${id}` });
  const href = new URL(await link.getAttribute('href'), s.base).href;
  const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
  const saved = join(s.downloads, 'download.bin');
  await download.saveAs(saved);
  out.download = {
    href,
    filename: download.suggestedFilename(),
    sha256: createHash('sha256').update(readFileSync(saved)).digest('hex'),
  };

  // A long fixture: play, then seek to the middle.
  const long = await resolve(page, s.seek);
  out.seek = { status: long.status };
  const longId = long.body.formats[0].id;
  await page.getByRole('button', { name: `Play format ${longId}` }).click();
  await playedPast(page, '#video', 0.3);
  const before = streams.length;
  const mid = await page.$eval('#video', (v) => { v.currentTime = v.duration / 2; return v.duration / 2; });
  const after = await playedPast(page, '#video', mid + 0.5);
  out.seek = {
    ...out.seek, mid, after,
    duration: await page.$eval('#video', (v) => v.duration),
    requests: streams.slice(before),
  };
  out.streams = streams;

  // Bad URLs: each shows its problem.
  out.bad = [];
  for (const url of s.bad) {
    const r = await resolve(page, url);
    out.bad.push({
      url, status: r.status, code: r.body && r.body.code,
      message: (await page.locator('#problem').innerText()).trim(),
    });
  }
}

async function key(page, s) {
  await page.goto(s.base + '/');
  out.header = await page.evaluate(() => document.body.dataset.keyHeader);
  out.field_visible_at_start = await page.locator('#key-field').isVisible();

  const without = await resolve(page, s.url);
  out.without = {
    status: without.status,
    message: (await page.locator('#problem').innerText()).trim(),
  };

  await page.getByLabel('API key').fill(s.key);
  const withKey = await resolve(page, s.url);
  out.with_key = {
    status: withKey.status,
    sent: withKey.sent[out.header] || null,
    title: (await page.locator('#title').innerText()).trim(),
  };
  out.stored = await page.evaluate(() => sessionStorage.getItem('streamgate.api-key'));
  await page.reload();
  out.after_reload = await page.getByLabel('API key').inputValue();
  const other = await page.context().newPage();
  await other.goto(s.base + '/');
  out.other_tab = await other.getByLabel('API key').inputValue();
}
