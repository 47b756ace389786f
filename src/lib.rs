#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
//! Relais: an OpenID Connect identity federation broker.

pub mod crypto;
