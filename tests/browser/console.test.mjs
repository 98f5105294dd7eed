// Drives the corecast web console (src/console/index.html, served at GET /) in a real
// browser: Debian's Chromium, headless, through playwright-core (no browser download).
//
//   node tests/browser/console.test.mjs        (tools/browser-test.sh builds and runs it)
//
// Environment:
//   CORECAST_BIN      the server binary (default target/test-release/corecast)
//   CHROMIUM          the browser (default /usr/bin/chromium)
//   CONSOLE_TEST_OUT  where screenshots go (default target/browser-test/)
//   CONSOLE_PAGE      optional: a file the browser gets instead of the page built into the
//                     binary (for working on the page without a rebuild, or for checking
//                     that a broken page fails this test); GET / from node still checks
//                     the built-in one
//
// Exits non-zero on the first failed check, and after TIMEOUT_MS whatever happens.
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const TIMEOUT_MS = 120_000;
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = path.resolve(repo, process.env.CORECAST_BIN || 'target/test-release/corecast');
const browserPath = process.env.CHROMIUM || '/usr/bin/chromium';
const outDir = path.resolve(repo, process.env.CONSOLE_TEST_OUT || 'target/browser-test');
const pageOverride = process.env.CONSOLE_PAGE ? path.resolve(process.env.CONSOLE_PAGE) : null;

const servers = new Set();
let browser = null;
let shot = 0;
const started = Date.now();

function log(msg) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${msg}`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

// ---------- servers ----------

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function startServer(name, port, adminPort, extra = []) {
  const args = ['--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`,
    '--workers', '2', '--drain-timeout', '1', ...extra];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const srv = { name, child, port, adminPort, output: '', exit: null };
  const keep = (d) => { srv.output = (srv.output + d).slice(-20_000); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  srv.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => { srv.exit = { code, signal }; servers.delete(srv); resolve(srv.exit); });
    child.on('error', (e) => { keep(`spawn error: ${e.message}\n`); srv.exit = { code: null, signal: null, error: e }; servers.delete(srv); resolve(srv.exit); });
  });
  servers.add(srv);
  return srv;
}

async function waitHealthy(srv, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (srv.exit) throw new Error(`${srv.name} exited early (${JSON.stringify(srv.exit)}):\n${srv.output}`);
    try {
      const res = await fetch(`http://127.0.0.1:${srv.port}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`${srv.name}: /healthz not 200 within ${ms} ms:\n${srv.output}`);
    await sleep(100);
  }
}

async function stopServer(srv, ms = 10_000) {
  if (srv.exit) return srv.exit;
  srv.child.kill('SIGTERM');
  const res = await Promise.race([srv.exited, sleep(ms).then(() => null)]);
  if (!res) {
    srv.child.kill('SIGKILL');
    await srv.exited;
    throw new Error(`${srv.name} did not exit within ${ms} ms of SIGTERM`);
  }
  return res;
}

async function getJson(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
  check(res.status === 200, `GET ${url} is 200 (got ${res.status})`);
  return res.json();
}

async function adminPublish(srv, body) {
  const res = await fetch(`http://127.0.0.1:${srv.adminPort}/publish`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    signal: AbortSignal.timeout(3000),
  });
  check(res.status === 202, `admin POST /publish is 202 (got ${res.status})`);
}

// ---------- page helpers ----------

