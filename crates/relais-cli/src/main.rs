//! The `relais` command line.

use clap::{Parser, Subcommand};
use relais::config::Config;
use relais::crypto::{keys, Alg, KeyStatus};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "relais",
    version,
    about = "Relais — OpenID Connect identity federation broker"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the broker.
    Serve {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
    },
    /// Run the demo: broker, two demo identity providers and a demo service, on SQLite.
    Demo {
        /// Port of the broker; the providers and the service use the next ones.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Folder for the demo database and keys.
        #[arg(long, default_value = "relais-demo-data")]
        data_dir: PathBuf,
    },
    /// Apply database migrations.
    Migrate {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
    },
    /// Manage signing keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Hash a client secret (read from standard input) as an argon2id PHC string.
    HashSecret,
    /// Load tool: drive complete sign-ins (or one endpoint) against a Relais it starts.
    Bench(relais_bench::Args),
    /// Identity registry (RNIPP-like check) tools.
    Registry {
        #[command(subcommand)]
        cmd: RegistryCmd,
    },
    /// Aidants: organisations, aidant accounts, mandates.
    Aidants {
        #[command(subcommand)]
        cmd: AidantsCmd,
    },
    /// The tamper-evident journal of aidant actions.
    Journal {
        #[command(subcommand)]
        cmd: JournalCmd,
    },
}

