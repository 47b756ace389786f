//! JSON Web Signatures and JSON Web Keys over `ring`.
//!
//! Every signature Relais makes goes through [`SigningKey::sign_jwt`]; every
//! signature it checks (its own `id_token_hint`, a client's `private_key_jwt`
//! assertion) goes through [`verify_with_jwk`]. Algorithms are never taken from
//! the token alone: the key decides its algorithm, so `alg: none`, HS256 and
//! RS/ES confusion are rejected.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Map, Value};
use std::fmt;

/// A JWS algorithm Relais signs or verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    RS256,
    ES256,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 3] = [Alg::RS256, Alg::ES256, Alg::EdDSA];

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "RS256" => Some(Alg::RS256),
            "ES256" => Some(Alg::ES256),
            "EdDSA" => Some(Alg::EdDSA),
            _ => None,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwsError {
    Malformed(&'static str),
    UnsupportedAlg(String),
    UnknownKey,
    AlgMismatch,
    BadSignature,
    InvalidKey(String),
    Signing,
}

impl fmt::Display for JwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwsError::Malformed(why) => write!(f, "malformed JWS: {why}"),
            JwsError::UnsupportedAlg(a) => write!(f, "unsupported JWS algorithm {a:?}"),
            JwsError::UnknownKey => f.write_str("no key matches the JWS kid"),
            JwsError::AlgMismatch => f.write_str("JWS alg does not match the key"),
            JwsError::BadSignature => f.write_str("JWS signature is invalid"),
            JwsError::InvalidKey(why) => write!(f, "invalid key: {why}"),
            JwsError::Signing => f.write_str("signing failed"),
        }
    }
}

impl std::error::Error for JwsError {}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key loaded once in memory, with its public JWK and RFC 7638 `kid`.
pub struct SigningKey {
    pub alg: Alg,
    pub kid: String,
    pub public_jwk: Value,
    pair: Pair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub fn b64_decode(s: &str) -> Result<Vec<u8>, JwsError> {
    B64.decode(s)
        .map_err(|_| JwsError::Malformed("bad base64url"))
}

/// RFC 7638 thumbprint of a public JWK (required members, lexicographic order).
pub fn thumbprint(jwk: &Value) -> Result<String, JwsError> {
    let s = |k: &str| {
        jwk.get(k)
            .and_then(Value::as_str)
            .ok_or(JwsError::InvalidKey(format!("JWK lacks {k}")))
    };
    let canonical = match s("kty")? {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e")?, s("n")?),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv")?, s("x")?),
        other => return Err(JwsError::InvalidKey(format!("unsupported kty {other}"))),
    };
    Ok(b64(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    )
    .as_ref()))
}

impl SigningKey {
    /// Load a PKCS#8 DER private key for `alg`.
    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<SigningKey, JwsError> {
        let bad = |e: ring::error::KeyRejected| JwsError::InvalidKey(e.to_string());
        let (pair, mut jwk) = match alg {
            Alg::RS256 => {
                let kp = RsaKeyPair::from_pkcs8(der).map_err(bad)?;
                let comps = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
                let jwk = json!({"kty": "RSA", "n": b64(&comps.n), "e": b64(&comps.e)});
                (Pair::Rsa(kp), jwk)
            }
            Alg::ES256 => {
                let rng = SystemRandom::new();
                let kp = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(bad)?;
                let point = kp.public_key().as_ref();
                let (x, y) = match point {
                    [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                    _ => return Err(JwsError::InvalidKey("unexpected EC point".into())),
                };
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
                (Pair::Ec(kp), jwk)
            }
            Alg::EdDSA => {
                let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(bad)?;
                let jwk =
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key().as_ref())});
                (Pair::Ed(kp), jwk)
            }
        };
        let kid = thumbprint(&jwk)?;
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), Value::String(kid.clone()));
            obj.insert("alg".into(), Value::String(alg.as_str().into()));
            obj.insert("use".into(), Value::String("sig".into()));
        }
        Ok(SigningKey {
            alg,
            kid,
            public_jwk: jwk,
            pair,
        })
    }

    /// Sign raw bytes with this key.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwsError> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| JwsError::Signing)?;
                Ok(sig)
            }
            Pair::Ec(kp) => kp
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| JwsError::Signing),
            Pair::Ed(kp) => Ok(kp.sign(msg).as_ref().to_vec()),
        }
    }

    /// Compact JWS with header `{alg, kid, typ}` over the JSON `claims`.
    pub fn sign_jwt(&self, typ: &str, claims: &Value) -> Result<String, JwsError> {
        let header = json!({"alg": self.alg.as_str(), "kid": self.kid, "typ": typ});
        let mut out = String::with_capacity(512);
        out.push_str(&b64(header.to_string().as_bytes()));
        out.push('.');
        out.push_str(&b64(claims.to_string().as_bytes()));
        let sig = self.sign(out.as_bytes())?;
        out.push('.');
        out.push_str(&b64(&sig));
        Ok(out)
    }
}

