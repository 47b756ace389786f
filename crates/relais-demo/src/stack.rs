//! `relais demo`: the broker, two demo identity providers (genuine OpenID
//! providers) and a demo service, on embedded SQLite, in one process.

use crate::idp::{demo_people, DemoClient, DemoIdp, DemoIdpConfig};
use relais::config::Config;
use relais::crypto::{keys, Alg, KeyRing};
use std::path::Path;
use std::sync::Arc;

pub const DEMO_CLIENT_ID: &str = "demo-service";
pub const DEMO_CLIENT_SECRET: &str = "demo-service-secret-change-me";

/// Addresses of the demo stack.
#[derive(Debug, Clone)]
pub struct Urls {
    pub broker: String,
    pub idp1: String,
    pub idp2: String,
    pub service: String,
    /// Agent federation: a ministry's provider and the default provider.
    pub idp3: String,
    pub idp4: String,
    pub agent_service: String,
}

pub const DEMO_AGENT_CLIENT_ID: &str = "demo-agent-service";
pub const DEMO_AGENT_CLIENT_SECRET: &str = "demo-agent-service-secret-change-me";

/// Broker configuration used by the demo (and a starting point for operators).
pub fn demo_config(urls: &Urls, listen: &str, database_url: &str, keys_dir: &Path) -> String {
    let Urls {
        broker,
        idp1,
        idp2,
        service: svc,
        idp3,
        idp4,
        agent_service,
    } = urls;
    format!(
        r#"
[server]
listen = "{listen}"
public_url = "{broker}"
database_url = "{database_url}"
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
delegation_domains = ["social", "papiers", "famille"]

[federations.agent]
issuer = "{broker}/agent"
profile = "agent"
name = "Relais Agents (démo)"
pairwise_secret = "demo-agent-pairwise-secret-not-for-production-012345"
acr_values = ["eidas1", "eidas1-mfa", "eidas2", "eidas3"]
mfa_acr = "eidas1-mfa"
default_provider = "proconnect"
session_ttl_secs = 28800

[[federations.agent.providers]]
id = "interieur"
name = "Ministère de l'Intérieur (démo)"
issuer = "{idp3}"
client_id = "relais"
client_secret = "relais-at-interieur"
scopes = ["openid", "given_name", "usual_name", "email", "uid", "siret", "siren", "organizational_unit", "belonging_population", "phone", "custom"]
acr_values = ["eidas1", "eidas1-mfa"]
domains = ["interieur.gouv.fr", "*.interieur.gouv.fr"]
default_siret = "13002526500013"
order = 1

[[federations.agent.providers]]
id = "proconnect"
name = "ProConnect Identité (démo)"
issuer = "{idp4}"
client_id = "relais"
client_secret = "relais-at-proconnect"
scopes = ["openid", "given_name", "usual_name", "email", "uid", "siret", "siren", "organizational_unit", "belonging_population", "phone", "custom"]
acr_values = ["eidas1"]
order = 2

[[federations.agent.clients]]
client_id = "{DEMO_AGENT_CLIENT_ID}"
name = "Portail des agents (démo)"
client_secret = "{DEMO_AGENT_CLIENT_SECRET}"
redirect_uris = ["{agent_service}/callback"]
post_logout_redirect_uris = ["{agent_service}/logged-out"]
scopes = ["openid", "given_name", "usual_name", "email", "uid", "siret", "siren", "organizational_unit", "belonging_population", "phone", "idp_id", "idp_acr", "amr", "custom"]
"#,
        keys = keys_dir.display(),
    )
}

/// Options of a demo stack (tests add clients and settings through them).
#[derive(Default)]
pub struct StackOptions {
    /// Database URL; default: SQLite file in the data folder.
    pub database_url: Option<String>,
    /// TOML appended to the generated configuration (e.g. more clients).
    pub extra_toml: String,
    /// Environment-style overrides (`RELAIS__…`) applied to the configuration.
    pub overrides: Vec<(String, String)>,
    /// Demo providers sign in people from `login_hint` without a form.
    pub auto_login: bool,
}

/// A running demo: broker, two providers, the demo service.
pub struct Stack {
    pub urls: Urls,
    pub state: Arc<relais::AppState>,
    pub idps: Vec<DemoIdp>,
    pub config: Config,
    /// The configuration file's text (before environment overrides), so
    /// more nodes can be started as separate `relais serve` processes.
    pub config_text: String,
    pub data_dir: std::path::PathBuf,
}

async fn listener(port: u16) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))
}

/// Serve a demo provider or service with the broker's timeouts and a
/// small connection cap (they share the broker's process).
fn serve_on(l: tokio::net::TcpListener, router: axum::Router, config: &Config) {
    relais::http::serve::spawn(l, router, relais::http::serve::Limits::demo(&config.server));
}

