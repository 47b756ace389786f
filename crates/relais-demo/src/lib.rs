//! The demo around Relais — never part of the product library:
//! - [`idp`]: a genuine OpenID provider (discovery, JWKS, authorize, token,
//!   userinfo, logout) with fault injection, used as the demo's identity
//!   providers, by the integration tests and by the load tool;
//! - [`service`]: a demo service (relying party) built on `openidconnect`;
//! - [`aidants`]: the demo aidant, structure and mandate seeded at start;
//! - [`Stack`]: Relais, two demo providers and the demo services in one
//!   process (`relais demo`, tests, `relais-bench`).

pub mod aidants;
pub mod idp;
pub mod service;
mod stack;

pub use stack::*;
