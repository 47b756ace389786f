//! Starting Relais: database, migrations, state, background tasks, HTTP(S).

use crate::app::{self, AppState};
use crate::config::Config;
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Open the store and apply migrations.
pub async fn open_store(config: &Config) -> Result<Store, String> {
    let store = Store::connect(
        &config.server.database_url,
        config.server.database_max_connections,
    )
    .await
    .map_err(|e| format!("database {}: {e}", redact(&config.server.database_url)))?;
    store
        .migrate()
        .await
        .map_err(|e| format!("migrations: {e}"))?;
    Ok(store)
}

/// Hide a password in a database URL for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Build the state, bind `listener` and serve until the task is aborted.
pub async fn start(config: &Config, listener: TcpListener) -> Result<Running, String> {
    let store = open_store(config).await?;
    let state = Arc::new(app::build(config, store).await?);
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    spawn_maintenance(state.clone(), config.server.purge_interval_secs);
    if config.aidants.journal_head_interval_secs > 0 {
        // Created (or loaded) now, so that a problem stops the start.
        let key = crate::aidants::cli::journal_key(config)?;
        tracing::info!(kid = %key.signer.kid, "journal signing key loaded");
    }
    crate::aidants::journal::spawn_head_signing(
        state.clone(),
        config.aidants.journal_head_interval_secs,
        config.server.keys_dir.clone(),
        config.aidants.journal_heads_file.clone(),
    );
    crate::aidants::journal::spawn_retention_purge(
        state.clone(),
        config.aidants.purge_usagers_interval_secs,
        config.aidants.retention_days,
    );
    let app = crate::app(state.clone());
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(c), Some(k)) => Some(tls_config(c, k)?),
        _ => None,
    };
    crate::http::serve::raise_fd_limit();
    let limits = crate::http::serve::Limits::from_config(&config.server);
    tracing::debug!(?limits, "connection limits");
    let task = tokio::spawn(crate::http::serve::serve(listener, app, limits, tls));
    Ok(Running { addr, state, task })
}

/// Purge expired rows and pick up key rotations made by other nodes.
fn spawn_maintenance(state: Arc<AppState>, purge_every: u64) {
    let s = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(purge_every.max(1)));
        loop {
            tick.tick().await;
            match s.store.purge_expired(s.now()).await {
                Ok(n) if n > 0 => tracing::debug!(rows = n, "expired rows purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purge failed"),
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            for fed in &state.federations {
                match fed.keys.refresh() {
                    Ok(true) => tracing::info!(federation = %fed.id, "signing keys reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(federation = %fed.id, error = %e, "key reload failed"),
                }
            }
        }
    });
}

fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| format!("{}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("{}: {e}", key.display()))?,
    ))
    .map_err(|e| format!("{}: {e}", key.display()))?
    .ok_or_else(|| format!("{}: no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Load registry people from CSV text into the database; returns how many.
pub async fn import_registry(config: &Config, csv: &str) -> Result<usize, String> {
    let records = crate::subject::registry::parse_registry_csv(csv)?;
    let store = open_store(config).await?;
    let rows: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r.identity.identity_key(),
                crate::subject::registry::registry_lookup_key(&r.identity),
                crate::oidc::callback::record_json(r),
            )
        })
        .collect();
    store.registry_put(&rows).await.map_err(|e| e.to_string())?;
    Ok(rows.len())
}
