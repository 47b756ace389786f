//! `relais demo`: the broker, two demo identity providers (genuine OpenID
//! providers) and a demo service, on embedded SQLite, in one process.

pub mod idp;
pub mod service;

use crate::config::Config;
use crate::crypto::{keys, Alg, KeyRing};
use idp::{demo_people, DemoClient, DemoIdp, DemoIdpConfig};
use std::path::Path;
use std::sync::Arc;

pub const DEMO_CLIENT_ID: &str = "demo-service";
pub const DEMO_CLIENT_SECRET: &str = "demo-service-secret-change-me";

/// Broker configuration used by the demo (and a starting point for operators).
pub fn demo_config(port: u16, data_dir: &Path) -> String {
    let broker = format!("http://127.0.0.1:{port}");
    let idp1 = format!("http://127.0.0.1:{}", port + 1);
    let idp2 = format!("http://127.0.0.1:{}", port + 2);
    let svc = format!("http://127.0.0.1:{}", port + 3);
    let db = data_dir.join("relais.db");
    let keys = data_dir.join("keys");
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{broker}"
database_url = "sqlite://{db}"
keys_dir = "{keys}"

[federations.citizen]
issuer = "{broker}"
name = "Relais (démo)"
pairwise_secret = "demo-pairwise-secret-not-for-production-0123456789"

[[federations.citizen.providers]]
id = "impots"
name = "Impôts (démo)"
issuer = "{idp1}"
client_id = "relais"
client_secret = "relais-at-impots"
auth_method = "client_secret_basic"
scopes = ["openid", "identite_pivot", "email"]
acr_values = ["eidas1", "eidas2"]
order = 1

[[federations.citizen.providers]]
id = "ameli"
name = "Ameli (démo)"
issuer = "{idp2}"
client_id = "relais"
client_secret = "relais-at-ameli"
auth_method = "client_secret_post"
scopes = ["openid", "identite_pivot", "email"]
acr_values = ["eidas1"]
order = 2

[[federations.citizen.clients]]
client_id = "{DEMO_CLIENT_ID}"
name = "Mairie de Démoville"
client_secret = "{DEMO_CLIENT_SECRET}"
redirect_uris = ["{svc}/callback"]
post_logout_redirect_uris = ["{svc}/logged-out"]
scopes = ["openid", "profile", "birth", "identite_pivot", "email", "idp_id", "amr"]
"#,
        db = db.display(),
        keys = keys.display(),
    )
}

fn idp_config(issuer: &str, name: &str, which: u8, secret: &str, broker: &str, acr: &[&str]) -> DemoIdpConfig {
    DemoIdpConfig {
        issuer: issuer.to_string(),
        name: name.to_string(),
        people: demo_people(which),
        clients: vec![DemoClient {
            client_id: "relais".into(),
            client_secret: secret.into(),
            redirect_uris: vec![format!("{broker}/callback")],
            post_logout_redirect_uris: vec![format!("{broker}/logout/callback")],
        }],
        acr_values: acr.iter().map(|s| s.to_string()).collect(),
        auto_login: false,
        alg: Alg::ES256,
    }
}

async fn serve_router(router: axum::Router, port: u16) -> Result<(), String> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(l, router).await {
            tracing::error!(error = %e, "demo server stopped");
        }
    });
    Ok(())
}

pub async fn run(port: u16, data_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let broker = format!("http://127.0.0.1:{port}");
    let text = demo_config(port, data_dir);
    let config = Config::from_toml_with_env(&text, std::env::vars()).map_err(|e| e.to_string())?;
    keys::ensure(&config.server.keys_dir.join("citizen"), &[Alg::RS256, Alg::ES256, Alg::EdDSA]).map_err(|e| e.to_string())?;
    for (i, (name, secret, acr)) in [
        ("Impôts (démo)", "relais-at-impots", &["eidas1", "eidas2"][..]),
        ("Ameli (démo)", "relais-at-ameli", &["eidas1"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let n = i as u16 + 1;
        let dir = data_dir.join(format!("idp{n}-keys"));
        keys::ensure(&dir, &[Alg::ES256]).map_err(|e| e.to_string())?;
        let ring = Arc::new(KeyRing::open(&dir).map_err(|e| e.to_string())?);
        let issuer = format!("http://127.0.0.1:{}", port + n);
        let idp = DemoIdp::new(idp_config(&issuer, name, n as u8, secret, &broker, acr), ring);
        serve_router(idp.router(), port + n).await?;
    }
    let svc_url = format!("http://127.0.0.1:{}", port + 3);
    let svc = service::DemoService::new(
        "Mairie de Démoville",
        &svc_url,
        &broker,
        DEMO_CLIENT_ID,
        DEMO_CLIENT_SECRET,
        &["openid", "identite_pivot", "email", "idp_id"],
    )?;
    serve_router(svc.router(), port + 3).await?;
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let running = crate::server::start(&config, listener).await?;
    println!();
    println!("Relais demo is running (data in {}):", data_dir.display());
    println!("  demo service     {svc_url}      <- open this in a browser");
    println!("  broker (issuer)  {broker}");
    println!("  provider Impôts  http://127.0.0.1:{}", port + 1);
    println!("  provider Ameli   http://127.0.0.1:{}", port + 2);
    println!();
    println!("Test people (login / password):");
    for (which, label) in [(1u8, "Impôts"), (2u8, "Ameli")] {
        for p in demo_people(which) {
            println!(
                "  {label:7} {:10} / {:6}  {} {}",
                p.login,
                p.password,
                p.claims.get("given_name").and_then(|v| v.as_str()).unwrap_or(""),
                p.claims.get("family_name").and_then(|v| v.as_str()).unwrap_or("")
            );
        }
    }
    println!("The person present at both providers gets the same `sub` at the service either way.");
    println!("Press Ctrl+C to stop.");
    tokio::select! {
        _ = running.task => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
