//! Replays the fuzzing regression corpus (`fuzz/regressions/<target>/`)
//! through the very functions the fuzz targets call (`fuzz/src/harness.rs`,
//! included here), on a normal `cargo test`: every input must return without
//! a panic; inputs named `crash-*` (one per crash the fuzzer found) and `reject-*` must
//! also be rejected; those named `accept-*` must be accepted (seeds that
//! show the target reaches past its parser).

#[path = "../../../../fuzz/src/harness.rs"]
mod harness;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no regression input", dir.display());
    files
}

fn check(target: &str, name: &str, outcome: harness::Outcome) {
    if name.starts_with("crash-") || name.starts_with("reject-") {
        assert!(outcome.is_err(), "{target}/{name}: accepted: {outcome:?}");
    }
    if name.starts_with("accept-") {
        assert!(outcome.is_ok(), "{target}/{name}: rejected: {outcome:?}");
    }
}

#[tokio::test]
async fn fuzz_regressions_replay() {
    let dir = relais_testkit::temp_dir("fuzz");
    let fx = harness::fixture(&dir).await.unwrap();
    type WithFixture = fn(&harness::Fixture, &[u8]) -> harness::Outcome;
    let with_fixture: [(&str, WithFixture); 5] = [
        ("params", harness::params),
        ("jws", harness::jws),
        ("jwks", harness::jwks),
        ("client_assertion", harness::client_assertion),
        ("id_token_hint", harness::id_token_hint),
    ];
    for (target, run) in with_fixture {
        for (name, data) in corpus(target) {
            check(target, &name, run(&fx, &data));
        }
    }
    type Plain = fn(&[u8]) -> harness::Outcome;
    let plain: [(&str, Plain); 7] = [
        ("claims", harness::claims),
        ("pivot_identity", harness::pivot_identity),
        ("agent_identity", harness::agent_identity),
        ("config_toml", harness::config_toml),
        ("env_overlay", harness::env_overlay),
        ("basic_auth", harness::basic_auth),
        ("registry_csv", harness::registry_csv),
    ];
    for (target, run) in plain {
        for (name, data) in corpus(target) {
            check(target, &name, run(&data));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
