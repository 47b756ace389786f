//! Time-based one-time passwords (RFC 6238) for aidants: HMAC-SHA1, 30 s
//! steps, 6 digits, one step of clock drift either way, and a code is never
//! accepted twice (the caller stores the last accepted step). Base32 (RFC
//! 4648, without padding) is written here for the secrets and `otpauth://`
//! enrolment URIs.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Seconds per time step.
pub const PERIOD: i64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Steps of drift accepted on each side of the current one.
pub const WINDOW: i64 = 1;
/// Secret length in bytes (160 bits, as RFC 4226 recommends).
pub const SECRET_BYTES: usize = 20;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32, upper case, without `=` padding.
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 0x1f) as usize]));
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(
            ALPHABET[((buffer << (5 - bits)) & 0x1f) as usize],
        ));
    }
    out
}

/// Decode RFC 4648 base32. Accepts lower case, spaces and trailing `=`
/// padding (as people type secrets); refuses any other character and
/// lengths no encoding produces.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let cleaned: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let unpadded = match cleaned.iter().position(|&b| b == b'=') {
        Some(i) if cleaned[i..].iter().all(|&b| b == b'=') => &cleaned[..i],
        Some(_) => return None,
        None => &cleaned[..],
    };
    // 1, 3 and 6 trailing characters cannot come from whole bytes.
    if matches!(unpadded.len() % 8, 1 | 3 | 6) {
        return None;
    }
    let mut out = Vec::with_capacity(unpadded.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &c in unpadded {
        let value = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    Some(out)
}

/// A new random secret, base32-encoded.
pub fn generate_secret() -> Result<String, String> {
    let mut secret = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| "system random generator unavailable".to_string())?;
    Ok(base32_encode(&secret))
}

/// Percent-encode a URI label or query value, keeping RFC 3986 unreserved
/// characters and `@` (authenticator apps show e-mail labels verbatim).
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The enrolment URI authenticator apps read (often as a QR code).
pub fn otpauth_uri(email: &str, secret_b32: &str) -> String {
    format!(
        "otpauth://totp/Relais:{}?secret={}&issuer=Relais&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
        encode_component(email),
        encode_component(secret_b32),
    )
}

/// The time step of Unix time `now`.
pub fn step_at(now: i64) -> i64 {
    now.div_euclid(PERIOD)
}

/// RFC 4226 HOTP value of `counter` with `digits` digits (zero-padded).
fn hotp(key: &[u8], counter: u64, digits: u32) -> String {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key),
        &counter.to_be_bytes(),
    );
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    let value = u64::from(binary) % 10u64.pow(digits);
    format!("{value:0width$}", width = digits as usize)
}

/// The code for time step `step` with `digits` digits.
fn code_for_step(key: &[u8], step: i64, digits: u32) -> Option<String> {
    u64::try_from(step).ok().map(|c| hotp(key, c, digits))
}

/// The 6-digit code of a base32 secret at Unix time `now` (what an
/// authenticator app shows; used by tests and the demo).
pub fn code_at(secret_b32: &str, now: i64) -> Option<String> {
    let key = base32_decode(secret_b32)?;
    code_for_step(&key, step_at(now), DIGITS)
}

/// Check `code` against the base32 `secret` at Unix time `now`, accepting
/// one step of drift either way. Returns the matched step, which the caller
/// must store; a step `<= last_used_step` is refused, so a code (or an older
/// one) is never accepted twice.
pub fn verify(secret_b32: &str, code: &str, now: i64, last_used_step: i64) -> Option<i64> {
    verify_digits(secret_b32, code, now, last_used_step, DIGITS)
}

/// Whether `code` is a genuine code of `secret` at `now` (one step of
/// drift) whose step was already used (`<= last_used_step`): a replay, or
/// the loser of two parallel submissions of one code.
pub fn already_used(secret_b32: &str, code: &str, now: i64, last_used_step: i64) -> bool {
    verify_digits(secret_b32, code, now, i64::MIN, DIGITS).is_some_and(|s| s <= last_used_step)
}

