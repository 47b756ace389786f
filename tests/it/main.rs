//! Integration tests: real HTTP on 127.0.0.1 against a real Relais, real demo
//! identity providers, and the `openidconnect` crate acting as the service.
//! Every storage-touching test runs on SQLite, and on PostgreSQL when
//! `RELAIS_TEST_DATABASE_URL` is set.

mod agents;
mod aidants_flow;
mod browser;
mod common;
mod faults;
mod federations;
mod flows;
mod fuzz_regressions;
mod keys_cli;
mod mandates;
mod multinode;
mod negative;
mod outage;
mod serve;
mod storage;