async function screenshot(page, name) {
  shot += 1;
  await page.evaluate(() => window.scrollTo(0, 0));
  const file = path.join(outDir, `${String(shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`  screenshot ${path.relative(repo, file)}`);
}

// What a page shows, for failure messages.
async function describe(page) {
  return page.evaluate(() => {
    const t = (id) => (document.getElementById(id)?.textContent || '').trim().replace(/\s+/g, ' ');
    const msgs = [...document.querySelectorAll('#messages .msg')].slice(0, 5)
      .map((li) => `${li.dataset.kind}/${li.dataset.topic}: ${li.querySelector('.data')?.textContent.replace(/\s+/g, '')}`);
    return `status "${t('status')}"; subscriptions "${t('subscriptions')}"; stats "${t('stats-status')}"; ` +
      `newest messages [${msgs.join(' | ')}]`;
  }).catch((e) => `(page not readable: ${e.message})`);
}

async function explain(page, what, promise) {
  try {
    return await promise;
  } catch (e) {
    throw new Error(`${what}: ${e.message.split('\n')[0]}\n  page shows: ${await describe(page)}`);
  }
}

// Waits until #status is in `state` and says so; returns its text as read at that moment
// (while reconnecting it flips to "connecting" and back, so it is read in the same check).
async function waitStatus(page, state, ms = 15_000) {
  const handle = await explain(page, `waiting for #status "${state}"`, page.waitForFunction((state) => {
    const el = document.getElementById('status');
    return el.dataset.state === state && el.textContent.includes(state) ? el.textContent : false;
  }, state, { timeout: ms }));
  return handle.jsonValue();
}

// Waits for a message item whose topic (or broadcast) and JSON data match; data is
// compared as parsed JSON, so the page's formatting does not matter.
async function waitMessage(page, { topic, kind }, data, ms = 5000) {
  await explain(page, `waiting for ${kind || 'topic'} message ${topic ? `on "${topic}" ` : ''}${JSON.stringify(data)}`, page.waitForFunction(({ topic, kind, want }) => {
    for (const li of document.querySelectorAll('#messages .msg')) {
      if (topic !== undefined && li.dataset.topic !== topic) continue;
      if (kind !== undefined && li.dataset.kind !== kind) continue;
      const pre = li.querySelector('.data');
      try {
        if (JSON.stringify(JSON.parse(pre.textContent)) === want) return true;
      } catch { /* not this one */ }
    }
    return false;
  }, { topic, kind, want: JSON.stringify(data) }, { timeout: ms }));
}

async function subscribe(page, topic) {
  await page.fill('#topic-input', topic);
  await page.click('#subscribe-btn');
  await waitSubscribed(page, topic);
}

async function waitSubscribed(page, topic) {
  await explain(page, `waiting for the subscription to "${topic}" to be confirmed`,
    page.waitForSelector(`#subscriptions li[data-topic="${topic}"][data-state="ok"]`, { timeout: 5000 }));
}

async function statConnections(page) {
  return Number((await page.textContent('#stat-connections')).trim());
}

// ---------- the test ----------

