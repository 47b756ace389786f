//! The `relais` command line: keys, config check, hash-secret.

use relais_testkit::*;
use std::process::Command;

fn relais(args: &[&str], config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_relais"))
        .args(args)
        .env("RELAIS_CONFIG", config)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn keys_generate_list_rotate_and_config_check() {
    let dir = temp_dir("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let urls = relais_demo::Urls {
        broker: "http://127.0.0.1:1".into(),
        idp1: "http://127.0.0.1:2".into(),
        idp2: "http://127.0.0.1:3".into(),
        service: "http://127.0.0.1:4".into(),
        idp3: "http://127.0.0.1:5".into(),
        idp4: "http://127.0.0.1:6".into(),
        agent_service: "http://127.0.0.1:7".into(),
    };
    let cfg = dir.join("relais.toml");
    let text = relais_demo::demo_config(
        &urls,
        "127.0.0.1:0",
        &format!("sqlite://{}", dir.join("db").display()),
        &dir.join("keys"),
    );
    std::fs::write(&cfg, text).unwrap();

    let (ok, out) = relais(&["config", "check"], &cfg);
    assert!(!ok, "no keys yet: {out}");
    assert!(out.contains("no active RS256 key"), "{out}");
    for alg in ["RS256", "ES256", "EdDSA"] {
        let (ok, out) = relais(&["keys", "generate", "--alg", alg], &cfg);
        assert!(ok, "{out}");
    }
    let (ok, out) = relais(&["config", "check"], &cfg);
    assert!(
        !ok && out.contains("federation agent: no active RS256 key"),
        "each federation has its own keys: {out}"
    );
    for alg in ["RS256", "ES256", "EdDSA"] {
        let (ok, out) = relais(
            &["keys", "generate", "--federation", "agent", "--alg", alg],
            &cfg,
        );
        assert!(ok && out.contains("/agent/"), "{out}");
    }
    let (ok, out) = relais(&["config", "check"], &cfg);
    assert!(ok, "{out}");
    let (ok, out) = relais(&["keys", "generate", "--alg", "ES256"], &cfg);
    assert!(
        ok && out.contains("/next/"),
        "second key is the next one: {out}"
    );
    let (_, before) = relais(&["keys", "list"], &cfg);
    let next_kid = before
        .lines()
        .find(|l| l.starts_with("next") && l.contains("ES256"))
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let (ok, out) = relais(&["keys", "rotate", "--alg", "ES256"], &cfg);
    assert!(ok, "{out}");
    let (_, after) = relais(&["keys", "list"], &cfg);
    let active = after
        .lines()
        .find(|l| l.starts_with("active") && l.contains("ES256"))
        .unwrap();
    assert!(
        active.contains(&next_kid),
        "next became active:\n{before}\n{after}"
    );
    assert!(after.lines().any(|l| l.starts_with("retired")), "{after}");
    let (ok, out) = relais(&["keys", "generate", "--alg", "HS256"], &cfg);
    assert!(!ok && out.contains("unknown algorithm"), "{out}");

    // An unknown field is explained.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[server]", "[server]\nlisten_port = 1"),
    )
    .unwrap();
    let (ok, out) = relais(&["config", "check"], &cfg);
    assert!(!ok && out.contains("unknown field"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hash_secret_outputs_an_argon2id_phc_string() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_relais"))
        .arg("hash-secret")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let phc = String::from_utf8(out.stdout).unwrap();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    assert!(relais::crypto::secrets::verify_secret(phc.trim(), "s3cret"));
}
