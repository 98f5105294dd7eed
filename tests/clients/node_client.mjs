#!/usr/bin/env node
// Checks a running corecast server with an independent client: the `ws` package from npm.
//
//   node tests/clients/node_client.mjs [--echo-only] [--ca FILE] [--expect-deflate on|off] ws://127.0.0.1:PORT
//   node tests/clients/node_client.mjs --ca FILE wss://127.0.0.1:PORT
//
// Exercises /ws (subscribe, publish, broadcast, echo, error replies, unsubscribe) and /echo
// (raw binary and text echo); --echo-only checks /echo alone (for a server that only echoes).
// ws offers permessage-deflate on every connection and, where it is agreed, compresses the
// messages it sends of 1 KiB or more. --expect-deflate on checks that each connection
// negotiated it and adds the compression checks (a 40 KB document and a 1-byte one published
// across both workers, and a compression bomb: 16 MiB of zeros in 16 KB, refused with 1009);
// --expect-deflate off checks that the server declined the offer.
// A wss:// URL is verified against the CA certificates in --ca FILE (default: the file named
// by $CORECAST_CA_FILE, else Node's own CA list). Exits 0 when everything matched, 1 with a
// message naming the first mismatch or a failed connection, 2 on bad usage or a missing `ws`
// package.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';

let WebSocket;
try {
  ({ default: WebSocket } = await import('ws'));
} catch (e) {
  console.error(`node_client: the \`ws\` package is missing (${e.message}); run tools/install-test-deps.sh`);
  process.exit(2);
}

const TIMEOUT_MS = 15000; // a reply that should come (a watchdog: CI machines can be slow)
const QUIET_MS = 300; // how long to listen for a message that must not come

class Mismatch extends Error {}
let checks = 0;

function check(cond, what) {
  checks += 1;
  if (!cond) throw new Mismatch(what);
}

/** Options for every connection: none over ws://, as before wss:// existed; over wss:// the
 *  CA to verify the server's certificate with, if one was given. */
let connectOptions;

/** 'on'/'off': what every connection must have negotiated (--expect-deflate); null: unchecked. */
let expectDeflate = null;

/** A connection whose incoming messages queue up until read with a timeout. */
class Client {
  constructor(url, name) {
    this.name = name;
    this.queue = [];
    this.waiter = null;
    this.ws = connectOptions === undefined ? new WebSocket(url) : new WebSocket(url, connectOptions);
    this.ws.on('message', (data, isBinary) => {
      this.queue.push({ data, isBinary });
      this.wake();
    });
    this.ws.on('close', (code) => {
      this.closed = code;
      this.wake();
    });
    this.ws.on('error', (e) => {
      this.error = e;
      this.wake();
    });
  }

