//! `relais aidants …` and `relais journal …`: the admin command line over
//! the aidants storage and the journal. Each function returns the text to
//! print, or an error message (the command then exits non-zero).

use super::journal;
use super::journal_key::{self, JournalKey};
use super::{Actor, NewAidant, Role, Salt, TotpKey, SALT_FILE};
use crate::config::Config;
use crate::server::open_store;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Unix seconds now.
pub fn now() -> i64 {
    crate::clock::system_now()
}

/// The deployment's journal salt: `{keys_dir}/journal-salt`, created on
/// first use.
pub fn salt(config: &Config) -> Result<Salt, String> {
    Salt::load_or_create(&config.server.keys_dir.join(SALT_FILE))
}

/// The deployment's TOTP encryption key: `{keys_dir}/totp-key`, created on
/// first use.
pub fn totp_key(config: &Config) -> Result<TotpKey, String> {
    TotpKey::in_keys_dir(&config.server.keys_dir)
}

/// `YYYY-MM-DD HH:MM UTC` for Unix seconds.
pub fn utc(ts: i64) -> String {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60
    )
}

/// Read one line (the password) from standard input, without its newline.
pub fn read_password() -> Result<String, String> {
    let mut s = String::new();
    std::io::stdin()
        .read_line(&mut s)
        .map_err(|e| format!("reading the password from standard input: {e}"))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

pub async fn org_create(
    config: &Config,
    name: &str,
    siret: &str,
    domains: Option<&str>,
) -> Result<String, String> {
    let store = open_store(config).await?;
    let domains: Vec<String> = domains
        .map(|d| {
            d.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(d) = domains.iter().find(|d| !config.aidants.domains.contains(d)) {
        return Err(format!(
            "domain {d:?} is not in the configured list ([aidants] domains: {})",
            config.aidants.domains.join(", ")
        ));
    }
    let org = store
        .create_organisation(name, siret, &domains, &Actor::Admin, now())
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "organisation {} created (SIRET {}, id {}, domains: {})",
        org.name,
        org.siret,
        org.id,
        org.allowed_domains(&config.aidants.domains).join(", ")
    ))
}

pub async fn org_list(config: &Config) -> Result<String, String> {
    let store = open_store(config).await?;
    let orgs = store
        .list_organisations()
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    for o in orgs {
        let _ = writeln!(
            out,
            "{}  {}  {}  {}",
            o.siret,
            if o.active { "active  " } else { "inactive" },
            o.name,
            o.allowed_domains(&config.aidants.domains).join(",")
        );
    }
    Ok(out.trim_end().to_string())
}

/// The organisation with this SIRET, or an error saying there is none.
async fn org_by_siret(
    store: &crate::store::Store,
    siret: &str,
) -> Result<crate::aidants::Organisation, String> {
    store
        .organisation_by_siret(siret)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no organisation with SIRET {siret}"))
}

/// The link of an enrolment token: `{issuer}/aidant/enrolment/{token}` of
/// the federation `citizen`, else of the first citizen-profile federation.
fn enrolment_link(config: &Config, token: &str) -> Result<String, String> {
    let mut feds: Vec<_> = config
        .federations
        .iter()
        .filter(|(_, f)| f.profile == crate::config::Profile::Citizen)
        .collect();
    feds.sort_by_key(|(id, _)| id.as_str() != "citizen");
    let (_, fed) = feds
        .first()
        .ok_or("enrolment links need a citizen federation")?;
    Ok(format!("{}/aidant/enrolment/{token}", fed.issuer))
}

/// Issue an enrolment link for `email` and describe it.
async fn issue_link(
    config: &Config,
    store: &crate::store::Store,
    key: &TotpKey,
    email: &str,
) -> Result<String, String> {
    let e = store
        .issue_enrolment(email, &Actor::Admin, key, now())
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "enrolment link (one use, until {}; send it to the aidant only):\n{}",
        utc(e.expires_at),
        enrolment_link(config, &e.token)?
    ))
}