async function main() {
  check(typeof fetch === 'function', 'node has fetch (node 20+, as playwright-core needs)');
  mkdirSync(outDir, { recursive: true });
  // Screenshots of an earlier run would pass for this one's.
  for (const f of readdirSync(outDir)) {
    if (/^(\d\d-.*|failure-page-.*)\.png$|^stats-before-restart\.json$/.test(f)) rmSync(path.join(outDir, f));
  }
  const port = await freePort();
  let adminPort = await freePort();
  while (adminPort === port) adminPort = await freePort();
  let srv;
  const steps = [];
  const step = (name, fn) => steps.push({ name, fn });
  let pageA, pageB;

  step('server starts and answers /healthz', async () => {
    srv = startServer('corecast', port, adminPort);
    await waitHealthy(srv);
    log(`  ${path.relative(repo, bin)} on 127.0.0.1:${port}, admin 127.0.0.1:${adminPort}`);
  });

  step('GET / is the console page and /stats.json has the documented shape', async () => {
    const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(3000) });
    check(res.status === 200, `GET / is 200 (got ${res.status})`);
    const type = res.headers.get('content-type') || '';
    check(type.startsWith('text/html'), `GET / content-type is text/html (got "${type}")`);
    const html = await res.text();
    check(html.includes('id="status"') && html.includes('/stats.json'), 'GET / body is the console');
    const st = await getJson(`http://127.0.0.1:${port}/stats.json`);
    for (const k of ['version', 'uptime_s', 'workers', 'connections', 'totals', 'samples']) {
      check(k in st, `stats.json has "${k}"`);
    }
    check(st.workers === 2, `stats.json workers is 2 (got ${st.workers})`);
    check(Array.isArray(st.samples), 'stats.json samples is an array');
    log(`  text/html console (${html.length} bytes); stats.json: ${st.samples.length} samples, ${st.connections} connections`);
  });

  step('two pages connect and the stats view counts both', async () => {
    // Baseline before any page, read rather than assumed 0. The server counts connections
    // still in their HTTP head too, so a sample taken while one of this test's own requests
    // was open is one too high: take the lower of two samples made after they closed.
    let base = Infinity;
    for (let i = 0; i < 2; i++) {
      await sleep(1100);
      base = Math.min(base, (await getJson(`http://127.0.0.1:${port}/stats.json`)).connections);
    }
    // Each page gets its own browser context (its own window: a background tab would have
    // its timers and animation frames throttled); playwright gives the browser a fresh
    // temporary profile, removed on close.
    browser = await chromium.launch({
      executablePath: browserPath,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
        // A page fulfilled by the test (CONSOLE_PAGE) has no loopback address of its own, and
        // Chromium's local-network-access check would then refuse its WebSocket to 127.0.0.1.
        ...(pageOverride ? ['--disable-features=LocalNetworkAccessChecks'] : [])],
    });
    pageA = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
    pageB = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
    if (pageOverride) log(`  CONSOLE_PAGE: the pages get ${pageOverride}, not the built-in page`);
    for (const [name, p] of [['A', pageA], ['B', pageB]]) {
      p.on('pageerror', (e) => { p.lastError = e; log(`  page ${name} uncaught error: ${e.message}`); });
      if (pageOverride) {
        await p.route(`http://127.0.0.1:${port}/`, (route) => route.fulfill({
          status: 200, contentType: 'text/html; charset=utf-8', body: readFileSync(pageOverride),
        }));
      }
      await p.goto(`http://127.0.0.1:${port}/`);
    }
    await waitStatus(pageA, 'open');
    await waitStatus(pageB, 'open');
    const want = base + 2;
    await pageA.waitForFunction((want) => document.getElementById('stat-connections').textContent.trim() === String(want),
      want, { timeout: 6000 }).catch(async () => {
      throw new Error(`#stat-connections shows ${await pageA.textContent('#stat-connections')}, want ${want}`);
    });
    const uptime = (await pageA.textContent('#stat-uptime')).trim();
    check(/^\d+[smhd]/.test(uptime), `#stat-uptime shows a duration (got "${uptime}")`);
    const rows = await pageA.locator('#stat-turns tbody tr').count();
    check(rows === 2, `per-worker table has 2 rows (got ${rows})`);
    const lines = await pageA.locator('#chart-connections polyline').count();
    check(lines === 1, 'connections chart has a line');
    log(`  both pages open; #stat-connections went from ${base} to ${want}; uptime ${uptime}`);
    await screenshot(pageA, 'connected');
  });

  step('a publish to "news" from page A reaches page B (and A)', async () => {
    await subscribe(pageA, 'news');
    await subscribe(pageB, 'news');
    await pageA.fill('#pub-topic', 'news');
    await pageA.fill('#pub-data', '{"hello":"browser"}');
    await pageA.click('#publish-btn');
    await waitMessage(pageB, { topic: 'news' }, { hello: 'browser' });
    await waitMessage(pageA, { topic: 'news' }, { hello: 'browser' });
    await pageA.waitForFunction(() => document.getElementById('pub-status').textContent.includes('published'), null, { timeout: 3000 });
    // Not JSON: an error is shown and nothing is sent.
    const before = await pageB.locator('#messages .msg').count();
    await pageA.fill('#pub-data', '{hello: browser');
    await pageA.click('#publish-btn');
    const err = await pageA.textContent('#pub-status');
    check(err.includes('not valid JSON'), `invalid JSON is refused with a message (got "${err}")`);
    await sleep(300);
    const after = await pageB.locator('#messages .msg').count();
    check(after === before, `nothing was sent for invalid JSON (${before} -> ${after} messages on B)`);
    log('  both subscribed; {"hello":"browser"} on topic news seen in A and B; invalid JSON refused');
    await screenshot(pageB, 'message');
  });

  step('a broadcast through the admin API reaches both pages', async () => {
    await adminPublish(srv, { data: { from: 'admin' } });
    await waitMessage(pageA, { kind: 'broadcast' }, { from: 'admin' });
    await waitMessage(pageB, { kind: 'broadcast' }, { from: 'admin' });
    log('  {"from":"admin"} broadcast seen in A and B');
    await screenshot(pageA, 'broadcast');
  });

  step('Pause holds messages back and Resume shows them', async () => {
    await pageB.click('#pause-btn');
    await adminPublish(srv, { topic: 'news', data: { while: 'paused' } });
    await pageB.waitForFunction(() => document.getElementById('msg-count').textContent.includes('1 waiting'), null, { timeout: 3000 });
    const shown = await pageB.evaluate(() => document.getElementById('messages').textContent.includes('paused'));
    check(!shown, 'a message is not listed while paused');
    await pageB.click('#pause-btn');
    await waitMessage(pageB, { topic: 'news' }, { while: 'paused' }, 2000);
    log('  paused: counted, not listed; resumed: listed');
  });

  step('phone width: no horizontal scroll, tap targets at least 40 px', async () => {
    await pageB.setViewportSize({ width: 375, height: 800 });
    await sleep(300);
    const m = await pageB.evaluate(() => {
      const small = [];
      for (const e of document.querySelectorAll('button, input, textarea')) {
        const r = e.getBoundingClientRect();
        if (r.width > 0 && r.height < 40) small.push(`${e.id || e.className || e.tagName} ${r.height}px`);
      }
      return { scroll: document.documentElement.scrollWidth, body: document.body.scrollWidth, small };
    });
    check(m.scroll <= 375 && m.body <= 375, `no horizontal scroll at 375 px (scrollWidth ${m.scroll}, body ${m.body})`);
    check(m.small.length === 0, `tap targets >= 40 px tall (too small: ${m.small.join(', ')})`);
    log(`  scrollWidth ${m.scroll} <= 375; every button and field >= 40 px tall`);
    await screenshot(pageB, 'phone');
  });

  step('server restart: pages reconnect and subscriptions come back', async () => {
    const snap = await getJson(`http://127.0.0.1:${port}/stats.json`);
    writeFileSync(path.join(outDir, 'stats-before-restart.json'), `${JSON.stringify(snap, null, 1)}\n`);
    const exit = await stopServer(srv);
    check(exit.code === 0, `SIGTERM drains and exits 0 (got ${JSON.stringify(exit)})`);
    const ta = await waitStatus(pageA, 'reconnecting', 5000);
    await waitStatus(pageB, 'reconnecting', 5000);
    // The drain's close frame (1001 going away) is what the page reports as the cause.
    check(ta.includes('1001'), `the page reports the server's close code 1001 (status "${ta}")`);
    await pageA.waitForFunction(() => document.getElementById('stats-status').textContent.includes('stats unavailable'), null, { timeout: 5000 });
    log(`  exit 0 after SIGTERM; page A: "${ta}"; stats unavailable shown`);
    await screenshot(pageA, 'reconnecting');
    srv = startServer('corecast (restarted)', port, adminPort);
    await waitHealthy(srv);
    // The backoff is capped at 10 s; the server was down for about a second.
    await waitStatus(pageA, 'open', 15_000);
    await waitStatus(pageB, 'open', 15_000);
    for (const p of [pageA, pageB]) await waitSubscribed(p, 'news');
    await adminPublish(srv, { topic: 'news', data: { after: 'restart' } });
    await waitMessage(pageA, { topic: 'news' }, { after: 'restart' });
    await waitMessage(pageB, { topic: 'news' }, { after: 'restart' });
    await pageA.waitForFunction(() => document.getElementById('stats-status').textContent.includes('live'), null, { timeout: 5000 });
    log('  both open again, "news" re-subscribed, admin publish after restart seen in A and B');
    await screenshot(pageA, 'restored');
  });

  step('Disconnect closes with 1000 and stays closed; Connect reopens and re-subscribes', async () => {
    await pageA.click('#connect-btn');
    const closed = await waitStatus(pageA, 'closed', 5000);
    check(closed.includes('1000'), `a user's disconnect is a normal close (status "${closed}")`);
    check((await pageA.textContent('#connect-btn')).trim() === 'Connect', 'the button then offers Connect');
    await sleep(1000);
    check((await pageA.getAttribute('#status', 'data-state')) === 'closed', 'no reconnect after a user disconnect');
    await pageA.click('#connect-btn');
    await waitStatus(pageA, 'open', 5000);
    await waitSubscribed(pageA, 'news');
    await adminPublish(srv, { topic: 'news', data: { after: 'reconnect' } });
    await waitMessage(pageA, { topic: 'news' }, { after: 'reconnect' });
    log(`  "${closed}", no retry for 1 s; Connect: open, "news" subscribed again, message seen`);
  });

  step('--no-console: GET / and /stats.json are 404', async () => {
    const p2 = await freePort();
    let a2 = await freePort();
    while (a2 === p2) a2 = await freePort();
    const plain = startServer('corecast --no-console', p2, a2, ['--no-console']);
    try {
      await waitHealthy(plain);
      for (const u of ['/', '/stats.json']) {
        const res = await fetch(`http://127.0.0.1:${p2}${u}`, { signal: AbortSignal.timeout(3000) });
        check(res.status === 404, `--no-console: GET ${u} is 404 (got ${res.status})`);
      }
    } finally {
      await stopServer(plain).catch(() => {});
    }
    log('  GET / and GET /stats.json are 404 with --no-console');
  });

  step('no uncaught errors in the pages', async () => {
    for (const p of [pageA, pageB]) check(!p.lastError, `no uncaught page error (${p.lastError && p.lastError.message})`);
  });

  let passed = 0;
  for (const [i, s] of steps.entries()) {
    log(`step ${i + 1}/${steps.length}: ${s.name}`);
    try {
      await s.fn();
    } catch (e) {
      console.error(`FAILED step ${i + 1}: ${s.name}\n${e.stack || e}`);
      for (const [name, p] of [['A', pageA], ['B', pageB]]) {
        if (!p || p.isClosed()) continue;
        await p.screenshot({ path: path.join(outDir, `failure-page-${name}.png`), fullPage: true }).catch(() => {});
        console.error(`page ${name} #status: ${await p.textContent('#status').catch(() => '?')}`);
      }
      if (srv) console.error(`server output (last part):\n${srv.output.slice(-4000)}`);
      console.log(`console: ${passed} passed, ${steps.length - passed} failed`);
      return 1;
    }
    passed += 1;
    log(`ok ${i + 1}: ${s.name}`);
  }
  console.log(`console: ${passed} passed, 0 failed (${((Date.now() - started) / 1000).toFixed(1)} s; screenshots in ${path.relative(repo, outDir) || outDir})`);
  return 0;
}

async function cleanup() {
  for (const s of [...servers]) s.child.kill('SIGKILL');
  if (browser) {
    const b = browser;
    browser = null;
    await Promise.race([b.close().catch(() => {}), sleep(5000)]);
  }
}

const watchdog = setTimeout(async () => {
  console.error(`TIMEOUT: the browser test did not finish within ${TIMEOUT_MS / 1000} s`);
  await cleanup();
  process.exit(2);
}, TIMEOUT_MS);

let code = 1;
try {
  code = await main();
} catch (e) {
  console.error(e.stack || e);
} finally {
  await cleanup();
  clearTimeout(watchdog);
}
process.exit(code);
