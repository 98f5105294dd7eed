#!/usr/bin/env python3
"""Mints JWTs for benchmarks and tests: one token per line, for users PREFIX0..PREFIX{N-1}.

    tools/mint-tokens.py --alg HS256 --key secret.txt --count 10000 --out tokens.txt
    tools/mint-tokens.py --alg ES256 --key es256.pem --new-key --public-key es256.pub.pem \\
        --count 20000 --out tokens.txt

Signed with PyJWT (and `cryptography` for RS/PS/ES/EdDSA), pinned in
tests/clients/requirements.txt; never with hand-written cryptography. The claims are what
corecast checks (docs/auth.md): `sub`, `exp` (--exp-in seconds from now, default 3600),
`iat`, optional `nbf`/`aud`/`iss`, and the grant in the `corecast` claim, by default
{"subscribe":["chat.*","user.{sub}","feed.>"],"publish":["chat.*"]} (three subscribe
patterns; every user shares the template, so corecast compiles it once).

--key is the HMAC secret file for HS256/384/512 (its bytes less one trailing newline, as
corecast reads --auth-hmac-secret-file) or a PEM private key otherwise. --new-key writes a
fresh key there first (a 64-character random secret, a P-256/P-384 key, a 2048-bit RSA key or
an Ed25519 key) and, with --public-key FILE, its public half for --auth-public-key.
Connection i of corecast-load --tokens uses line i mod N.
"""

import argparse
import json
import os
import secrets
import sys
import time

try:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
except ImportError as e:  # pragma: no cover - an install hint, not logic
    sys.exit(
        f"mint-tokens.py: {e}: install the pinned packages with "
        "`pip install --user -r tests/clients/requirements.txt` (PyJWT, cryptography)"
    )

HMAC = ("HS256", "HS384", "HS512")
ALGS = HMAC + ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
DEFAULT_GRANT = {"subscribe": ["chat.*", "user.{sub}", "feed.>"], "publish": ["chat.*"]}
# corecast refuses HMAC secrets shorter than this (RFC 7518 3.2: at least the hash's size).
MIN_SECRET = 32


def new_private_key(alg):
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    return ed25519.Ed25519PrivateKey.generate()


def write_private(path, data):
    """Writes a key readable by its owner alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_key(args):
    if args.alg in HMAC:
        write_private(args.key, secrets.token_hex(32).encode() + b"\n")
        return
    key = new_private_key(args.alg)
    write_private(
        args.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    if args.public_key:
        with open(args.public_key, "wb") as f:
            f.write(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo,
                )
            )


def load_key(args):
    """The signing key, loaded once (parsing a PEM per token would cost more than signing)."""
    with open(args.key, "rb") as f:
        data = f.read()
    if args.alg in HMAC:
        secret = data[:-1] if data.endswith(b"\n") else data
        if len(secret) < MIN_SECRET:
            sys.exit(f"mint-tokens.py: {args.key}: an HMAC secret needs {MIN_SECRET}+ bytes")
        return secret
    key = serialization.load_pem_private_key(data, password=None)
    if args.public_key and not args.new_key:
        with open(args.public_key, "wb") as f:
            f.write(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo,
                )
            )
    return key


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--alg", choices=ALGS, default="HS256")
    p.add_argument("--key", required=True, help="HMAC secret file or PEM private key")
    p.add_argument("--new-key", action="store_true", help="write a fresh key to --key first")
    p.add_argument("--public-key", help="also write the public key (PEM) here")
    p.add_argument("--count", type=int, default=1000, help="tokens to mint (default 1000)")
    p.add_argument("--start", type=int, default=0, help="first user number (default 0)")
    p.add_argument("--sub-prefix", default="user-", help="sub = PREFIX + number")
    p.add_argument("--exp-in", type=int, default=3600,
                   help="seconds from now to exp (negative: already expired)")
    p.add_argument("--nbf-in", type=int, help="seconds from now to nbf (absent by default)")
    p.add_argument("--aud")
    p.add_argument("--iss")
    p.add_argument("--kid", help="a kid header (for a JWKS key that names one)")
    p.add_argument("--grant", default=json.dumps(DEFAULT_GRANT),
                   help="the corecast claim as JSON (default: %(default)s); 'none' leaves it out")
    p.add_argument("--out", help="output file (default stdout)")
    args = p.parse_args()
    if args.count < 0:
        p.error("--count must be >= 0")
    if args.new_key:
        make_key(args)
    key = load_key(args)
    grant = None if args.grant == "none" else json.loads(args.grant)
    headers = {"kid": args.kid} if args.kid else None

    now = int(time.time())
    claims = {"exp": now + args.exp_in, "iat": now}
    if args.nbf_in is not None:
        claims["nbf"] = now + args.nbf_in
    if args.aud:
        claims["aud"] = args.aud
    if args.iss:
        claims["iss"] = args.iss
    if grant is not None:
        claims["corecast"] = grant

    t0 = time.monotonic()
    lines = []
    for i in range(args.start, args.start + args.count):
        claims["sub"] = f"{args.sub_prefix}{i}"
        lines.append(jwt.encode(claims, key, algorithm=args.alg, headers=headers))
    text = "\n".join(lines) + ("\n" if lines else "")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        took = time.monotonic() - t0
        print(f"mint-tokens.py: {args.count} {args.alg} tokens in {args.out} ({took:.2f}s)",
              file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
