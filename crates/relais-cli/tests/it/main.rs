//! Integration tests: real HTTP on 127.0.0.1 against a real Relais, real demo
//! identity providers, and the `openidconnect` crate acting as the service.
//! Every storage-touching test runs on SQLite, and on PostgreSQL when
//! `RELAIS_TEST_DATABASE_URL` is set.

// Tests act as the outside world (services signing assertions, a browser
// naming its files): they read the system clock, not the broker's.
#![allow(clippy::disallowed_methods)]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agents;
mod aidants_flow;
mod browser;
mod faults;
mod federations;
mod flows;
mod fuzz_regressions;
mod keys_cli;
mod limits;
mod mandates;
mod mixup;
mod multinode;
mod negative;
mod outage;
mod rejections;
mod security;
mod serve;
mod storage;
mod upstream_session;
