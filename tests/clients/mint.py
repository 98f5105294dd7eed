#!/usr/bin/env python3
"""Mints JWTs with PyJWT for tests/auth.rs: a token library corecast did not write.

    python3 tests/clients/mint.py < specs.json > tokens.json

Reads a JSON list of token specs on stdin and prints the tokens as a JSON list, in the same
order (one process per batch: Python with `cryptography` takes a few hundred milliseconds
to start). A spec is

    {"alg": "HS256" | "RS256" | "ES256" | "EdDSA" | ... | "none",
     "key": "FILE",          # HS*: the secret file's bytes; otherwise a PEM private key
     "claims": {...},        # the payload, as it is (exp, nbf, aud, iss, sub, corecast, ...)
     "headers": {...},       # optional header members besides alg and typ, e.g. {"kid": "k1"}
     "attack": "..."}        # optional, see below

Attacks (`attack`):
  "hmac-with-public-key"  HS256 over the header and payload with the PEM text of a public key
                          as the HMAC secret (key confusion). PyJWT refuses to do this, so
                          it is built here by hand with hmac and base64 (RFC 7515 section 3).
  "tamper"                a token PyJWT signed, whose payload is then replaced by the claims
                          merged with `tamper` ({...}), keeping the signature: built by hand.
`"alg": "none"` needs no attack: PyJWT writes unsecured JWTs itself (an empty signature).

Exits 0 with the list, 1 with a message on a spec it cannot mint, 2 if PyJWT is missing.
"""

import base64
import hashlib
import hmac
import json
import sys

try:
    import jwt
except ImportError as e:  # the Rust test turns this into an install hint
    print("mint.py: the `PyJWT` package is missing (%s); run tools/install-test-deps.sh" % e,
          file=sys.stderr)
    sys.exit(2)


def b64url(raw):
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def compact_json(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def read_key(spec):
    with open(spec["key"], "rb") as f:
        key = f.read()
    if spec["alg"].startswith("HS"):
        # corecast takes the secret file's bytes less one trailing newline; so do we.
        return key[:-1] if key.endswith(b"\n") else key
    return key


def mint(spec):
    alg = spec["alg"]
    claims = spec["claims"]
    headers = spec.get("headers") or None
    attack = spec.get("attack")
    if attack == "hmac-with-public-key":
        # By hand: PyJWT raises InvalidKeyError for a PEM key as an HMAC secret, which is the
        # point of the attack (a verifier that took the token's alg and the RSA key's text
        # as a secret would accept it).
        with open(spec["key"], "rb") as f:
            secret = f.read()
        header = {"alg": "HS256", "typ": "JWT"}
        header.update(headers or {})
        signing_input = b64url(compact_json(header)) + "." + b64url(compact_json(claims))
        mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        return signing_input + "." + b64url(mac)
    if alg == "none":
        token = jwt.encode(claims, None, algorithm="none", headers=headers)
    else:
        token = jwt.encode(claims, read_key(spec), algorithm=alg, headers=headers)
    if attack == "tamper":
        # By hand: the payload segment swapped for one with more in it; PyJWT's signature
        # (over the original payload) stays.
        head, _, signature = token.split(".")
        changed = dict(claims)
        changed.update(spec["tamper"])
        token = head + "." + b64url(compact_json(changed)) + "." + signature
    elif attack is not None:
        raise ValueError("unknown attack %r" % attack)
    return token


def main():
    specs = json.load(sys.stdin)
    out = []
    for i, spec in enumerate(specs):
        try:
            out.append(mint(spec))
        except Exception as e:  # noqa: BLE001 - every failure names its spec
            print("mint.py: spec %d (%s): %s: %s" % (i, json.dumps(spec)[:200], type(e).__name__, e),
                  file=sys.stderr)
            return 1
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
