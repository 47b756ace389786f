//! Limits on failed attempts, shared by every node: the `/token` failed
//! client authentications and the aidant sign-in attempts.
//!
//! A [`Throttle`] counts attempts per key in fixed windows, in the
//! `throttle` table (so the count holds across nodes on PostgreSQL, and
//! across restarts on both backends). An attempt is *reserved* before the
//! expensive check (argon2, a TOTP code) in one atomic upsert: a burst of
//! parallel requests cannot all pass the check before any of them is
//! counted. A reservation is kept for a failure and given back otherwise.
//! Once a key is over its limit, this node remembers it until the window
//! ends and refuses without touching the database (a flood of refused
//! attempts writes nothing).

use crate::store::{Store, StoreError};
use axum::http::HeaderMap;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;

/// How many attempts a key may make within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: i64,
    pub window_secs: i64,
}

/// An attempt counted for `key` in the window that started at `window_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub key: String,
    pub window_start: i64,
    /// Attempts in the window, this one included.
    pub count: i64,
}

/// Keys known to be over their limit on this node, until their window ends.
const MAX_REMEMBERED: usize = 10_000;

#[derive(Debug, Default)]
pub struct Throttle {
    blocked: Mutex<HashMap<String, i64>>,
}

impl Throttle {
    fn blocked_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.blocked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this node already knows `key` is over its limit at `now`.
    pub fn known_blocked(&self, key: &str, now: i64) -> bool {
        self.blocked_map()
            .get(key)
            .is_some_and(|until| now < *until)
    }

    /// Reserve one attempt of `key`: `Some` when under the limit (counted
    /// now), `None` when over it (refuse without checking anything).
    pub async fn try_reserve(
        &self,
        store: &Store,
        key: &str,
        limit: Limit,
        now: i64,
    ) -> Result<Option<Reservation>, StoreError> {
        if self.known_blocked(key, now) {
            return Ok(None);
        }
        let (count, window_start) = store.throttle_reserve(key, now, limit.window_secs).await?;
        if count > limit.max {
            let mut map = self.blocked_map();
            if map.len() >= MAX_REMEMBERED {
                map.retain(|_, until| now < *until);
                if map.len() >= MAX_REMEMBERED {
                    map.clear();
                }
            }
            map.insert(key.to_string(), window_start + limit.window_secs);
            return Ok(None);
        }
        Ok(Some(Reservation {
            key: key.to_string(),
            window_start,
            count,
        }))
    }

    /// Count one failed attempt of `key` whatever the limit (a failure that
    /// had no reservation).
    pub async fn record_failure(
        &self,
        store: &Store,
        key: &str,
        limit: Limit,
        now: i64,
    ) -> Result<(), StoreError> {
        store
            .throttle_reserve(key, now, limit.window_secs)
            .await
            .map(|_| ())
    }
}

/// Counts per key in fixed windows, in this node's memory (bounded: the
/// table is emptied when it holds [`LocalCounter::CAPACITY`] keys). For
/// anti-loop bounds that need no agreement between nodes.
#[derive(Debug, Default)]
pub struct LocalCounter {
    counts: Mutex<HashMap<String, (i64, i64)>>,
}

impl LocalCounter {
    pub const CAPACITY: usize = 100_000;

    /// Count one event of `key` in its window of `window_secs`: true while
    /// the window holds at most `max` of them.
    pub fn try_count(&self, key: &str, max: i64, window_secs: i64, now: i64) -> bool {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::CAPACITY && !map.contains_key(key) {
            map.retain(|_, (start, _)| now - *start < window_secs);
            if map.len() >= Self::CAPACITY {
                map.clear();
            }
        }
        let e = map.entry(key.to_string()).or_insert((now, 0));
        if now - e.0 >= window_secs {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= max
    }
}

/// A reservation held for one attempt: given back when dropped (a success,
/// a refusal for another reason, a busy gate, a store error, a client that
/// went away), kept only when [`Held::failed`] says the attempt really
/// failed (a wrong secret, password or code).
pub struct Held {
    store: Store,
    reservation: Option<Reservation>,
}

impl Held {
    pub fn new(store: &Store, reservation: Reservation) -> Held {
        Held {
            store: store.clone(),
            reservation: Some(reservation),
        }
    }

    /// Attempts in the window, this one included.
    pub fn count(&self) -> i64 {
        self.reservation.as_ref().map_or(0, |r| r.count)
    }

    /// The attempt failed: its count stays.
    pub fn failed(mut self) {
        self.reservation = None;
    }
}

impl Drop for Held {
    /// Give the reservation back, after the response, on the runtime (a
    /// failed release is logged: it never fails the request).
    fn drop(&mut self) {
        let Some(r) = self.reservation.take() else {
            return;
        };
        let store = self.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.throttle_release(&r.key, r.window_start).await {
                    tracing::warn!(error = %e, "failure-limit release failed");
                }
            });
        }
    }
}

/// The client's address: the right-most `X-Forwarded-For` entry when the
/// configuration trusts forwarded headers (the one added by our proxy),
/// else the TCP peer.
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trust_forwarded: bool,
) -> Option<IpAddr> {
    if trust_forwarded {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|s| !s.is_empty());
        if let Some(ip) = last.and_then(|s| {
            s.parse::<IpAddr>()
                .ok()
                .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        }) {
            return Some(ip);
        }
    }
    peer
}

/// The throttling key of an address: IPv4 as is, IPv6 by its /64 prefix
/// (one customer's network); an unknown address shares one key.
pub fn address_key(ip: Option<IpAddr>) -> IpAddr {
    match ip {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(IpAddr::V4(v4)) => IpAddr::V4(v4),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The client address key of a request (TCP peer from `ConnectInfo`, or
/// the trusted forwarded header).
pub fn request_address(parts: &axum::http::request::Parts, trust_forwarded: bool) -> IpAddr {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    address_key(client_ip(peer, &parts.headers, trust_forwarded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_from_peer_or_trusted_forwarded_header() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.append("x-forwarded-for", "3.3.3.3".parse().unwrap());
        // Not trusted: the header is ignored.
        assert_eq!(client_ip(Some(peer), &h, false), Some(peer));
        // Trusted: the right-most entry (added by our proxy).
        assert_eq!(client_ip(Some(peer), &h, true), "3.3.3.3".parse().ok());
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "9.9.9.9, [2001:db8::1]:443".parse().unwrap(),
        );
        assert_eq!(client_ip(None, &h, true), "2001:db8::1".parse().ok());
        // Garbage or absent: the peer.
        h.insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(client_ip(Some(peer), &h, true), Some(peer));
        assert_eq!(client_ip(Some(peer), &HeaderMap::new(), true), Some(peer));
    }

    #[test]
    fn local_counter_windows() {
        let c = LocalCounter::default();
        assert!(c.try_count("a", 2, 10, 100));
        assert!(c.try_count("a", 2, 10, 101));
        assert!(!c.try_count("a", 2, 10, 102));
        assert!(c.try_count("b", 2, 10, 102), "other keys apart");
        assert!(c.try_count("a", 2, 10, 110), "a new window");
    }

    #[test]
    fn address_keys() {
        let k = |s: &str| address_key(s.parse().ok());
        assert_eq!(k("192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
        assert_eq!(
            k("2001:db8:1:2:aaaa::1"),
            k("2001:db8:1:2:bbbb::2"),
            "same /64"
        );
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_eq!(address_key(None), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
}