fn verify_digits(
    secret_b32: &str,
    code: &str,
    now: i64,
    last_used_step: i64,
    digits: u32,
) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let key = base32_decode(secret_b32)?;
    if key.is_empty() {
        return None;
    }
    let current = step_at(now);
    let mut matched = None;
    // Every candidate is computed and compared in constant time.
    for step in current - WINDOW..=current + WINDOW {
        let Some(expected) = code_for_step(&key, step, digits) else {
            continue;
        };
        if crate::crypto::ct_eq(expected.as_bytes(), code.as_bytes())
            && step > last_used_step
            && matched.is_none()
        {
            matched = Some(step);
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn base32_rfc4648_vectors() {
        let vectors: [(&str, &str); 7] = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base32_encode(plain.as_bytes()), encoded);
            assert_eq!(
                base32_decode(encoded).as_deref(),
                Some(plain.as_bytes()),
                "{encoded}"
            );
        }
        // Padding, lower case and spaces are tolerated on input.
        assert_eq!(base32_decode("MZXW6YQ=").as_deref(), Some(&b"foob"[..]));
        assert_eq!(
            base32_decode("mzxw 6ytb oi").as_deref(),
            Some(&b"foobar"[..])
        );
        assert_eq!(
            base32_encode(RFC_SECRET),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        // Refused: foreign characters, impossible lengths, '=' in the middle.
        assert_eq!(base32_decode("MZXW1"), None);
        assert_eq!(base32_decode("MZX"), None);
        assert_eq!(base32_decode("M"), None);
        assert_eq!(base32_decode("MY=A"), None);
        // Round trip of every length.
        let data: Vec<u8> = (0u8..=255).collect();
        for n in 0..40 {
            assert_eq!(
                base32_decode(&base32_encode(&data[..n])).as_deref(),
                Some(&data[..n])
            );
        }
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1 rows (8 digits).
        let vectors: [(i64, &str); 6] = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        let secret = base32_encode(RFC_SECRET);
        for (time, expected) in vectors {
            assert_eq!(
                code_for_step(RFC_SECRET, step_at(time), 8).as_deref(),
                Some(expected),
                "T = {time}"
            );
            assert_eq!(
                verify_digits(&secret, expected, time, 0, 8),
                Some(step_at(time))
            );
            // The 6-digit code is the last 6 digits of the same value.
            assert_eq!(code_at(&secret, time).as_deref(), Some(&expected[2..]));
            assert_eq!(
                verify(&secret, &expected[2..], time, 0),
                Some(step_at(time))
            );
        }
        // RFC 4226 appendix D HOTP values (counter 0 and 1).
        assert_eq!(hotp(RFC_SECRET, 0, 6), "755224");
        assert_eq!(hotp(RFC_SECRET, 1, 6), "287082");
    }

    #[test]
    fn window_replay_and_malformed_codes() {
        let secret = base32_encode(RFC_SECRET);
        let now = 1_234_567_890;
        let step = step_at(now);
        let code = code_at(&secret, now).unwrap();
        // One step of drift either way, not two.
        assert_eq!(verify(&secret, &code, now + PERIOD, 0), Some(step));
        assert_eq!(verify(&secret, &code, now - PERIOD, 0), Some(step));
        assert_eq!(verify(&secret, &code, now + 2 * PERIOD, 0), None);
        assert_eq!(verify(&secret, &code, now - 2 * PERIOD, 0), None);
        // Replay: the step was already used (or a later one was).
        assert_eq!(verify(&secret, &code, now, step), None);
        assert_eq!(verify(&secret, &code, now, step + 1), None);
        assert_eq!(verify(&secret, &code, now, step - 1), Some(step));
        // A genuine code whose step is used is told apart from a wrong one.
        assert!(already_used(&secret, &code, now, step));
        assert!(!already_used(&secret, &code, now, step - 1));
        assert!(!already_used(&secret, "000000", now, step));
        assert!(!already_used(&secret, &code, now + 2 * PERIOD, step));
        // The next step's code is still accepted after this one.
        let next = code_at(&secret, now + PERIOD).unwrap();
        assert_eq!(verify(&secret, &next, now + PERIOD, step), Some(step + 1));
        // Formatting.
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert_eq!(verify(&secret, &spaced, now, 0), Some(step));
        assert_eq!(verify(&secret, &code[..5], now, 0), None);
        assert_eq!(verify(&secret, &format!("{code}0"), now, 0), None);
        assert_eq!(verify(&secret, "12345a", now, 0), None);
        assert_eq!(verify("not base32!", &code, now, 0), None);
        assert_eq!(verify("", &code, now, 0), None);
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(verify(&secret, &wrong, now, 0), None);
    }

    #[test]
    fn secrets_and_uri() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32, "20 bytes are 32 base32 characters");
        assert_eq!(base32_decode(&a).unwrap().len(), SECRET_BYTES);
        assert_eq!(
            otpauth_uri("marie.dupont@mairie.fr", "ABC234"),
            "otpauth://totp/Relais:marie.dupont@mairie.fr?secret=ABC234&issuer=Relais&algorithm=SHA1&digits=6&period=30"
        );
        assert!(otpauth_uri("a b:c@x.fr", "A").starts_with("otpauth://totp/Relais:a%20b%3Ac@x.fr?"));
    }
}