impl Stack {
    /// Start everything; `base_port` 0 picks free ports.
    pub async fn start(
        data_dir: &Path,
        base_port: u16,
        opts: StackOptions,
    ) -> Result<Stack, String> {
        let extra = opts.extra_toml.clone();
        Self::start_inner(data_dir, base_port, opts, move |_| extra).await
    }

    /// Start on free ports, with extra configuration computed from the URLs.
    pub async fn start_with_extra(
        data_dir: &Path,
        opts: StackOptions,
        extra: impl FnOnce(&Urls) -> String,
    ) -> Result<Stack, String> {
        Self::start_inner(data_dir, 0, opts, extra).await
    }

    async fn start_inner(
        data_dir: &Path,
        base_port: u16,
        opts: StackOptions,
        extra: impl FnOnce(&Urls) -> String,
    ) -> Result<Stack, String> {
        std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let port = |n: u16| if base_port == 0 { 0 } else { base_port + n };
        let ls = [
            listener(port(0)).await?,
            listener(port(1)).await?,
            listener(port(2)).await?,
            listener(port(3)).await?,
            listener(port(4)).await?,
            listener(port(5)).await?,
            listener(port(6)).await?,
        ];
        let url = |l: &tokio::net::TcpListener| {
            l.local_addr()
                .map(|a| format!("http://{a}"))
                .map_err(|e| e.to_string())
        };
        let urls = Urls {
            broker: url(&ls[0])?,
            idp1: url(&ls[1])?,
            idp2: url(&ls[2])?,
            service: url(&ls[3])?,
            idp3: url(&ls[4])?,
            idp4: url(&ls[5])?,
            agent_service: url(&ls[6])?,
        };
        let [l_broker, l_idp1, l_idp2, l_svc, l_idp3, l_idp4, l_asvc] = ls;
        let db = opts
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("relais.db").display()));
        let listen = l_broker
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string();
        let mut text = demo_config(&urls, &listen, &db, &data_dir.join("keys"));
        text.push_str(&extra(&urls));
        let config =
            Config::from_toml_with_env(&text, opts.overrides.clone()).map_err(|e| e.to_string())?;
        relais::http::serve::raise_fd_limit();
        // Keys for every federation; each demo provider accepts the
        // callback of every configured provider that points at it (one
        // redirect URI per provider), and every federation's logout return.
        let mut issuers = Vec::new();
        for (id, f) in &config.federations {
            let algs: Vec<Alg> = f
                .signing_algs
                .iter()
                .filter_map(|a| Alg::parse(a))
                .collect();
            keys::ensure(&config.server.keys_dir.join(id), &algs).map_err(|e| e.to_string())?;
            issuers.push(f.issuer.clone());
        }
        let mut idps = Vec::new();
        let people = [
            demo_people(1),
            demo_people(2),
            crate::idp::demo_agents(1),
            crate::idp::demo_agents(2),
        ];
        for (n, ((l, issuer, name, secret, acr), people)) in [
            (
                l_idp1,
                &urls.idp1,
                "Impôts (démo)",
                "relais-at-impots",
                &["eidas1", "eidas2"][..],
            ),
            (
                l_idp2,
                &urls.idp2,
                "Ameli (démo)",
                "relais-at-ameli",
                &["eidas1"][..],
            ),
            (
                l_idp3,
                &urls.idp3,
                "Ministère de l'Intérieur (démo)",
                "relais-at-interieur",
                &["eidas1", "eidas1-mfa"][..],
            ),
            (
                l_idp4,
                &urls.idp4,
                "ProConnect Identité (démo)",
                "relais-at-proconnect",
                &["eidas1"][..],
            ),
        ]
        .into_iter()
        .zip(people)
        .enumerate()
        {
            let dir = data_dir.join(format!("idp{}-keys", n + 1));
            keys::ensure(&dir, &[Alg::ES256]).map_err(|e| e.to_string())?;
            let ring = Arc::new(KeyRing::open(&dir).map_err(|e| e.to_string())?);
            let callbacks = callbacks_at(&config, issuer);
            let mut cfg = idp_config(issuer, name, n as u8 + 1, secret, &issuers, &callbacks, acr);
            cfg.people = people;
            cfg.auto_login = opts.auto_login;
            let idp = DemoIdp::new(cfg, ring);
            serve_on(l, idp.router(), &config);
            idps.push(idp);
        }
        let svc = crate::service::DemoService::new(
            "Mairie de Démoville",
            &urls.service,
            &urls.broker,
            DEMO_CLIENT_ID,
            DEMO_CLIENT_SECRET,
            &["openid", "identite_pivot", "email", "idp_id"],
        )?;
        serve_on(l_svc, svc.router(), &config);
        let agent_svc = crate::service::DemoService::new(
            "Portail des agents (démo)",
            &urls.agent_service,
            &format!("{}/agent", urls.broker),
            DEMO_AGENT_CLIENT_ID,
            DEMO_AGENT_CLIENT_SECRET,
            &[
                "openid",
                "given_name",
                "usual_name",
                "email",
                "uid",
                "siret",
                "organizational_unit",
                "idp_id",
                "idp_acr",
            ],
        )?;
        serve_on(l_asvc, agent_svc.router(), &config);
        let running = relais::server::start(&config, l_broker).await?;
        Ok(Stack {
            urls,
            state: running.state,
            idps,
            config,
            config_text: text,
            data_dir: data_dir.to_path_buf(),
        })
    }
}