pub async fn aidant_create(
    config: &Config,
    email: &str,
    name: &str,
    org_siret: &str,
    referent: bool,
    password: &str,
    link: bool,
) -> Result<String, String> {
    let store = open_store(config).await?;
    let salt = salt(config)?;
    let key = totp_key(config)?;
    let org = org_by_siret(&store, org_siret).await?;
    let created = store
        .create_aidant(
            &NewAidant {
                email,
                name,
                password,
                org_id: &org.id,
                role: if referent {
                    Role::Referent
                } else {
                    Role::Aidant
                },
            },
            &Actor::Admin,
            &salt,
            &key,
            now(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if link {
        return Ok(format!(
            "aidant {} created in {} (id {})\n{}",
            created.email,
            org.name,
            created.id,
            issue_link(config, &store, &key, &created.email).await?
        ));
    }
    Ok(format!(
        "aidant {} created in {} (id {})\n\
         Enrol the TOTP secret in an authenticator app now; it is not shown again.\n\
         secret: {}\n\
         otpauth URI: {}",
        created.email,
        org.name,
        created.id,
        created.totp_secret,
        created.otpauth_uri()
    ))
}

pub async fn reset_totp(config: &Config, email: &str, link: bool) -> Result<String, String> {
    let store = open_store(config).await?;
    let key = totp_key(config)?;
    if link {
        return Ok(format!(
            "TOTP secret of {email} replaced (account unlocked); the old codes no longer work \
             and the new secret works once confirmed at the link.\n{}",
            issue_link(config, &store, &key, email).await?
        ));
    }
    let created = store
        .reset_totp(email, &Actor::Admin, &key, now())
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "TOTP secret of {} replaced (account unlocked); the old codes no longer work.\n\
         secret: {}\n\
         otpauth URI: {}",
        created.email,
        created.totp_secret,
        created.otpauth_uri()
    ))
}

/// `relais aidants encrypt-secrets`: encrypt the TOTP secrets still stored
/// as is.
pub async fn encrypt_secrets(config: &Config) -> Result<String, String> {
    let store = open_store(config).await?;
    let key = totp_key(config)?;
    let n = store
        .encrypt_totp_secrets(&key, &Actor::Admin, now())
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{n} TOTP secret(s) encrypted with {}",
        config
            .server
            .keys_dir
            .join(super::secret::TOTP_KEY_FILE)
            .display()
    ))
}

/// `relais aidants org-deactivate` / `org-activate`.
pub async fn org_set_active(config: &Config, siret: &str, active: bool) -> Result<String, String> {
    let store = open_store(config).await?;
    let org = org_by_siret(&store, siret).await?;
    let changed = store
        .set_organisation_active(&org.id, active, &Actor::Admin, now())
        .await
        .map_err(|e| e.to_string())?;
    let state = if active { "active" } else { "inactive" };
    Ok(if changed {
        if active {
            format!(
                "organisation {} (SIRET {}) is active again",
                org.name, org.siret
            )
        } else {
            format!(
                "organisation {} (SIRET {}) deactivated: its mandates no longer authorise anything, \
                 no mandate can be created for it",
                org.name, org.siret
            )
        }
    } else {
        format!(
            "organisation {} (SIRET {}) was already {state}",
            org.name, org.siret
        )
    })
}

/// `relais aidants purge`: remove the personal data of usagers whose
/// mandates all ended more than `retention_days` ago (default: the
/// configuration's `[aidants] retention_days`).
pub async fn purge(config: &Config, retention_days: Option<u32>) -> Result<String, String> {
    let days = retention_days.unwrap_or(config.aidants.retention_days);
    let store = open_store(config).await?;
    let n = store
        .purge_usagers(i64::from(days), &Actor::Admin, now())
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{n} usager(s) whose mandates all ended more than {days} days ago: personal data removed"
    ))
}

pub async fn mandates(config: &Config, org_siret: &str) -> Result<String, String> {
    let store = open_store(config).await?;
    let org = org_by_siret(&store, org_siret).await?;
    let list = store
        .list_mandates(&org.id)
        .await
        .map_err(|e| e.to_string())?;
    let now = now();
    let mut out = format!(
        "{} (SIRET {}): {} mandate(s)\n",
        org.name,
        org.siret,
        list.len()
    );
    for m in list {
        let _ = writeln!(
            out,
            "mandate {}  usager {}  created {} by aidant {}  consent {} ({})",
            m.id,
            m.usager_id,
            utc(m.created_at),
            m.created_by,
            m.consent_version,
            m.consent_hash
        );
        for a in &m.authorisations {
            let _ = write!(
                out,
                "    {:12} {:8} {} -> {}",
                a.domain,
                a.status(now),
                utc(a.starts_at),
                utc(a.expires_at)
            );
            if let (Some(at), Some(by)) = (a.revoked_at, &a.revoked_by) {
                let _ = write!(out, "  revoked {} by {by}", utc(at));
            }
            out.push('\n');
        }
    }
    Ok(out.trim_end().to_string())
}

/// The federations' key folders: their public keys are trusted for heads
/// signed before the journal key existed (see `journal_key`).
pub fn legacy_key_dirs(config: &Config) -> Vec<PathBuf> {
    config
        .federations
        .keys()
        .map(|id| config.server.keys_dir.join(id))
        .collect()
}