  static async open(url, name) {
    const c = new Client(url, name);
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Mismatch(`${name}: no handshake within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
      c.ws.once('open', () => {
        clearTimeout(t);
        if (expectDeflate !== null) {
          const want = expectDeflate === 'on' ? 'permessage-deflate' : '';
          try {
            check(c.ws.extensions === want, `${name}: extensions "${c.ws.extensions}" negotiated, expected "${want}"`);
          } catch (e) {
            reject(e);
            return;
          }
        }
        resolve();
      });
      c.ws.once('error', (e) => { clearTimeout(t); reject(e); });
    });
    return c;
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
    if (this.error) throw new Mismatch(`${this.name}: connection error ${this.error.message}`);
    if (this.closed !== undefined) throw new Mismatch(`${this.name}: connection closed (${this.closed})`);
    return null;
  }

  async recvJson(who) {
    const m = await this.next(TIMEOUT_MS);
    check(m !== null, `${who}: no message within ${TIMEOUT_MS} ms`);
    check(!m.isBinary, `${who}: expected a text frame, got a binary one`);
    const text = m.data.toString('utf8');
    try {
      return JSON.parse(text);
    } catch {
      throw new Mismatch(`${who}: reply is not JSON: ${text.slice(0, 200)}`);
    }
  }

  send(obj) {
    this.ws.send(JSON.stringify(obj));
  }

  close() {
    this.ws.close(1000);
  }
}

const show = (v) => JSON.stringify(v);

/** Compares a JSON object with the expected one key by key, then checks for extra keys. */
function expectFields(got, want, who) {
  check(got !== null && typeof got === 'object' && !Array.isArray(got), `${who}: expected a JSON object, got ${show(got)}`);
  for (const [key, value] of Object.entries(want)) {
    check(Object.hasOwn(got, key), `${who}: field "${key}" missing in ${show(got)}`);
    check(isDeepStrictEqual(got[key], value),
      `${who}: field "${key}" is ${show(got[key])}, expected ${show(value)} (whole reply ${show(got)})`);
  }
  const extra = Object.keys(got).filter((k) => !Object.hasOwn(want, k));
  check(extra.length === 0, `${who}: unexpected fields ${show(extra)} in ${show(got)}`);
}

function expectError(got, wantId, who) {
  check(got !== null && typeof got === 'object', `${who}: expected an error object, got ${show(got)}`);
  for (const key of ['op', 'id', 'code', 'message']) {
    check(Object.hasOwn(got, key), `${who}: error reply lacks "${key}": ${show(got)}`);
  }
  check(got.op === 'error', `${who}: op is ${show(got.op)}, expected "error"`);
  check(got.id === wantId, `${who}: id is ${show(got.id)}, expected ${show(wantId)}`);
  check(got.code === 'bad_request', `${who}: code is ${show(got.code)}, expected "bad_request"`);
  check(typeof got.message === 'string' && got.message.length > 0,
    `${who}: message should be a non-empty string, got ${show(got.message)}`);
}

/** Nothing may arrive now: an echo round trip proves the connection is idle, then a short
 *  listen catches anything still in flight from another worker. */
async function expectSilence(c, who) {
  const marker = `quiet-${who}-${checks}`;
  c.send({ op: 'echo', data: marker });
  expectFields(await c.recvJson(who), { op: 'echo', data: marker }, `${who} (expected nothing before this echo)`);
  const extra = await c.next(QUIET_MS);
  check(extra === null, `${who}: unexpected message ${extra && extra.data.toString().slice(0, 200)}`);
}

/** [--echo-only] [--ca FILE] [--expect-deflate on|off] URL, or null on bad usage. */
function parseArgs(argv) {
  const args = { echoOnly: false, ca: process.env.CORECAST_CA_FILE, url: null, deflate: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--echo-only') args.echoOnly = true;
    else if (argv[i] === '--ca' && i + 1 < argv.length) args.ca = argv[++i];
    else if (argv[i] === '--expect-deflate' && ['on', 'off'].includes(argv[i + 1])) args.deflate = argv[++i];
    else if (args.url === null && /^wss?:\/\//.test(argv[i])) args.url = argv[i].replace(/\/+$/, '');
    else return null;
  }
  return args.url === null ? null : args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args === null) {
    console.error('usage: node_client.mjs [--echo-only] [--ca FILE] [--expect-deflate on|off] ws[s]://HOST:PORT');
    return 2;
  }
  expectDeflate = args.deflate;
  const base = args.url;
  if (base.startsWith('wss://')) {
    connectOptions = args.ca ? { ca: readFileSync(args.ca) } : {};
  }
  const started = performance.now();
  if (!args.echoOnly) {
    await checkJsonProtocol(base);
    await checkCloseCodes(base);
    if (expectDeflate === 'on') await checkCompression(base);
  }
  await checkRawEcho(base);

  let wsVersion = '?';
  try {
    wsVersion = createRequire(import.meta.url)('ws/package.json').version;
  } catch {
    // only for the summary line
  }
  console.log(`node_client (ws ${wsVersion}): ${checks} checks passed in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  return 0;
}

/** Waits for a client's connection to end; returns the close code it got. */
async function closedWith(c, who) {
  for (;;) {
    let m;
    try {
      m = await c.next(TIMEOUT_MS);
    } catch {
      // next() throws once the connection is closed (or failed): that is what we wait for
      if (c.error) throw new Mismatch(`${who}: connection error ${c.error.message}`);
      return c.closed;
    }
    if (m === null) throw new Mismatch(`${who}: still open after ${TIMEOUT_MS} ms`);
  }
}

async function checkCloseCodes(base) {
  // The client closes with its own code: the server answers with the same one.
  const a = await Client.open(`${base}/ws`, 'close 4000');
  a.ws.close(4000, 'node bye');
  const codeA = await closedWith(a, 'close 4000');
  check(codeA === 4000, `close 4000: answered with ${codeA}`);
  // A message over the server's default --max-message-size (64 KiB): 1009.
  const b = await Client.open(`${base}/ws`, 'oversized message');
  b.ws.send('x'.repeat(70000));
  const codeB = await closedWith(b, 'oversized message');
  check(codeB === 1009, `70,000-byte message: closed with ${codeB}, expected 1009`);
}

async function checkJsonProtocol(base) {
  const nSubs = 3;
  const everyone = [];
  try {
    for (let i = 0; i < nSubs + 2; i++) everyone.push(await Client.open(`${base}/ws`, `connection ${i}`));
    const subs = everyone.slice(0, nSubs);
    const [publisher, bystander] = everyone.slice(nSubs);

    // subscribe, with ids of both kinds the protocol allows (number, string)
    for (const [i, c] of subs.entries()) {
      const id = i % 2 === 0 ? i : `sub-${i}`;
      c.send({ op: 'subscribe', topic: 'node-news', id });
      expectFields(await c.recvJson(`subscriber ${i}`), { op: 'ok', id }, `subscribe reply ${i}`);
    }
    bystander.send({ op: 'subscribe', topic: 'node-other' });
    expectFields(await bystander.recvJson('bystander'), { op: 'ok' }, 'subscribe reply without id');

    // publish: every subscriber gets it exactly once, the bystander never
    const payload = { seq: 1, text: 'héllo ✓', list: [1, 2.5, null, true] };
    publisher.send({ op: 'publish', topic: 'node-news', data: payload, id: 'pub-1' });
    expectFields(await publisher.recvJson('publisher'), { op: 'ok', id: 'pub-1' }, 'publish reply');
    for (const [i, c] of subs.entries()) {
      expectFields(await c.recvJson(`subscriber ${i}`), { op: 'message', topic: 'node-news', data: payload },
        `published message at subscriber ${i}`);
    }
    for (const [i, c] of subs.entries()) await expectSilence(c, `subscriber ${i} after one publish`);
    await expectSilence(bystander, 'bystander after publish');
    // a publish without id gets no reply at all
    publisher.send({ op: 'publish', topic: 'node-news', data: 2 });
    for (const [i, c] of subs.entries()) {
      expectFields(await c.recvJson(`subscriber ${i}`), { op: 'message', topic: 'node-news', data: 2 },
        `second published message at subscriber ${i}`);
    }
    await expectSilence(publisher, 'publisher after publish without id');

    // broadcast: every /ws connection, the sender included
    bystander.send({ op: 'broadcast', data: { all: 'hands' } });
    for (const [i, c] of everyone.entries()) {
      expectFields(await c.recvJson(`connection ${i}`), { op: 'message', data: { all: 'hands' } },
        `broadcast at connection ${i}`);
    }
    for (const [i, c] of everyone.entries()) await expectSilence(c, `connection ${i} after broadcast`);

    // JSON echo, with and without id
    publisher.send({ op: 'echo', id: 42, data: { nested: [1, 'two', null] } });
    expectFields(await publisher.recvJson('echo'), { op: 'echo', id: 42, data: { nested: [1, 'two', null] } }, 'echo with id');
    publisher.send({ op: 'echo', data: 'no id' });
    expectFields(await publisher.recvJson('echo'), { op: 'echo', data: 'no id' }, 'echo without id');

    // error replies; the connection stays usable after each
    const bad = [
      ['{not json', null, 'malformed JSON'],
      ['[1,2,3]', null, 'non-object JSON'],
      [JSON.stringify({ op: 'fly', id: 7 }), 7, 'unknown op'],
      [JSON.stringify({ op: 'subscribe', id: 's' }), 's', 'subscribe without topic'],
      [JSON.stringify({ op: 'publish', id: 8, data: 1 }), 8, 'publish without topic'],
      [JSON.stringify({ op: 'subscribe', id: 9, topic: 5 }), 9, 'topic of the wrong type'],
      [Buffer.from('{"op":"echo","data":1,"id":3}'), null, 'binary frame on /ws'],
      [JSON.stringify({ op: 'echo', id: { n: 1 }, data: 1 }), null, 'object id'],
    ];
    for (const [frame, wantId, what] of bad) {
      publisher.ws.send(frame, { binary: Buffer.isBuffer(frame) });
      expectError(await publisher.recvJson(what), wantId, what);
      publisher.send({ op: 'echo', id: 'after', data: what });
      expectFields(await publisher.recvJson(`echo after ${what}`), { op: 'echo', id: 'after', data: what }, `echo after ${what}`);
    }

    // unsubscribe: subscriber 0 stops receiving, the others still do
    subs[0].send({ op: 'unsubscribe', topic: 'node-news', id: 'u' });
    expectFields(await subs[0].recvJson('unsubscribe'), { op: 'ok', id: 'u' }, 'unsubscribe reply');
    publisher.send({ op: 'publish', topic: 'node-news', data: 'after unsubscribe' });
    for (const [i, c] of subs.entries()) {
      if (i === 0) continue;
      expectFields(await c.recvJson(`subscriber ${i}`), { op: 'message', topic: 'node-news', data: 'after unsubscribe' },
        `message after unsubscribe at subscriber ${i}`);
    }
    await expectSilence(subs[0], 'unsubscribed connection');
  } finally {
    for (const c of everyone) c.close();
  }
}

async function checkCompression(base) {
  // Three subscribers (the server's workers take connections in turn, so both have some)
  // get a 40 KB document, which the server sends compressed, and a 1-byte one, sent plain.
  const subs = [];
  try {
    for (let i = 0; i < 3; i++) subs.push(await Client.open(`${base}/ws`, `zip subscriber ${i}`));
    const publisher = await Client.open(`${base}/ws`, 'zip publisher');
    subs.push(publisher);
    for (let i = 0; i < 3; i++) {
      subs[i].send({ op: 'subscribe', topic: 'node-zip', id: i });
      expectFields(await subs[i].recvJson(`zip subscriber ${i}`), { op: 'ok', id: i }, `zip subscribe reply ${i}`);
    }
    const big = { rows: Array.from({ length: 800 }, (_, i) => ({ id: i, name: `row-${i}`, tags: ['a', 'b'], ok: i % 3 === 0 })) };
    check(JSON.stringify(big).length > 40000, 'the large document is large');
    for (const data of [big, 'x']) {
      publisher.send({ op: 'publish', topic: 'node-zip', data });
      for (let i = 0; i < 3; i++) {
        expectFields(await subs[i].recvJson(`zip subscriber ${i}`), { op: 'message', topic: 'node-zip', data },
          `compressed publish (${JSON.stringify(data).length} bytes) at subscriber ${i}`);
      }
    }
  } finally {
    for (const c of subs) c.close();
  }
  // A compression bomb: 16 MiB of zeros deflate to about 16 KB, far over the 64 KiB limit
  // once inflated. The server stops inflating at the limit and closes with 1009.
  const bomb = await Client.open(`${base}/ws`, 'compression bomb');
  bomb.ws.send(Buffer.alloc(16 << 20), { binary: true });
  const code = await closedWith(bomb, 'compression bomb');
  check(code === 1009, `compression bomb: closed with ${code}, expected 1009`);
}

async function checkRawEcho(base) {
  // /echo: raw frames come back verbatim with their opcode
  const raw = await Client.open(`${base}/echo`, '/echo');
  try {
    const blob = Buffer.alloc(4096, 0).map((_, i) => i % 256);
    raw.ws.send(blob, { binary: true });
    let m = await raw.next(TIMEOUT_MS);
    check(m !== null, '/echo: no binary echo');
    check(m.isBinary, '/echo: binary frame came back as text');
    check(Buffer.compare(m.data, blob) === 0, `/echo: binary echo differs (${m.data.length} bytes back, ${blob.length} sent)`);
    const text = 'héllo ✓ {not json}';
    raw.ws.send(text);
    m = await raw.next(TIMEOUT_MS);
    check(m !== null, '/echo: no text echo');
    check(!m.isBinary, '/echo: text frame came back as binary');
    check(m.data.toString('utf8') === text, `/echo: text echo differs: ${m.data.toString('utf8')}`);
  } finally {
    raw.close();
  }
}

try {
  process.exitCode = await main();
} catch (e) {
  if (e instanceof Mismatch) {
    console.error(`node_client: MISMATCH: ${e.message}`);
  } else {
    console.error(`node_client: failed: ${e && e.stack ? e.stack : e}`);
  }
  process.exitCode = 1;
}