/// Relais' redirect URIs for the providers configured with this issuer
/// (`{federation issuer}/callback/{provider id}`), in every federation.
fn callbacks_at(config: &Config, issuer: &str) -> Vec<String> {
    let same = |a: &str| a.trim_end_matches('/') == issuer.trim_end_matches('/');
    config
        .federations
        .values()
        .flat_map(|f| {
            f.providers
                .iter()
                .filter(|p| same(&p.issuer))
                .map(|p| format!("{}/callback/{}", f.issuer.trim_end_matches('/'), p.id))
        })
        .collect()
}

fn idp_config(
    issuer: &str,
    name: &str,
    which: u8,
    secret: &str,
    brokers: &[String],
    callbacks: &[String],
    acr: &[&str],
) -> DemoIdpConfig {
    DemoIdpConfig {
        issuer: issuer.to_string(),
        name: name.to_string(),
        people: demo_people(which),
        clients: vec![DemoClient {
            client_id: "relais".into(),
            client_secret: secret.into(),
            redirect_uris: callbacks.to_vec(),
            post_logout_redirect_uris: brokers
                .iter()
                .map(|b| format!("{b}/logout/callback"))
                .collect(),
        }],
        acr_values: acr.iter().map(|s| s.to_string()).collect(),
        auto_login: false,
        alg: Alg::ES256,
    }
}

pub async fn run(port: u16, data_dir: &Path) -> Result<(), String> {
    let stack = Stack::start(data_dir, port, StackOptions::default()).await?;
    let demo_aidants = crate::aidants::seed(&stack).await?;
    let u = &stack.urls;
    println!();
    println!("Relais demo is running (data in {}):", data_dir.display());
    println!(
        "  demo service     {}      <- open this in a browser",
        u.service
    );
    println!("  broker (issuer)  {}", u.broker);
    println!("  provider Impôts  {}", u.idp1);
    println!("  provider Ameli   {}", u.idp2);
    println!();
    println!("Test people (login / password):");
    for (which, label) in [(1u8, "Impôts"), (2u8, "Ameli")] {
        for p in demo_people(which) {
            println!(
                "  {label:7} {:10} / {:6}  {} {}",
                p.login,
                p.password,
                p.claims
                    .get("given_name")
                    .and_then(|v| v.as_str())
                    .unwrap_or(""),
                p.claims
                    .get("family_name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
            );
        }
    }
    println!("The person present at both providers gets the same `sub` at the service either way.");
    println!();
    println!(
        "Agent federation (issuer {}/agent, email-first sign-in):",
        u.broker
    );
    println!(
        "  agent service    {}      <- open this in a browser",
        u.agent_service
    );
    println!(
        "  provider Intérieur (domains interieur.gouv.fr, *.interieur.gouv.fr)  {}",
        u.idp3
    );
    println!(
        "  provider ProConnect Identité (default provider)                       {}",
        u.idp4
    );
    for (which, label) in [(1u8, "Intérieur"), (2u8, "ProConnect")] {
        for p in crate::idp::demo_agents(which) {
            println!(
                "  {label:10} {:10} / {:4}  {}",
                p.login,
                p.password,
                p.claims.get("email").and_then(|v| v.as_str()).unwrap_or("")
            );
        }
    }
    print_aidants(&demo_aidants, &u.broker);
    println!("Press Ctrl+C to stop.");
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

fn print_aidants(d: &crate::aidants::DemoAidants, broker: &str) {
    use crate::aidants::*;
    println!();
    println!("Aidants (acting for someone under a mandate, citizen federation):");
    println!("  organisation     {DEMO_ORG_NAME} (SIRET {DEMO_ORG_SIRET})");
    println!("  aidant           {DEMO_AIDANT_EMAIL} / {DEMO_AIDANT_PASSWORD}");
    println!("  TOTP secret      {DEMO_AIDANT_TOTP}   (fixed, demo only)");
    println!("  otpauth URI      {}", demo_otpauth_uri());
    println!(
        "  usager           angela (Impôts), mandate {} for {} (12 months)",
        d.mandate_id,
        DEMO_MANDATE_DOMAINS.join(", ")
    );
    println!("  How to: enrol the secret in an authenticator app (or `oathtool --totp -b {DEMO_AIDANT_TOTP}`),");
    println!("  open the demo service, sign in, choose \"Je suis un aidant professionnel\",");
    println!("  enter the e-mail, password and current code, pick Angela and a domain.");
    println!("  Use a browser without a citizen session (private window), since SSO skips the choice page.");
    println!(
        "  Create or revoke mandates at {broker}/aidant (the usager signs in themselves there)."
    );
}
