//! The one clock of Relais. Every protocol time (expiry, `iat`, windows,
//! TOTP steps) comes from [`Clock::now`]; `clippy.toml` refuses
//! `SystemTime::now` anywhere else.
//!
//! The integration tests move time forward (expiry, `max_age`, mandate
//! ends) with [`Clock::advance`], which exists only with the `test-clock`
//! feature (enabled for the crate's own tests through its dev-dependency
//! on itself), never in a build of the product.

#[cfg(feature = "test-clock")]
use std::sync::atomic::{AtomicI64, Ordering};

/// Unix seconds of the system clock (0 before 1970).
#[allow(clippy::disallowed_methods)]
pub fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The application's clock (a field of the application state).
#[derive(Debug, Default)]
pub struct Clock {
    #[cfg(feature = "test-clock")]
    offset: AtomicI64,
}

impl Clock {
    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        #[cfg(feature = "test-clock")]
        {
            system_now() + self.offset.load(Ordering::Relaxed)
        }
        #[cfg(not(feature = "test-clock"))]
        {
            system_now()
        }
    }

    /// Move this clock forward by `secs` (tests only).
    #[cfg(feature = "test-clock")]
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::Relaxed);
    }
}