#[derive(Subcommand)]
enum AidantsCmd {
    /// Create an organisation (structure habilitée).
    OrgCreate {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        #[arg(long)]
        name: String,
        /// 14 digits, Luhn-checked.
        #[arg(long)]
        siret: String,
        /// Procedure domains its mandates may cover, comma-separated (default: all).
        #[arg(long)]
        domains: Option<String>,
    },
    /// List organisations.
    OrgList {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
    },
    /// Create an aidant (password read from standard input); prints the TOTP secret once.
    Create {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// SIRET of the aidant's organisation.
        #[arg(long)]
        org: String,
        /// Référent of the organisation (manages its aidants and mandates).
        #[arg(long)]
        referent: bool,
        /// Print a one-time enrolment link (QR code page, 72 h) instead of the secret.
        #[arg(long)]
        enrolment_link: bool,
    },
    /// Replace an aidant's TOTP secret (and unlock the account); prints the new secret once.
    ResetTotp {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        #[arg(long)]
        email: String,
        /// Print a one-time enrolment link (QR code page, 72 h) instead of the secret.
        #[arg(long)]
        enrolment_link: bool,
    },
    /// Deactivate an organisation: its mandates stop authorising, no new ones.
    OrgDeactivate {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        #[arg(long)]
        siret: String,
    },
    /// Activate a deactivated organisation again.
    OrgActivate {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        #[arg(long)]
        siret: String,
    },
    /// Encrypt the TOTP secrets still stored unencrypted (older versions).
    EncryptSecrets {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
    },
    /// Remove the personal data of usagers whose mandates all ended more than N days ago.
    Purge {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        /// Default: [aidants] retention_days of the configuration.
        #[arg(long)]
        retention_days: Option<u32>,
    },
    /// List an organisation's mandates and their domains.
    Mandates {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        /// SIRET of the organisation.
        #[arg(long)]
        org: String,
    },
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Check the hash chain, the signed heads and their signatures (journal key); exits non-zero at the first problem.
    Verify {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        /// External heads file (one signed head per line, as written by `sign-head --out` and `[aidants] journal_heads_file`): the chain must match every head in it.
        #[arg(long)]
        heads: Option<PathBuf>,
        /// Fail when more than N entries come after the last signed head (of the heads file when given).
        #[arg(long)]
        max_unsigned: Option<u64>,
    },
    /// Print the journal as JSON lines (entries, then signed heads).
    Export {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
    },
    /// Sign the current chain head with the journal key ({keys_dir}/journal, created on first use).
    SignHead {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        /// Also append the signed head to this file (default: [aidants] journal_heads_file, if set).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Ignored (heads were once signed with a federation key; they now use the journal key).
        #[arg(long, hide = true)]
        federation: Option<String>,
    },
    /// Replace the journal key; the old public key stays trusted for verification.
    RotateKey {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Generate a key (active if none is, else next).
    Generate {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        #[arg(long, default_value = "citizen")]
        federation: String,
        #[arg(long)]
        alg: String,
    },
    /// List keys and their status.
    List {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        #[arg(long, default_value = "citizen")]
        federation: String,
    },
    /// Rotate: next becomes active, active becomes retired, a new next is made.
    Rotate {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        #[arg(long, default_value = "citizen")]
        federation: String,
        #[arg(long)]
        alg: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file and explain every problem.
    Check {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Load people from a CSV file (header: given_name,family_name,birthdate,gender,birthplace,birthcountry,status).
    Import {
        #[arg(long, env = "RELAIS_CONFIG", default_value = "relais.toml")]
        config: PathBuf,
        file: PathBuf,
    },
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,hyper=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

fn keys_dir(config: &Path, federation: &str) -> Result<PathBuf, String> {
    let c = load(config)?;
    if !c.federations.contains_key(federation) {
        return Err(format!(
            "no federation {federation:?} in {}",
            config.display()
        ));
    }
    Ok(c.server.keys_dir.join(federation))
}

fn parse_alg(a: &str) -> Result<Alg, String> {
    Alg::parse(a).ok_or_else(|| format!("unknown algorithm {a:?}: use RS256, ES256 or EdDSA"))
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Serve { config } => {
            let c = load(&config)?;
            init_tracing(c.server.log_format == "json");
            let listener = tokio::net::TcpListener::bind(&c.server.listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", c.server.listen))?;
            let started = std::time::Instant::now();
            let running = relais::server::start(&c, listener).await?;
            tracing::info!(addr = %running.addr, ready_ms = started.elapsed().as_millis() as u64, "relais ready");
            tokio::select! {
                _ = running.task => {}
                _ = shutdown_signal() => tracing::info!("shutting down"),
            }
            Ok(())
        }
        Cmd::Demo { port, data_dir } => {
            init_tracing(false);
            relais_demo::run(port, &data_dir).await
        }
        Cmd::Migrate { config } => {
            let c = load(&config)?;
            relais::server::open_store(&c).await?;
            println!(
                "migrations applied to {}",
                relais::server::redact(&c.server.database_url)
            );
            Ok(())
        }
        Cmd::Keys { cmd } => match cmd {
            KeysCmd::Generate {
                config,
                federation,
                alg,
            } => {
                let dir = keys_dir(&config, &federation)?;
                let p = keys::generate(&dir, parse_alg(&alg)?, None).map_err(|e| e.to_string())?;
                println!("generated {}", p.display());
                Ok(())
            }
            KeysCmd::List { config, federation } => {
                let dir = keys_dir(&config, &federation)?;
                let set = relais::crypto::KeySet::load(&dir).map_err(|e| e.to_string())?;
                for i in set.infos() {
                    let status = match i.status {
                        KeyStatus::Active => "active",
                        KeyStatus::Next => "next",
                        KeyStatus::Retired => "retired",
                    };
                    println!(
                        "{status:8} {:6} {}  {}",
                        i.alg.as_str(),
                        i.kid,
                        i.file.display()
                    );
                }
                Ok(())
            }
            KeysCmd::Rotate {
                config,
                federation,
                alg,
            } => {
                let dir = keys_dir(&config, &federation)?;
                match keys::rotate(&dir, parse_alg(&alg)?).map_err(|e| e.to_string())? {
                    keys::Rotation::Rotated => println!(
                        "rotated {alg} in {}; running nodes pick it up within 5 seconds",
                        dir.display()
                    ),
                    keys::Rotation::NextCreated => println!(
                        "there was no next {alg} key: one was created and is now published; \
                         run rotate again once caches have refreshed (a few minutes) to make it active"
                    ),
                }
                Ok(())
            }
        },
        Cmd::Config {
            cmd: ConfigCmd::Check { config },
        } => {
            let c = load(&config)?;
            let mut problems = Vec::new();
            for (id, f) in &c.federations {
                let dir = c.server.keys_dir.join(id);
                match relais::crypto::KeySet::load(&dir) {
                    Ok(set) => {
                        for a in &f.signing_algs {
                            if parse_alg(a).ok().and_then(|a| set.signer(a)).is_none() {
                                problems.push(format!(
                                    "federation {id}: no active {a} key in {} (relais keys generate --federation {id} --alg {a})",
                                    dir.display()
                                ));
                            }
                        }
                    }
                    Err(e) => problems.push(format!("federation {id}: keys: {e}")),
                }
            }
            if problems.is_empty() {
                println!("{}: configuration is valid", config.display());
                Ok(())
            } else {
                Err(problems.join("\n"))
            }
        }
        Cmd::HashSecret => {
            let mut s = String::new();
            std::io::stdin()
                .read_line(&mut s)
                .map_err(|e| e.to_string())?;
            let h = relais::crypto::secrets::hash_secret(s.trim_end_matches(['\n', '\r']))?;
            println!("{h}");
            Ok(())
        }
        Cmd::Bench(mut args) => {
            // The Relais under test is this binary, unless told otherwise.
            if args.relais.is_none() {
                args.relais = Some(std::env::current_exe().map_err(|e| e.to_string())?);
            }
            relais_bench::main_with(args).await
        }
        Cmd::Registry {
            cmd: RegistryCmd::Import { config, file },
        } => {
            let c = load(&config)?;
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let n = relais::server::import_registry(&c, &text).await?;
            println!("{n} people loaded into the registry");
            Ok(())
        }
        Cmd::Aidants { cmd } => {
            use relais::aidants::cli;
            let out = match cmd {
                AidantsCmd::OrgCreate {
                    config,
                    name,
                    siret,
                    domains,
                } => cli::org_create(&load(&config)?, &name, &siret, domains.as_deref()).await?,
                AidantsCmd::OrgList { config } => cli::org_list(&load(&config)?).await?,
                AidantsCmd::Create {
                    config,
                    email,
                    name,
                    org,
                    referent,
                    enrolment_link,
                } => {
                    let c = load(&config)?;
                    let password = cli::read_password()?;
                    cli::aidant_create(&c, &email, &name, &org, referent, &password, enrolment_link)
                        .await?
                }
                AidantsCmd::ResetTotp {
                    config,
                    email,
                    enrolment_link,
                } => cli::reset_totp(&load(&config)?, &email, enrolment_link).await?,
                AidantsCmd::Mandates { config, org } => {
                    cli::mandates(&load(&config)?, &org).await?
                }
                AidantsCmd::OrgDeactivate { config, siret } => {
                    cli::org_set_active(&load(&config)?, &siret, false).await?
                }
                AidantsCmd::OrgActivate { config, siret } => {
                    cli::org_set_active(&load(&config)?, &siret, true).await?
                }
                AidantsCmd::EncryptSecrets { config } => {
                    cli::encrypt_secrets(&load(&config)?).await?
                }
                AidantsCmd::Purge {
                    config,
                    retention_days,
                } => cli::purge(&load(&config)?, retention_days).await?,
            };
            println!("{out}");
            Ok(())
        }
        Cmd::Journal { cmd } => {
            use relais::aidants::cli;
            match cmd {
                JournalCmd::Verify {
                    config,
                    heads,
                    max_unsigned,
                } => {
                    println!(
                        "{}",
                        cli::journal_verify(&load(&config)?, heads.as_deref(), max_unsigned)
                            .await?
                    );
                }
                JournalCmd::Export { config } => cli::journal_export(&load(&config)?).await?,
                JournalCmd::SignHead {
                    config,
                    out,
                    federation,
                } => {
                    if federation.is_some() {
                        eprintln!(
                            "relais: warning: --federation is ignored: heads are signed with the journal key"
                        );
                    }
                    println!(
                        "{}",
                        cli::journal_sign_head(&load(&config)?, out.as_deref()).await?
                    );
                }
                JournalCmd::RotateKey { config } => {
                    println!("{}", cli::journal_rotate_key(&load(&config)?)?);
                }
            }
            Ok(())
        }
    }
}

/// Ctrl+C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    relais::crypto::gate::return_freed_memory_to_the_system();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relais: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relais: {e}");
            ExitCode::FAILURE
        }
    }
}
