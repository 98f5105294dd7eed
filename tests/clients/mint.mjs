#!/usr/bin/env node
// Mints JWTs with the `jose` package from npm for tests/auth.rs: a token library corecast
// did not write.
//
//   node tests/clients/mint.mjs < specs.json > tokens.json
//
// Reads a JSON list of token specs on stdin and prints the tokens as a JSON list, in the same
// order (one process per batch). A spec is the one tests/clients/mint.py reads:
//
//   {"alg": "HS256" | "RS256" | "ES256" | "EdDSA" | ... | "none",
//    "key": "FILE",        // HS*: the secret file's bytes; otherwise a PKCS#8 PEM private key
//    "claims": {...},      // the payload, as it is (exp, nbf, aud, iss, sub, corecast, ...)
//    "headers": {...},     // optional header members besides alg, e.g. {"kid": "k1"}
//    "attack": "..."}      // optional, see below
//
// Attacks (`attack`):
//   "hmac-with-public-key"  HS256 with the PEM text of a public key as the HMAC secret (key
//                           confusion). jose signs with any bytes it is given as a secret,
//                           so this is jose's own HS256.
//   "tamper"                a token jose signed, whose payload is then replaced by the claims
//                           merged with `tamper`, keeping the signature: built by hand.
// `"alg": "none"` needs no attack: jose's UnsecuredJWT writes unsecured JWTs itself.
//
// Exits 0 with the list, 1 with a message on a spec it cannot mint, 2 if jose is missing.

import { readFileSync } from 'node:fs';
import { webcrypto } from 'node:crypto';

// jose 6 uses the WebCrypto global, which Node.js 18 (Debian 12's) has only behind
// --experimental-global-webcrypto; it is the same object as node:crypto's webcrypto.
if (globalThis.crypto === undefined) globalThis.crypto = webcrypto;

let jose;
try {
  jose = await import('jose');
} catch (e) {
  console.error(`mint.mjs: the \`jose\` package is missing (${e.message}); run tools/install-test-deps.sh`);
  process.exit(2);
}

/** base64url without padding (RFC 7515 section 2). */
const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** The secret file's bytes, less one trailing newline, as corecast reads it. */
function secret(path) {
  let bytes = readFileSync(path);
  if (bytes.length > 0 && bytes[bytes.length - 1] === 0x0a) bytes = bytes.subarray(0, bytes.length - 1);
  return new Uint8Array(bytes);
}

async function mint(spec) {
  const { alg, claims } = spec;
  const headers = spec.headers || {};
  if (alg === 'none') {
    if (Object.keys(headers).length > 0) throw new Error('UnsecuredJWT takes no header members');
    return new jose.UnsecuredJWT(claims).encode();
  }
  let key;
  let headerAlg = alg;
  if (spec.attack === 'hmac-with-public-key') {
    // The public key's PEM text, byte for byte, as an HMAC secret.
    key = new Uint8Array(readFileSync(spec.key));
    headerAlg = 'HS256';
  } else if (alg.startsWith('HS')) {
    key = secret(spec.key);
  } else {
    key = await jose.importPKCS8(readFileSync(spec.key, 'utf8'), alg);
  }
  let token = await new jose.SignJWT(claims)
    .setProtectedHeader({ ...headers, alg: headerAlg, typ: 'JWT' })
    .sign(key);
  if (spec.attack === 'tamper') {
    // By hand: the payload segment swapped for one with more in it; jose's signature (over
    // the original payload) stays.
    const [head, , signature] = token.split('.');
    const changed = { ...claims, ...spec.tamper };
    token = `${head}.${b64url(JSON.stringify(changed))}.${signature}`;
  } else if (spec.attack !== undefined && spec.attack !== null && spec.attack !== 'hmac-with-public-key') {
    throw new Error(`unknown attack ${JSON.stringify(spec.attack)}`);
  }
  return token;
}

async function main() {
  const specs = JSON.parse(readFileSync(0, 'utf8'));
  const out = [];
  for (const [i, spec] of specs.entries()) {
    try {
      out.push(await mint(spec));
    } catch (e) {
      console.error(`mint.mjs: spec ${i} (${JSON.stringify(spec).slice(0, 200)}): ${e && e.stack ? e.stack : e}`);
      return 1;
    }
  }
  console.log(JSON.stringify(out));
  return 0;
}

process.exitCode = await main();
