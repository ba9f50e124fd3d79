"""Mints device tokens with PyJWT, as a customer's backend would (tests/hub_jwt.rs).

Usage: pyjwt_tokens.py SECRET_FILE OUT_DIR ISSUER AUDIENCE

Writes OUT_DIR/jwks.json (the public keys of a fresh RSA-2048, P-256 and Ed25519
key, with their kids) and prints one JSON object: for each of HS256 (with the hub's
token.key), RS256, ES256 and EdDSA, a device token whose subject is `py-<alg>`.
"""

import json
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

secret_file, out_dir, issuer, audience = sys.argv[1:5]
secret = Path(secret_file).read_bytes()
now = int(time.time())


def claims(alg):
    return {
        "sub": f"py-{alg.lower()}",
        "role": "device",
        "tags": {"minted-by": "pyjwt"},
        "iat": now,
        "exp": now + 600,
        "jti": f"py-{alg}-{now}",
        "iss": issuer,
        "aud": audience,
    }


keys = {
    "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), jwt.algorithms.RSAAlgorithm),
    "ES256": (ec.generate_private_key(ec.SECP256R1()), jwt.algorithms.ECAlgorithm),
    "EdDSA": (ed25519.Ed25519PrivateKey.generate(), jwt.algorithms.OKPAlgorithm),
}
jwks = []
tokens = {"HS256": jwt.encode(claims("HS256"), secret, algorithm="HS256")}
for alg, (private, family) in keys.items():
    kid = f"py-{alg.lower()}"
    public = family.to_jwk(private.public_key(), as_dict=True)
    public.update({"kid": kid, "alg": alg, "use": "sig"})
    jwks.append(public)
    tokens[alg] = jwt.encode(claims(alg), private, algorithm=alg, headers={"kid": kid})
Path(out_dir, "jwks.json").write_text(json.dumps({"keys": jwks}))
print(json.dumps(tokens))
