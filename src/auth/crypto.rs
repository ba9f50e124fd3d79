//! The signatures of JWTs, on `ring`: the library rustls already uses for the
//! hub's TLS, installed as `jsonwebtoken`'s process-wide `CryptoProvider`.
//!
//! Why not `jsonwebtoken`'s own RustCrypto backend: its P-256 verification cost
//! 366 µs per ES256 token on the benchmark machine, RSA 92 µs and Ed25519 49 µs,
//! against a few tens of µs here (BENCHMARKS.md, "Identity and access"), and it
//! compiled five more crates of big-number and curve arithmetic.
//!
//! Only what the hub accepts is provided: HS256, RS256, ES256 and EdDSA (Ed25519);
//! any other algorithm is an error, never a fallback. Signing exists for the hub's
//! own HS256 tokens and for tests and benchmarks that play an identity provider.
//!
//! Invariant: [`install`] runs before anything signs or verifies (the `Verifier`
//! and `TokenKey` call it); installing twice is harmless.

use jsonwebtoken::{
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{Error, ErrorKind},
    signature, Algorithm, DecodingKey, DecodingKeyKind, EncodingKey,
};
use ring::{hmac, rand::SystemRandom, signature as sig};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWK thumbprints and key conversions are not used by the hub.
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes `ring` the process's JWT cryptography (once; later calls do nothing).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is already installed: that one stays.
        let _ = PROVIDER.install_default();
    });
}

fn unsupported() -> Error {
    ErrorKind::UnsupportedAlgorithm.into()
}

/// A private key, parsed once per token signed.
enum SigningKey {
    Hmac(hmac::Key),
    Ecdsa(sig::EcdsaKeyPair),
    Ed25519(sig::Ed25519KeyPair),
    Rsa(sig::RsaKeyPair),
}

struct Signer {
    alg: Algorithm,
    key: SigningKey,
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    let bytes = key.as_bytes();
    let key = match alg {
        Algorithm::HS256 => SigningKey::Hmac(hmac::Key::new(hmac::HMAC_SHA256, bytes)),
        Algorithm::ES256 => SigningKey::Ecdsa(
            sig::EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                bytes,
                &SystemRandom::new(),
            )
            .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
        ),
        Algorithm::EdDSA => SigningKey::Ed25519(
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map_err(|_| ErrorKind::InvalidEddsaKey)?,
        ),
        Algorithm::RS256 => SigningKey::Rsa(
            sig::RsaKeyPair::from_der(bytes)
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
        ),
        _ => return Err(unsupported()),
    };
    Ok(Box::new(Signer { alg: *alg, key }))
}

impl signature::Signer<Vec<u8>> for Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        Ok(match &self.key {
            SigningKey::Hmac(k) => hmac::sign(k, msg).as_ref().to_vec(),
            SigningKey::Ecdsa(k) => k
                .sign(&rng, msg)
                .map_err(|_| signature::Error::new())?
                .as_ref()
                .to_vec(),
            SigningKey::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
            SigningKey::Rsa(k) => {
                let mut out = vec![0; k.public().modulus_len()];
                k.sign(&sig::RSA_PKCS1_SHA256, &rng, msg, &mut out)
                    .map_err(|_| signature::Error::new())?;
                out
            }
        })
    }
}

impl JwtSigner for Signer {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

struct Verifier {
    alg: Algorithm,
    key: DecodingKey,
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match alg {
        Algorithm::HS256 | Algorithm::ES256 | Algorithm::EdDSA | Algorithm::RS256
            if key.family() == alg.family() =>
        {
            Ok(Box::new(Verifier {
                alg: *alg,
                key: key.clone(),
            }))
        }
        Algorithm::HS256 | Algorithm::ES256 | Algorithm::EdDSA | Algorithm::RS256 => {
            Err(ErrorKind::InvalidAlgorithm.into())
        }
        _ => Err(unsupported()),
    }
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let bad = |_| signature::Error::new();
        match (self.alg, self.key.kind()) {
            (Algorithm::HS256, DecodingKeyKind::SecretOrDer(secret)) => {
                // Constant time.
                hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), msg, signature)
                    .map_err(bad)
            }
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, signature)
                    .map_err(bad)
            }
            (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(public)) => {
                sig::UnparsedPublicKey::new(&sig::ED25519, public)
                    .verify(msg, signature)
                    .map_err(bad)
            }
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                sig::RsaPublicKeyComponents { n, e }
                    .verify(&sig::RSA_PKCS1_2048_8192_SHA256, msg, signature)
                    .map_err(bad)
            }
            (Algorithm::RS256, DecodingKeyKind::SecretOrDer(der)) => {
                sig::UnparsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, der)
                    .verify(msg, signature)
                    .map_err(bad)
            }
            _ => Err(signature::Error::new()),
        }
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