/// A compact JWS split into its parts, not yet verified.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Unverified<'a> {
    pub fn parse(jwt: &'a str) -> Result<Unverified<'a>, JwsError> {
        if jwt.len() > 16 * 1024 {
            return Err(JwsError::Malformed("too long"));
        }
        let mut parts = jwt.splitn(4, '.');
        let (h, c, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(c), Some(s), None) => (h, c, s),
            _ => return Err(JwsError::Malformed("expected three parts")),
        };
        let header: Map<String, Value> = serde_json::from_slice(&b64_decode(h)?)
            .map_err(|_| JwsError::Malformed("header is not a JSON object"))?;
        let claims: Map<String, Value> = serde_json::from_slice(&b64_decode(c)?)
            .map_err(|_| JwsError::Malformed("payload is not a JSON object"))?;
        if header.contains_key("crit") {
            return Err(JwsError::Malformed("crit header not supported"));
        }
        let signing_input = &jwt[..h.len() + 1 + c.len()];
        Ok(Unverified {
            header,
            claims,
            signing_input,
            signature: b64_decode(s)?,
        })
    }

    pub fn alg(&self) -> Result<Alg, JwsError> {
        let a = self.header.get("alg").and_then(Value::as_str).unwrap_or("");
        Alg::parse(a).ok_or_else(|| JwsError::UnsupportedAlg(a.to_string()))
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// Verify against one public JWK; the JWK's key type decides the algorithm.
    pub fn verify(&self, jwk: &Value) -> Result<(), JwsError> {
        let alg = self.alg()?;
        if let Some(jwk_alg) = jwk.get("alg").and_then(Value::as_str) {
            if jwk_alg != alg.as_str() {
                return Err(JwsError::AlgMismatch);
            }
        }
        verify_raw(jwk, alg, self.signing_input.as_bytes(), &self.signature)
    }
}

fn jwk_bytes(jwk: &Value, k: &str) -> Result<Vec<u8>, JwsError> {
    let s = jwk
        .get(k)
        .and_then(Value::as_str)
        .ok_or(JwsError::InvalidKey(format!("JWK lacks {k}")))?;
    b64_decode(s)
}

/// Verify a signature with a public JWK for the given algorithm.
pub fn verify_raw(jwk: &Value, alg: Alg, msg: &[u8], sig: &[u8]) -> Result<(), JwsError> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
    let ok = match (alg, kty, crv) {
        (Alg::RS256, "RSA", _) => {
            let comps = ring::rsa::PublicKeyComponents {
                n: jwk_bytes(jwk, "n")?,
                e: jwk_bytes(jwk, "e")?,
            };
            comps.verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
        }
        (Alg::ES256, "EC", "P-256") => {
            let mut point = vec![4u8];
            point.extend(jwk_bytes(jwk, "x")?);
            point.extend(jwk_bytes(jwk, "y")?);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(msg, sig)
        }
        (Alg::EdDSA, "OKP", "Ed25519") => {
            signature::UnparsedPublicKey::new(&signature::ED25519, jwk_bytes(jwk, "x")?)
                .verify(msg, sig)
        }
        _ => return Err(JwsError::AlgMismatch),
    };
    ok.map_err(|_| JwsError::BadSignature)
}

/// Verify a compact JWS against a JWK set (`{"keys": [...]}`), selecting by `kid`
/// (or trying the keys compatible with the algorithm when the JWS has no `kid`).
pub fn verify_with_jwks<'a>(jwt: &'a str, jwks: &Value) -> Result<Unverified<'a>, JwsError> {
    let u = Unverified::parse(jwt)?;
    let alg = u.alg()?;
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwsError::InvalidKey("JWK set has no keys".into()))?;
    let mut candidates = keys.iter().filter(|k| match u.kid() {
        Some(kid) => k.get("kid").and_then(Value::as_str) == Some(kid),
        None => true,
    });
    let mut last = JwsError::UnknownKey;
    for k in candidates.by_ref() {
        if k.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        match verify_raw(k, alg, u.signing_input.as_bytes(), &u.signature) {
            Ok(()) => return Ok(u),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Encode DER as a PEM block.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Decode the first PEM block with the given label.
pub fn pem_decode(label: &str, pem: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let body: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Generate a fresh PKCS#8 DER private key. RSA keys (2048 bits) come from the
/// `rsa` crate since ring cannot generate them; they are then loaded by ring.
pub fn generate_pkcs8(alg: Alg) -> Result<Vec<u8>, JwsError> {
    let rng = SystemRandom::new();
    match alg {
        Alg::ES256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| JwsError::Signing)
        }
        Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| JwsError::Signing),
        Alg::RS256 => {
            use rsa::pkcs8::EncodePrivateKey;
            let mut seeded = RingRng(rng);
            let key = rsa::RsaPrivateKey::new(&mut seeded, 2048)
                .map_err(|e| JwsError::InvalidKey(e.to_string()))?;
            key.to_pkcs8_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| JwsError::InvalidKey(e.to_string()))
        }
    }
}

/// Adapter so the `rsa` crate draws its randomness from ring's system RNG.
struct RingRng(SystemRandom);

