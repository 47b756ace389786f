// A benchmark program: a failed expect is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Micro-benchmarks (no external harness): signatures, pairwise subjects,
//! client authentication. Run with `cargo bench --bench micro`.

use relais::crypto::jws::{generate_pkcs8, SigningKey};
use relais::crypto::secrets::{hash_secret, VerifiedCache};
use relais::crypto::Alg;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn measure(name: &str, mut f: impl FnMut()) {
    // Warm up, then run for about one second.
    for _ in 0..10 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(1000) {
        for _ in 0..10 {
            f();
        }
        n += 10;
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "{name:40} {:>10.1} µs/op {:>12.0} ops/s",
        per * 1e6,
        1.0 / per
    );
}

fn main() {
    let claims = serde_json::json!({"iss": "https://relais.example", "sub": "x".repeat(66), "aud": "client", "exp": 1, "iat": 1, "nonce": "n".repeat(22)});
    for alg in [Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let key = SigningKey::from_pkcs8(alg, &generate_pkcs8(alg).expect("key")).expect("load");
        measure(&format!("sign ID token {alg}"), || {
            black_box(key.sign_jwt("JWT", &claims).expect("sign"));
        });
        let jwt = key.sign_jwt("JWT", &claims).expect("sign");
        let jwks = serde_json::json!({"keys": [key.public_jwk.clone()]});
        measure(&format!("verify JWS {alg} (ring)"), || {
            black_box(relais::crypto::jws::verify_with_jwks(&jwt, &jwks).expect("verify"));
        });
    }
    let key = relais::subject::citizen::normalise_name("Angela Claire Louise");
    measure("pairwise sub (HMAC-SHA256)", || {
        black_box(relais::subject::citizen::pairwise_sub(
            b"0123456789abcdef0123456789abcdef",
            "service.example",
            &key,
        ));
    });
    let phc = hash_secret("client-secret").expect("hash");
    let cache = VerifiedCache::new(1000);
    cache.remember("client", &phc, "client-secret");
    measure("client secret, cached verification", || {
        black_box(cache.is_cached("client", &phc, "client-secret"));
    });
    measure("client secret, full argon2id", || {
        black_box(relais::crypto::secrets::verify_secret(
            &phc,
            "client-secret",
        ));
    });
    measure("random token (32 bytes)", || {
        black_box(relais::crypto::random_token(32));
    });
}
