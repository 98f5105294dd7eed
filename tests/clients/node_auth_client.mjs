#!/usr/bin/env node
// Checks corecast's token auth with an independent client: the `ws` package from npm.
//
//   node tests/clients/node_auth_client.mjs < plan.json
//
// The plan on stdin, and every check, are those of tests/clients/py_auth_client.py: each good
// token arrives in the Authorization header, in a connect message and in the query (401
// without --auth-query-token), then subscribes and publishes within its grant and outside
// it; good[0]'s user refreshes with another user's token (refused) and its own (renewed) and
// tries /echo without a token and with one; each bad token is refused with 401 in the header
// and with close 4001 in a connect message, its class as the reason.
//
// Prints what the server should have counted as one JSON line last, for the test to compare
// with /metrics. Exits 0 when everything matched, 1 with a message naming the first mismatch,
// 2 on a missing `ws` package.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';

let WebSocket;
try {
  ({ default: WebSocket } = await import('ws'));
} catch (e) {
  console.error(`node_auth_client: the \`ws\` package is missing (${e.message}); run tools/install-test-deps.sh`);
  process.exit(2);
}

const TIMEOUT_MS = 15000; // a reply that should come (a watchdog: CI machines can be slow)

class Mismatch extends Error {}
let checks = 0;
// What the server should count, per server: closes by reason and refusals by reason.
const counts = {
  main: { upgrade_refused: 0, connect_refused: 0, refusals: {} },
  no_query: { upgrade_refused: 0 },
};

function check(cond, what) {
  checks += 1;
  if (!cond) throw new Mismatch(what);
}

function refused(reason) {
  const r = counts.main.refusals;
  r[reason] = (r[reason] || 0) + 1;
}

const show = (v) => JSON.stringify(v);