impl rsa::rand_core::RngCore for RingRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // Never generate a key from an unfilled buffer.
        if self.try_fill_bytes(dest).is_err() {
            eprintln!("relais: the system random generator failed; aborting");
            std::process::abort();
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        use ring::rand::SecureRandom;
        self.0.fill(dest).map_err(|_| {
            rsa::rand_core::Error::from(
                core::num::NonZeroU32::new(1).unwrap_or(core::num::NonZeroU32::MIN),
            )
        })
    }
}

impl rsa::rand_core::CryptoRng for RingRng {}

/// Random URL-safe token of `n` bytes of entropy.
///
/// If the operating system's random generator fails, the process aborts:
/// an identity server must never hand out predictable codes or tokens.
pub fn random_token(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    if SystemRandom::new().fill(&mut buf).is_err() {
        eprintln!("relais: the system random generator failed; aborting");
        std::process::abort();
    }
    b64(&buf)
}

/// base64url(SHA-256(data)) — PKCE S256 and token hashes.
pub fn sha256_b64(data: &[u8]) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// OIDC `at_hash`/`c_hash`: left half of the hash of the ASCII value, with the
/// hash of the signing algorithm (SHA-256 for RS256/ES256, SHA-512 for Ed25519,
/// as client libraries such as `openidconnect` compute it).
pub fn half_hash(alg: Alg, value: &str) -> String {
    let (algo, half) = match alg {
        Alg::RS256 | Alg::ES256 => (&ring::digest::SHA256, 16),
        Alg::EdDSA => (&ring::digest::SHA512, 32),
    };
    let d = ring::digest::digest(algo, value.as_bytes());
    b64(&d.as_ref()[..half])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(alg: Alg) -> SigningKey {
        SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).unwrap()).unwrap()
    }

    #[test]
    fn sign_and_verify_every_alg() {
        for alg in Alg::ALL {
            let k = key(alg);
            let jwt = k.sign_jwt("JWT", &json!({"sub": "x"})).unwrap();
            let jwks = json!({"keys": [k.public_jwk.clone()]});
            let u = verify_with_jwks(&jwt, &jwks).unwrap();
            assert_eq!(u.claims["sub"], "x");
            assert_eq!(u.kid(), Some(k.kid.as_str()));
            // Tampered payload fails.
            let mut parts: Vec<&str> = jwt.split('.').collect();
            let evil = b64(br#"{"sub":"y"}"#);
            parts[1] = &evil;
            assert_eq!(
                verify_with_jwks(&parts.join("."), &jwks).unwrap_err(),
                JwsError::BadSignature
            );
        }
    }

    #[test]
    fn es256_signature_is_fixed_64_bytes() {
        let k = key(Alg::ES256);
        assert_eq!(k.sign(b"abc").unwrap().len(), 64);
    }

    #[test]
    fn alg_none_and_hs256_and_confusion_rejected() {
        let k = key(Alg::ES256);
        let jwks = json!({"keys": [k.public_jwk.clone()]});
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(br#"{"sub":"x"}"#));
        assert!(matches!(
            verify_with_jwks(&none, &jwks),
            Err(JwsError::UnsupportedAlg(_))
        ));
        let hs = format!("{}.{}.AAAA", b64(br#"{"alg":"HS256"}"#), b64(br#"{}"#));
        assert!(matches!(
            verify_with_jwks(&hs, &jwks),
            Err(JwsError::UnsupportedAlg(_))
        ));
        // An RS256 token presented with the EC key's kid.
        let rsa = key(Alg::RS256);
        let jwt = rsa.sign_jwt("JWT", &json!({})).unwrap();
        let mut header: Map<String, Value> =
            serde_json::from_slice(&b64_decode(jwt.split('.').next().unwrap()).unwrap()).unwrap();
        header.insert("kid".into(), json!(k.kid));
        let rest: Vec<&str> = jwt.split('.').skip(1).collect();
        let forged = format!(
            "{}.{}",
            b64(Value::Object(header).to_string().as_bytes()),
            rest.join(".")
        );
        assert!(verify_with_jwks(&forged, &jwks).is_err());
    }

    #[test]
    fn wrong_kid_is_unknown() {
        let a = key(Alg::EdDSA);
        let b = key(Alg::EdDSA);
        let jwt = a.sign_jwt("JWT", &json!({})).unwrap();
        let jwks = json!({"keys": [b.public_jwk.clone()]});
        assert_eq!(
            verify_with_jwks(&jwt, &jwks).unwrap_err(),
            JwsError::UnknownKey
        );
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // The example key of RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn pem_round_trip() {
        let der = generate_pkcs8(Alg::EdDSA).unwrap();
        let pem = pem_encode("PRIVATE KEY", &der);
        assert_eq!(pem_decode("PRIVATE KEY", &pem).unwrap(), der);
    }

    #[test]
    fn half_hash_matches_oidc_example() {
        // OIDC Core A.3 example: access token jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y
        assert_eq!(
            half_hash(Alg::RS256, "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
    }
}