/// The journal signing key, created on first use.
pub fn journal_key(config: &Config) -> Result<JournalKey, String> {
    JournalKey::load_or_create(&config.server.keys_dir, &legacy_key_dirs(config))
}

/// `relais journal verify [--heads FILE] [--max-unsigned N]`.
pub async fn journal_verify(
    config: &Config,
    heads_file: Option<&Path>,
    max_unsigned: Option<u64>,
) -> Result<String, String> {
    let keys = journal_key::trusted_keys(&config.server.keys_dir, &legacy_key_dirs(config))?;
    let external = match heads_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("heads file {}: {e}", path.display()))?;
            Some(journal::parse_heads(&text, &keys).map_err(|e| match e {
                journal::JournalError::HeadsFile { line, reason } => format!(
                    "journal NOT verified: heads file {}, line {line}: {reason}",
                    path.display()
                ),
                other => other.to_string(),
            })?)
        }
        None => None,
    };
    let store = open_store(config).await?;
    let r = match &external {
        Some(x) => journal::verify_against(&store, &keys, x).await,
        None => journal::verify_with_keys(&store, &keys).await,
    }
    .map_err(|e| match e {
        journal::JournalError::Broken { seq, reason } => {
            format!("journal BROKEN at entry {seq}: {reason}")
        }
        journal::JournalError::Rewritten { seq, reason } => {
            format!("journal REWRITTEN at or before entry {seq}: {reason}")
        }
        other => other.to_string(),
    })?;
    let mut lines = vec![format!(
        "journal verified: {} entries, {} signed head(s), {} signature(s) checked",
        r.entries, r.heads, r.signatures_verified
    )];
    let tail = r.unsigned_tail();
    lines.push(if r.last_signed > 0 {
        format!(
            "unsigned tail: {tail} entr{} after the last signed head (entry {})",
            if tail == 1 { "y" } else { "ies" },
            r.last_signed
        )
    } else {
        format!("unsigned tail: {tail} entries (no signed head)")
    });
    if let (Some(n), Some(path)) = (r.external_heads, heads_file) {
        lines.push(format!(
            "heads file {}: {n} head(s) match the journal, up to entry {} ({} entr{} after it)",
            path.display(),
            r.last_external,
            r.external_tail(),
            if r.external_tail() == 1 { "y" } else { "ies" }
        ));
    }
    if let Some(max) = max_unsigned {
        let tail = match heads_file {
            Some(_) => r.external_tail(),
            None => tail,
        };
        if tail > max {
            return Err(format!(
                "{}\njournal NOT verified: {tail} entries are not covered by a signed head{} (at most {max} allowed)",
                lines.join("\n"),
                if heads_file.is_some() { " of the heads file" } else { "" }
            ));
        }
    }
    Ok(lines.join("\n"))
}

/// Write the journal as JSON lines to standard output.
pub async fn journal_export(config: &Config) -> Result<(), String> {
    let store = open_store(config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    journal::export(&store, &mut out)
        .await
        .map_err(|e| e.to_string())?;
    std::io::Write::flush(&mut out).map_err(|e| e.to_string())
}

/// `relais journal sign-head [--out FILE]`: sign the current head with the
/// journal key, store it, and append it to `out`, else to `[aidants]
/// journal_heads_file` when set.
pub async fn journal_sign_head(config: &Config, out: Option<&Path>) -> Result<String, String> {
    let key = journal_key(config)?;
    let store = open_store(config).await?;
    let head = journal::sign_head(&store, &key.signer, now())
        .await
        .map_err(|e| e.to_string())?;
    let mut text = format!(
        "signed journal head: entry {} hash {} (key {})",
        head.seq, head.hash, head.kid
    );
    if let Some(path) = out.or(config.aidants.journal_heads_file.as_deref()) {
        journal::append_head_line(path, &head)
            .map_err(|e| format!("{text}\nbut it was not appended to the heads file: {e}"))?;
        let _ = write!(text, "\nappended to {}", path.display());
    }
    Ok(text)
}

/// `relais journal rotate-key`: a new journal key; the old public key stays
/// trusted.
pub fn journal_rotate_key(config: &Config) -> Result<String, String> {
    journal_key(config)?;
    let (old, new) = JournalKey::rotate(&config.server.keys_dir)?;
    Ok(format!(
        "journal key rotated: heads are now signed by {new}; {old} stays in {} to verify older heads",
        journal_key::dir(&config.server.keys_dir).join("public").display()
    ))
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(utc(-86_400), "1969-12-31 00:00 UTC");
    }
}