/** A connection whose incoming messages queue up until read with a timeout. */
class Client {
  constructor(url, token) {
    const options = token === undefined ? {} : { headers: { Authorization: `Bearer ${token}` } };
    this.queue = [];
    this.waiter = null;
    this.ws = new WebSocket(url, options);
    this.ws.on('message', (data, isBinary) => {
      this.queue.push({ data, isBinary });
      this.wake();
    });
    this.ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString('utf8') };
      this.wake();
    });
    this.ws.on('error', (e) => {
      this.error = e;
      this.wake();
    });
  }

  /** Opens `url`; resolves with the client, or with `{status, headers, body}` if the server
   *  answered the upgrade with an HTTP status. */
  static open(url, token) {
    const c = new Client(url, token);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Mismatch(`${url}: no handshake within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
      c.ws.once('open', () => { clearTimeout(t); resolve(c); });
      c.ws.once('unexpected-response', (req, res) => {
        const chunks = [];
        res.on('data', (d) => chunks.push(d));
        res.on('end', () => {
          clearTimeout(t);
          req.destroy();
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') });
        });
      });
      c.ws.once('error', (e) => { clearTimeout(t); reject(e); });
    });
  }

  wake() {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w();
    }
  }

  /** Next message, or null after `ms` without one. */
  async next(ms) {
    if (this.queue.length === 0 && this.closed === undefined && !this.error) {
      await new Promise((resolve) => {
        const t = setTimeout(() => { this.waiter = null; resolve(); }, ms);
        this.waiter = () => { clearTimeout(t); resolve(); };
      });
    }
    if (this.queue.length > 0) return this.queue.shift();
    if (this.error) throw new Mismatch(`connection error ${this.error.message}`);
    if (this.closed !== undefined) throw new Mismatch(`connection closed (${show(this.closed)})`);
    return null;
  }

  async recvJson(who) {
    let m;
    try {
      m = await this.next(TIMEOUT_MS);
    } catch (e) {
      throw new Mismatch(`${who}: ${e.message}`);
    }
    check(m !== null, `${who}: no message within ${TIMEOUT_MS} ms`);
    check(!m.isBinary, `${who}: expected a text frame, got a binary one`);
    const text = m.data.toString('utf8');
    try {
      return JSON.parse(text);
    } catch {
      throw new Mismatch(`${who}: reply is not JSON: ${text.slice(0, 200)}`);
    }
  }

  async request(obj, who) {
    this.ws.send(JSON.stringify(obj));
    return this.recvJson(who);
  }

  /** Waits for the server's close; returns {code, reason}. */
  async closedWith(who) {
    for (;;) {
      let m;
      try {
        m = await this.next(TIMEOUT_MS);
      } catch {
        if (this.error) throw new Mismatch(`${who}: connection error ${this.error.message}`);
        return this.closed;
      }
      if (m === null) throw new Mismatch(`${who}: still open after ${TIMEOUT_MS} ms`);
      throw new Mismatch(`${who}: got ${m.data.toString('utf8').slice(0, 200)} instead of a close`);
    }
  }

  /** Closes and waits for the server's answer, so that it has forgotten the connection's
   *  subscriptions before the next step publishes. */
  async close() {
    if (this.closed !== undefined) return;
    this.ws.close(1000);
    await this.closedWith('closing');
  }
}

async function openWs(url, token, who) {
  const c = await Client.open(url, token);
  check(c instanceof Client, `${who}: upgrade refused with HTTP ${c.status} ${c.body}`);
  return c;
}

/** Compares a JSON object with the expected one key by key, then checks for extra keys. */
function expectFields(got, want, who) {
  check(got !== null && typeof got === 'object' && !Array.isArray(got), `${who}: expected a JSON object, got ${show(got)}`);
  for (const [key, value] of Object.entries(want)) {
    check(Object.hasOwn(got, key), `${who}: field ${show(key)} missing in ${show(got)}`);
    check(isDeepStrictEqual(got[key], value), `${who}: field ${show(key)} is ${show(got[key])}, expected ${show(value)} (whole reply ${show(got)})`);
  }
  const extra = Object.keys(got).filter((k) => !Object.hasOwn(want, k)).sort();
  check(extra.length === 0, `${who}: unexpected fields ${show(extra)} in ${show(got)}`);
}

function expectError(got, wantId, code, who) {
  check(got !== null && typeof got === 'object' && got.op === 'error', `${who}: expected an error reply, got ${show(got)}`);
  check(isDeepStrictEqual(Object.keys(got).sort(), ['code', 'id', 'message', 'op']), `${who}: error fields ${show(Object.keys(got))}`);
  check(got.id === wantId, `${who}: id ${show(got.id)}, expected ${show(wantId)}`);
  check(got.code === code, `${who}: code ${show(got.code)}, expected ${show(code)} (${got.message})`);
  check(typeof got.message === 'string' && got.message !== '', `${who}: message should be a non-empty string`);
}

/** `{"op":"ok","id":..,["user":..,]"expires_in":N}` with N what is left of `exp`. */
function expectExpiresIn(got, wantId, exp, who, user) {
  const want = { op: 'ok', id: wantId };
  if (user !== undefined) want.user = user;
  check(Number.isInteger(got.expires_in), `${who}: expires_in missing or not an integer: ${show(got)}`);
  const left = exp - Date.now() / 1000;
  check(left - 2 <= got.expires_in && got.expires_in <= left + 1, `${who}: expires_in ${got.expires_in}, but the token has ${left.toFixed(1)} s left`);
  want.expires_in = got.expires_in;
  expectFields(got, want, who);
}

/** The upgrade is refused with `status` and a `WWW-Authenticate` that contains `challenge`;
 *  neither the response's head nor its body holds the token. */
async function expectHttpRefusal(url, token, status, challenge, who) {
  const got = await Client.open(url, token);
  if (got instanceof Client) {
    await got.close();
    throw new Mismatch(`${who}: the upgrade was accepted, expected HTTP ${status}`);
  }
  check(got.status === status, `${who}: HTTP ${got.status}, expected ${status}`);
  const header = got.headers['www-authenticate'] || '';
  check(header.includes(challenge), `${who}: WWW-Authenticate ${show(header)} lacks ${show(challenge)}`);
  if (token !== undefined) {
    const secretPart = token.split('.').pop() || token;
    check(!got.body.includes(secretPart) && !show(got.headers).includes(secretPart), `${who}: the response repeats the token`);
  }
}

async function useGrant(c, grant, who) {
  expectFields(await c.request({ op: 'subscribe', topic: grant.subscribe, id: 1 }, `${who} subscribe`), { op: 'ok', id: 1 },
    `${who} subscribe within the grant`);
  const data = { from: who };
  c.ws.send(JSON.stringify({ op: 'publish', topic: grant.publish, data, id: 2 }));
  // The publisher's ok and its own message (it subscribed) may come in either order.
  const got = [await c.recvJson(`${who} publish`), await c.recvJson(`${who} publish`)].sort((a, b) => (a.op < b.op ? -1 : 1));
  expectFields(got[0], { op: 'message', topic: grant.publish, data }, `${who} own message`);
  expectFields(got[1], { op: 'ok', id: 2 }, `${who} publish within the grant`);
  expectError(await c.request({ op: 'subscribe', topic: grant.denied, id: 3 }, who), 3, 'forbidden', `${who} subscribe outside the grant`);
  refused('subscribe');
  expectError(await c.request({ op: 'publish', topic: grant.denied, data: 1, id: 4 }, who), 4, 'forbidden', `${who} publish outside the grant`);
  refused('publish');
  expectFields(await c.request({ op: 'echo', id: 'e', data: who }, who), { op: 'echo', id: 'e', data: who }, `${who} echo after the refusals`);
}

async function checkGood(plan, g) {
  const { url, grant } = plan;
  // 1. In the Authorization header: connected from the upgrade on; a connect message on top
  //    (a token both in the header and in a connect message) is a second connect.
  let who = `${g.what} in the header`;
  let c = await openWs(`${url}/ws`, g.token, who);
  await useGrant(c, grant, who);
  expectError(await c.request({ op: 'connect', token: g.token, id: 5 }, who), 5, 'forbidden', `${who}, then in a connect message`);
  refused('second_connect');
  await c.close();
  // 2. In a connect message: nothing but connect before it.
  who = `${g.what} in a connect message`;
  c = await openWs(`${url}/ws`, undefined, who);
  expectError(await c.request({ op: 'publish', topic: grant.publish, data: 0, id: 1 }, who), 1, 'unauthorized', `${who}: a publish before connect`);
  refused('not_connected');
  expectExpiresIn(await c.request({ op: 'connect', token: g.token, id: 2 }, who), 2, g.exp, `${who}: connect reply`, g.sub);
  await useGrant(c, grant, who);
  expectError(await c.request({ op: 'connect', token: g.token, id: 9 }, who), 9, 'forbidden', `${who}: a second connect`);
  refused('second_connect');
  await c.close();
  // 3. In the query: with --auth-query-token as good as the header; without, refused.
  who = `${g.what} in the query`;
  const query = `/ws?token=${encodeURIComponent(g.token)}`;
  c = await openWs(`${url}${query}`, undefined, who);
  await useGrant(c, grant, who);
  await c.close();
  await expectHttpRefusal(`${plan.url_no_query}${query}`, undefined, 400, 'error="invalid_request"', `${who} without --auth-query-token`);
  counts.no_query.upgrade_refused += 1;
}

async function checkRefresh(plan, g) {
  const who = `${g.what} refresh`;
  const c = await openWs(`${plan.url}/ws`, undefined, who);
  expectExpiresIn(await c.request({ op: 'connect', token: g.token, id: 1 }, who), 1, g.exp, `${who}: connect`, g.sub);
  expectError(await c.request({ op: 'refresh', token: plan.refresh.other, id: 2 }, who), 2, 'forbidden', `${who} with another user's token`);
  refused('refresh_other_user');
  expectExpiresIn(await c.request({ op: 'refresh', token: plan.refresh.same, id: 3 }, who), 3, plan.refresh.same_exp,
    `${who} with the same user's new token`);
  expectFields(await c.request({ op: 'echo', data: 1 }, who), { op: 'echo', data: 1 }, `${who}: echo after the refresh`);
  await c.close();
}

async function checkRawEcho(plan, g) {
  await expectHttpRefusal(`${plan.url}/echo`, undefined, 401, 'Bearer', '/echo without a token');
  counts.main.upgrade_refused += 1;
  let c = await openWs(`${plan.url}/echo`, g.token, '/echo with a token in the header');
  const blob = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  c.ws.send(blob, { binary: true });
  let m = await c.next(TIMEOUT_MS);
  check(m !== null && m.isBinary && Buffer.compare(m.data, blob) === 0, '/echo with a token in the header: echo differs');
  await c.close();
  c = await openWs(`${plan.url}/echo?token=${encodeURIComponent(g.token)}`, undefined, '/echo with a token in the query');
  c.ws.send('txt');
  m = await c.next(TIMEOUT_MS);
  check(m !== null && !m.isBinary && m.data.toString('utf8') === 'txt', '/echo with a token in the query: echo differs');
  await c.close();
}

async function checkBad(plan, b) {
  const who = `${b.what} (${b.reason})`;
  const challenge = `Bearer error="invalid_token", error_description="${b.reason}"`;
  await expectHttpRefusal(`${plan.url}/ws`, b.token, 401, challenge, `${who} in the header`);
  counts.main.upgrade_refused += 1;
  const c = await openWs(`${plan.url}/ws`, undefined, who);
  c.ws.send(JSON.stringify({ op: 'connect', token: b.token, id: 1 }));
  const closed = await c.closedWith(`${who} in a connect message`);
  check(closed.code === 4001 && closed.reason === b.reason,
    `${who} in a connect message: closed with ${show(closed)}, expected 4001 ${show(b.reason)}`);
  counts.main.connect_refused += 1;
}

async function main() {
  const plan = JSON.parse(readFileSync(0, 'utf8'));
  const started = performance.now();
  for (const g of plan.good) await checkGood(plan, g);
  await checkRefresh(plan, plan.good[0]);
  await checkRawEcho(plan, plan.good[0]);
  for (const b of plan.bad) await checkBad(plan, b);
  let wsVersion = '?';
  try {
    wsVersion = createRequire(import.meta.url)('ws/package.json').version;
  } catch {
    // only for the summary line
  }
  console.log(`node_auth_client (ws ${wsVersion}): ${checks} checks passed in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  console.log(JSON.stringify(counts));
  return 0;
}

try {
  process.exitCode = await main();
} catch (e) {
  if (e instanceof Mismatch) {
    console.error(`node_auth_client: MISMATCH: ${e.message}`);
  } else {
    console.error(`node_auth_client: failed: ${e && e.stack ? e.stack : e}`);
  }
  process.exitCode = 1;
}
