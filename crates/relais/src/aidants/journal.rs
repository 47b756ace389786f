//! The tamper-evident journal of aidant actions.
//!
//! Every entry stores the hash of the previous one (a hash chain):
//!
//! ```text
//! data_hash = hex SHA-256(data, the JSON text exactly as stored)
//! hash      = hex SHA-256(JSON text of
//!               ["relais-journal-v1", seq, at, kind, actor, org_id, data_hash, prev_hash])
//! ```
//!
//! with `prev_hash` of the first entry 64 zeros and `seq` counting from 1
//! without gaps. Editing, inserting or removing a row therefore breaks the
//! chain at that row; removing the *last* rows is caught by signed heads
//! (a compact JWS over `{seq, hash, iat}` made with the journal key, see
//! [`super::journal_key`], stored in `journal_heads` and appended to an
//! external heads file). There is no code path that updates or deletes
//! entries, and database triggers reject UPDATE and DELETE. Someone who
//! drops the triggers, rewrites rows and recomputes every hash (and drops
//! the heads in the database) is caught by the external heads file, which
//! is meant to live on another system.
//!
//! Personal fields never enter the journal: the caller passes them apart,
//! and only their HMAC-SHA-256 under the deployment's [`Salt`] is stored,
//! under `data.personal`. Purging personal data from the other tables after
//! the retention period therefore leaves the chain verifiable.

use super::journal_key::{JournalKey, PublicKeys};
use super::Salt;
use crate::app::AppState;
use crate::crypto::{JwsError, SigningKey, Unverified};
use crate::store::{Store, StoreError};
use serde_json::{json, Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `typ` header of signed heads.
pub const HEAD_TYP: &str = "relais-journal-head+jwt";

/// Entries read per query when verifying or exporting.
const PAGE: i64 = 500;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// The hash of an entry from its fields (see the module documentation).
pub fn entry_hash(
    seq: i64,
    at: i64,
    kind: &str,
    actor: &str,
    org_id: Option<&str>,
    data_hash: &str,
    prev_hash: &str,
) -> String {
    let canonical = json!([
        "relais-journal-v1",
        seq,
        at,
        kind,
        actor,
        org_id,
        data_hash,
        prev_hash
    ]);
    sha256_hex(canonical.to_string().as_bytes())
}

/// A stored journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub org_id: Option<String>,
    pub data_hash: String,
    /// JSON text, personal fields replaced by their salted hashes.
    pub data: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Entry {
    /// The hash this entry should have.
    pub fn computed_hash(&self) -> String {
        entry_hash(
            self.seq,
            self.at,
            &self.kind,
            &self.actor,
            self.org_id.as_deref(),
            &self.data_hash,
            &self.prev_hash,
        )
    }

    /// Check this entry alone and its link to the previous one.
    pub fn check(&self, expected_seq: i64, prev_hash: &str) -> Result<(), String> {
        if self.seq != expected_seq {
            return Err(if self.seq > expected_seq {
                format!(
                    "entry {expected_seq} is missing (the next one is {})",
                    self.seq
                )
            } else {
                format!("entry {} is out of order", self.seq)
            });
        }
        if sha256_hex(self.data.as_bytes()) != self.data_hash {
            return Err("its data does not match its data hash".into());
        }
        if self.prev_hash != prev_hash {
            return Err("it does not link to the previous entry".into());
        }
        if self.computed_hash() != self.hash {
            return Err("its hash does not match its content".into());
        }
        Ok(())
    }

    /// One JSON object (a line of `relais journal export`). `data` is the
    /// stored JSON text, so that `data_hash` can be recomputed from it.
    pub fn to_json(&self) -> Value {
        json!({
            "type": "entry",
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "actor": self.actor,
            "org_id": self.org_id,
            "data": self.data,
            "data_hash": self.data_hash,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        })
    }
}

/// An entry to append: its place in the chain is decided by the store,
/// inside the transaction that appends it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub org_id: Option<String>,
    pub data: String,
}

/// Something that happened, as the caller describes it.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// e.g. `mandate.created`.
    pub kind: &'a str,
    /// e.g. `aidant:{id}` (see `Actor::name`).
    pub actor: &'a str,
    pub org_id: Option<&'a str>,
    /// Non-personal details (a JSON object).
    pub data: Value,
    /// Personal fields: only their salted hashes are stored.
    pub personal: Vec<(&'a str, String)>,
}

impl Event<'_> {
    /// Minimise the data and make it ready to append.
    pub fn prepare(self, salt: Option<&Salt>, now: i64) -> Pending {
        let mut data = match self.data {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        // Personal values are never stored: without a salt (a caller bug)
        // they are dropped rather than hashed without one.
        let mut personal = Map::new();
        if let Some(salt) = salt {
            for (name, value) in self.personal {
                personal.insert(name.to_string(), Value::String(salt.hash(&value)));
            }
        }
        if !personal.is_empty() {
            data.insert("personal".into(), Value::Object(personal));
        }
        Pending {
            at: now,
            kind: self.kind.to_string(),
            actor: self.actor.to_string(),
            org_id: self.org_id.map(str::to_string),
            data: Value::Object(data).to_string(),
        }
    }
}

impl Pending {
    /// Place this entry after `last` (seq, hash), or first.
    pub fn seal(self, last: Option<(i64, String)>) -> Entry {
        let (seq, prev_hash) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_string()),
        };
        let data_hash = sha256_hex(self.data.as_bytes());
        let hash = entry_hash(
            seq,
            self.at,
            &self.kind,
            &self.actor,
            self.org_id.as_deref(),
            &data_hash,
            &prev_hash,
        );
        Entry {
            seq,
            at: self.at,
            kind: self.kind,
            actor: self.actor,
            org_id: self.org_id,
            data_hash,
            data: self.data,
            prev_hash,
            hash,
        }
    }
}

/// A signed chain head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
    /// Compact JWS over `{"seq", "hash", "iat"}`.
    pub signature: String,
    pub kid: String,
    pub at: i64,
}

impl Head {
    pub fn to_json(&self) -> Value {
        json!({
            "type": "head",
            "seq": self.seq,
            "hash": self.hash,
            "signature": self.signature,
            "kid": self.kid,
            "at": self.at,
        })
    }

    /// The JWS payload and header agree with the row.
    fn check_consistent(&self) -> Result<(), String> {
        let jws = Unverified::parse(&self.signature).map_err(|e| format!("signed head: {e}"))?;
        let typ = jws.header.get("typ").and_then(Value::as_str);
        if typ != Some(HEAD_TYP) || jws.kid() != Some(self.kid.as_str()) {
            return Err("signed head: header does not match".into());
        }
        if jws.claims.get("seq").and_then(Value::as_i64) != Some(self.seq)
            || jws.claims.get("hash").and_then(Value::as_str) != Some(self.hash.as_str())
        {
            return Err("signed head: signed content does not match the stored head".into());
        }
        Ok(())
    }
}

/// Journal failures.
#[derive(Debug)]
pub enum JournalError {
    /// The chain is broken at entry `seq` (the first broken one), or a head
    /// in the database does not match it or is not validly signed.
    Broken {
        seq: i64,
        reason: String,
    },
    /// The chain is consistent but differs from a head of the external
    /// heads file: it was rewritten at or before entry `seq`.
    Rewritten {
        seq: i64,
        reason: String,
    },
    /// A line of the external heads file is not a valid signed head.
    HeadsFile {
        line: usize,
        reason: String,
    },
    Store(StoreError),
    /// Nothing to sign.
    Empty,
    Signing(String),
    Io(String),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Broken { seq, reason } => {
                write!(f, "journal broken at entry {seq}: {reason}")
            }
            JournalError::Rewritten { seq, reason } => {
                write!(f, "journal rewritten at or before entry {seq}: {reason}")
            }
            JournalError::HeadsFile { line, reason } => {
                write!(f, "heads file, line {line}: {reason}")
            }
            JournalError::Store(e) => e.fmt(f),
            JournalError::Empty => f.write_str("the journal is empty"),
            JournalError::Signing(e) => write!(f, "signing failed: {e}"),
            JournalError::Io(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for JournalError {}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> Self {
        JournalError::Store(e)
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    /// Signed heads in the database matching the chain.
    pub heads: u64,
    /// Of those, heads whose signature was checked (all of them when keys
    /// were given).
    pub signatures_verified: u64,
    /// The last entry a database head covers (0: none).
    pub last_signed: i64,
    /// Heads of the external heads file checked (None: no file given).
    pub external_heads: Option<u64>,
    /// The last entry an external head covers (0: none).
    pub last_external: i64,
}

impl Report {
    /// Entries after the last signed head in the database: their removal
    /// would go unnoticed by the database alone.
    pub fn unsigned_tail(&self) -> u64 {
        self.entries
            .saturating_sub(u64::try_from(self.last_signed).unwrap_or(0))
    }

    /// Entries after the last head of the external file.
    pub fn external_tail(&self) -> u64 {
        self.entries
            .saturating_sub(u64::try_from(self.last_external).unwrap_or(0))
    }
}

/// A head read from the external heads file (its signature checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalHead {
    /// Line number in the file (from 1).
    pub line: usize,
    pub seq: i64,
    pub hash: String,
    /// When it was signed.
    pub iat: i64,
}

/// Read an external heads file: one compact JWS per line (blank lines are
/// skipped). Every line must be a head signed by one of `keys`: a line
/// signed by an unknown key, badly signed or malformed is an error naming
/// the line. Sorted by `seq`.
pub fn parse_heads(text: &str, keys: &PublicKeys) -> Result<Vec<ExternalHead>, JournalError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let jws = line.trim();
        if jws.is_empty() {
            continue;
        }
        let bad = |reason: String| JournalError::HeadsFile {
            line: i + 1,
            reason,
        };
        let parsed = Unverified::parse(jws).map_err(|e| bad(e.to_string()))?;
        let u = keys.verify(jws).map_err(|e| {
            bad(match e {
                JwsError::UnknownKey => format!(
                    "signed by an unknown key {:?} (not in the journal key folder's public/)",
                    parsed.kid().unwrap_or("")
                ),
                other => other.to_string(),
            })
        })?;
        if u.header.get("typ").and_then(Value::as_str) != Some(HEAD_TYP) {
            return Err(bad(format!("not a journal head (typ is not {HEAD_TYP})")));
        }
        let seq = u.claims.get("seq").and_then(Value::as_i64).unwrap_or(0);
        let hash = u.claims.get("hash").and_then(Value::as_str).unwrap_or("");
        let iat = u.claims.get("iat").and_then(Value::as_i64);
        let hex64 = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        let Some(iat) = iat.filter(|_| seq >= 1 && hex64) else {
            return Err(bad("a signed head needs seq, hash and iat".into()));
        };
        out.push(ExternalHead {
            line: i + 1,
            seq,
            hash: hash.to_string(),
            iat,
        });
    }
    out.sort_by_key(|h| (h.seq, h.line));
    Ok(out)
}

/// Append one entry (in its own transaction; concurrent appends are
/// serialised, so the chain never forks). Personal fields are hashed with
/// `salt`.
pub async fn append(
    store: &Store,
    event: Event<'_>,
    salt: &Salt,
    now: i64,
) -> Result<Entry, StoreError> {
    store.journal_append(event.prepare(Some(salt), now)).await
}

/// Verify the whole chain and that every signed head matches it, without
/// checking head signatures. Returns the number of entries.
pub async fn verify(store: &Store) -> Result<u64, JournalError> {
    verify_full(store, None, &[]).await.map(|r| r.entries)
}

/// Verify the whole chain, every signed head, and the heads' signatures
/// with the journal's public `keys`: a head signed by any other key, or
/// badly signed, breaks verification.
pub async fn verify_with_keys(store: &Store, keys: &PublicKeys) -> Result<Report, JournalError> {
    verify_full(store, Some(keys), &[]).await
}

/// [`verify_with_keys`], and also check the chain against the heads of an
/// external heads file (see [`parse_heads`]): a chain rewritten with
/// recomputed hashes (and heads in the database removed or re-signed)
/// differs from them, and the error names the first differing head and
/// the last entry the file confirms.
pub async fn verify_against(
    store: &Store,
    keys: &PublicKeys,
    external: &[ExternalHead],
) -> Result<Report, JournalError> {
    let mut r = verify_full(store, Some(keys), external).await?;
    r.external_heads = Some(u64::try_from(external.len()).unwrap_or(u64::MAX));
    Ok(r)
}

async fn verify_full(
    store: &Store,
    keys: Option<&PublicKeys>,
    external: &[ExternalHead],
) -> Result<Report, JournalError> {
    let mut heads = store.journal_heads().await?;
    heads.sort_by_key(|h| h.seq);
    let mut external: Vec<&ExternalHead> = external.iter().collect();
    external.sort_by_key(|h| (h.seq, h.line));
    let mut report = Report::default();
    let mut heads_iter = heads.iter().peekable();
    let mut external_iter = external.into_iter().peekable();
    let mut prev_hash = GENESIS.to_string();
    let mut expected = 1i64;
    loop {
        let page = store.journal_page(expected - 1, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for entry in &page {
            entry
                .check(expected, &prev_hash)
                .map_err(|reason| JournalError::Broken {
                    seq: expected,
                    reason,
                })?;
            while let Some(head) = heads_iter.next_if(|h| h.seq <= entry.seq) {
                check_head(head, entry, keys, &mut report)?;
            }
            while let Some(x) = external_iter.next_if(|h| h.seq <= entry.seq) {
                if x.seq != entry.seq || x.hash != entry.hash {
                    return Err(rewritten(x, entry, report.last_external));
                }
                report.last_external = entry.seq;
            }
            prev_hash.clone_from(&entry.hash);
            expected += 1;
            report.entries += 1;
        }
    }
    let end = expected - 1;
    if let Some(head) = heads_iter.next() {
        return Err(JournalError::Broken {
            seq: head.seq,
            reason: format!(
                "a head signed at {} covers entry {} but the journal ends at {end}: entries were removed",
                head.at, head.seq
            ),
        });
    }
    if let Some(x) = external_iter.next() {
        return Err(JournalError::Rewritten {
            seq: x.seq,
            reason: format!(
                "the head at line {} of the heads file (signed {}) covers entry {} but the journal ends at {end}: entries were removed",
                x.line,
                super::cli::utc(x.iat),
                x.seq
            ),
        });
    }
    Ok(report)
}

/// The error for an external head the chain does not match.
fn rewritten(x: &ExternalHead, entry: &Entry, confirmed: i64) -> JournalError {
    let short = |h: &str| h.chars().take(16).collect::<String>();
    let range = if confirmed > 0 {
        format!(
            "entries 1 to {confirmed} match the heads file, so the rewrite is within entries {} to {}",
            confirmed + 1,
            x.seq
        )
    } else {
        format!(
            "no earlier head in the file, so the rewrite is within entries 1 to {}",
            x.seq
        )
    };
    JournalError::Rewritten {
        seq: x.seq,
        reason: format!(
            "entry {} has hash {}…, the head at line {} of the heads file (signed {}) says {}…; {range}",
            entry.seq,
            short(&entry.hash),
            x.line,
            super::cli::utc(x.iat),
            short(&x.hash)
        ),
    }
}

fn check_head(
    head: &Head,
    entry: &Entry,
    keys: Option<&PublicKeys>,
    report: &mut Report,
) -> Result<(), JournalError> {
    let broken = |reason: String| JournalError::Broken {
        seq: head.seq,
        reason,
    };
    if head.seq < 1 {
        return Err(broken(format!(
            "a signed head refers to entry {}",
            head.seq
        )));
    }
    if head.seq != entry.seq || head.hash != entry.hash {
        return Err(broken(format!(
            "the entry differs from the head signed at {}",
            head.at
        )));
    }
    head.check_consistent().map_err(broken)?;
    if let Some(keys) = keys {
        match keys.verify(&head.signature) {
            Ok(_) => report.signatures_verified += 1,
            Err(JwsError::UnknownKey) => {
                return Err(broken(format!(
                    "the head signed at {} is signed by an unknown key {:?}, not a journal key of this deployment",
                    head.at, head.kid
                )))
            }
            Err(e) => {
                return Err(broken(format!(
                    "the signature of the head signed at {} is invalid ({e})",
                    head.at
                )))
            }
        }
    }
    report.heads += 1;
    report.last_signed = head.seq;
    Ok(())
}

/// Write every entry, then every signed head, as JSON lines. Returns the
/// number of entries.
pub async fn export<W: std::io::Write>(store: &Store, out: &mut W) -> Result<u64, JournalError> {
    let io = |e: std::io::Error| JournalError::Io(e.to_string());
    let mut after = 0i64;
    let mut n = 0u64;
    loop {
        let page = store.journal_page(after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.seq;
        for entry in &page {
            writeln!(out, "{}", entry.to_json()).map_err(io)?;
            n += 1;
        }
    }
    let mut heads = store.journal_heads().await?;
    heads.sort_by_key(|h| (h.seq, h.at));
    for head in &heads {
        writeln!(out, "{}", head.to_json()).map_err(io)?;
    }
    Ok(n)
}

/// Sign the current chain head with `key` and store it.
pub async fn sign_head(store: &Store, key: &SigningKey, now: i64) -> Result<Head, JournalError> {
    let (seq, hash) = store.journal_last().await?.ok_or(JournalError::Empty)?;
    let signature = key
        .sign_jwt(HEAD_TYP, &json!({"seq": seq, "hash": hash, "iat": now}))
        .map_err(|e| JournalError::Signing(e.to_string()))?;
    let head = Head {
        seq,
        hash,
        signature,
        kid: key.kid.clone(),
        at: now,
    };
    store.journal_insert_head(&head).await?;
    Ok(head)
}

/// Append a signed head (its compact JWS, one line) to the external heads
/// file at `path`, created if missing, and flush it to disk.
pub fn append_head_line(path: &std::path::Path, head: &Head) -> Result<(), JournalError> {
    use std::io::Write;
    let io = |e: std::io::Error| JournalError::Io(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{}\n", head.signature).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)
}

/// Sign the head when it is due: the chain grew since the latest signed
/// head (or none was signed yet) and that head is at least `min_interval`
/// seconds old. Returns the new head, or None when nothing was due. Several
/// nodes running this at the same pace sign about once per interval
/// between them (a race only adds a second head for the same entry, which
/// verification accepts).
pub async fn sign_head_if_due(
    store: &Store,
    key: &SigningKey,
    now: i64,
    min_interval: i64,
) -> Result<Option<Head>, JournalError> {
    let Some((seq, _)) = store.journal_last().await? else {
        return Ok(None);
    };
    if let Some((head_seq, head_at)) = store.journal_last_head().await? {
        if head_seq >= seq || now - head_at < min_interval {
            return Ok(None);
        }
    }
    sign_head(store, key, now).await.map(Some)
}

/// Run `task` every `interval_secs` seconds (the first run one interval
/// after start, not at once), on a spawned task; nothing when 0.
fn spawn_every<F, Fut>(interval_secs: u64, mut task: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if interval_secs == 0 {
        return;
    }
    // Validation caps it; clamp anyway so `Instant + period` cannot overflow.
    let interval_secs = interval_secs.min(crate::config::MAX_JOURNAL_HEAD_INTERVAL_SECS);
    tokio::spawn(async move {
        let period = std::time::Duration::from_secs(interval_secs);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            task().await;
        }
    });
}

/// Started by `relais serve` when `[aidants] purge_usagers_interval_secs` is
/// not 0: every interval (the first one interval after start), purge the
/// personal data of usagers whose mandates all ended more than
/// `retention_days` ago (`Store::purge_usagers`, journalled as
/// `usagers.purged` by `system:serve`).
pub fn spawn_retention_purge(state: Arc<AppState>, interval_secs: u64, retention_days: u32) {
    spawn_every(interval_secs, move || {
        let state = state.clone();
        async move {
            let days = i64::from(retention_days);
            match state
                .store
                .purge_usagers(days, &super::Actor::System, state.now())
                .await
            {
                Ok(n) => tracing::info!(usagers = n, retention_days, "retention purge done"),
                Err(e) => tracing::warn!(error = %e, "retention purge failed"),
            }
        }
    });
}

/// Started by `relais serve` when `[aidants] journal_head_interval_secs` is
/// not 0: every interval, sign the journal head with the journal key of
/// `keys_dir` (read again each time, so `relais journal rotate-key` is
/// picked up) if the chain grew, and append it to `heads_file` when set.
pub fn spawn_head_signing(
    state: Arc<AppState>,
    interval_secs: u64,
    keys_dir: PathBuf,
    heads_file: Option<PathBuf>,
) {
    let clamped = interval_secs.min(crate::config::MAX_JOURNAL_HEAD_INTERVAL_SECS);
    let min_interval = i64::try_from(clamped).unwrap_or(i64::MAX);
    // A little slack so that a node's own previous head (signed one
    // interval ago) never makes it skip a turn.
    let min_interval = min_interval - min_interval / 10;
    spawn_every(interval_secs, move || {
        let state = state.clone();
        let keys_dir = keys_dir.clone();
        let heads_file = heads_file.clone();
        async move {
            let key = match JournalKey::load(&keys_dir) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "journal head not signed: no journal key");
                    return;
                }
            };
            match sign_head_if_due(&state.store, &key.signer, state.now(), min_interval).await {
                Ok(Some(h)) => {
                    tracing::info!(seq = h.seq, kid = %h.kid, "journal head signed");
                    if let Some(path) = &heads_file {
                        if let Err(e) = append_head_line(path, &h) {
                            tracing::warn!(error = %e, "journal head not appended to the heads file");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "journal head signing failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn salt() -> Salt {
        Salt::new(&[7u8; 32]).unwrap()
    }

    fn event(kind: &str) -> Event<'_> {
        Event {
            kind,
            actor: "admin:cli",
            org_id: Some("org1"),
            data: json!({"b": 2, "a": 1}),
            personal: vec![("email", "marie@example.fr".to_string())],
        }
    }

    #[test]
    fn hashing_is_canonical_and_covers_every_field() {
        let h = entry_hash(1, 10, "k", "a", Some("o"), "d", GENESIS);
        assert_eq!(h.len(), 64);
        assert_eq!(h, entry_hash(1, 10, "k", "a", Some("o"), "d", GENESIS));
        // Independent computation of the documented serialization.
        let text = format!(r#"["relais-journal-v1",1,10,"k","a","o","d","{GENESIS}"]"#);
        assert_eq!(h, sha256_hex(text.as_bytes()));
        let others = [
            entry_hash(2, 10, "k", "a", Some("o"), "d", GENESIS),
            entry_hash(1, 11, "k", "a", Some("o"), "d", GENESIS),
            entry_hash(1, 10, "K", "a", Some("o"), "d", GENESIS),
            entry_hash(1, 10, "k", "b", Some("o"), "d", GENESIS),
            entry_hash(1, 10, "k", "a", None, "d", GENESIS),
            entry_hash(1, 10, "k", "a", Some(""), "d", GENESIS),
            entry_hash(1, 10, "k", "a", Some("o"), "e", GENESIS),
            entry_hash(1, 10, "k", "a", Some("o"), "d", &"1".repeat(64)),
            // Field boundaries are unambiguous.
            entry_hash(1, 10, "k\",\"a", "", Some("o"), "d", GENESIS),
        ];
        for o in others {
            assert_ne!(o, h);
        }
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn personal_fields_are_stored_as_salted_hashes_only() {
        let p = event("aidant.created").prepare(Some(&salt()), 100);
        assert!(!p.data.contains("marie"), "{}", p.data);
        let data: Value = serde_json::from_str(&p.data).unwrap();
        assert_eq!(data["a"], 1);
        assert_eq!(data["personal"]["email"], salt().hash("marie@example.fr"));
        assert_ne!(
            Salt::new(&[8u8; 32]).unwrap().hash("marie@example.fr"),
            salt().hash("marie@example.fr"),
            "the hash depends on the deployment salt"
        );
        assert!(Salt::new(&[1u8; 8]).is_err());
        // Without a salt, personal values are dropped, never stored.
        let p = event("x").prepare(None, 100);
        assert!(!p.data.contains("personal") && !p.data.contains("marie"));
        // Non-object data is wrapped.
        let p = Event {
            data: json!("hello"),
            personal: vec![],
            ..event("x")
        }
        .prepare(None, 1);
        assert_eq!(p.data, r#"{"value":"hello"}"#);
    }

    #[test]
    fn chain_links_and_tampering() {
        let e1 = event("one").prepare(Some(&salt()), 100).seal(None);
        assert_eq!((e1.seq, e1.prev_hash.as_str()), (1, GENESIS));
        let e2 = event("two")
            .prepare(Some(&salt()), 101)
            .seal(Some((e1.seq, e1.hash.clone())));
        assert_eq!((e2.seq, &e2.prev_hash), (2, &e1.hash));
        e1.check(1, GENESIS).unwrap();
        e2.check(2, &e1.hash).unwrap();
        assert!(e2.check(2, GENESIS).unwrap_err().contains("link"));
        assert!(e1.check(2, GENESIS).unwrap_err().contains("out of order"));
        assert!(e2.check(1, GENESIS).unwrap_err().contains("missing"));
        // Edited data.
        let mut t = e2.clone();
        t.data = t.data.replace("\"a\":1", "\"a\":9");
        assert!(t.check(2, &e1.hash).unwrap_err().contains("data"));
        // Edited data with a recomputed data hash: the entry hash breaks.
        t.data_hash = sha256_hex(t.data.as_bytes());
        assert!(t.check(2, &e1.hash).unwrap_err().contains("hash"));
        // Edited metadata.
        for f in [
            |e: &mut Entry| e.at += 1,
            |e: &mut Entry| e.kind.push('x'),
            |e: &mut Entry| e.actor.push('x'),
            |e: &mut Entry| e.org_id = None,
        ] {
            let mut t = e2.clone();
            f(&mut t);
            assert!(t.check(2, &e1.hash).is_err());
        }
        // Fully recomputed entry: the next link breaks instead.
        let mut t = e1.clone();
        t.kind = "forged".into();
        t.hash = t.computed_hash();
        t.check(1, GENESIS).unwrap();
        assert!(e2.check(2, &t.hash).is_err());
    }

    #[test]
    fn heads_file_lines_must_be_heads_signed_by_a_journal_key() {
        let dir =
            std::env::temp_dir().join(format!("relais-heads-{}", crate::crypto::random_token(6)));
        let key = JournalKey::load_or_create(&dir, &[]).unwrap();
        let mut keys = PublicKeys::new();
        keys.insert(key.signer.public_jwk.clone());
        let head = |seq: i64, hash: &str| {
            key.signer
                .sign_jwt(HEAD_TYP, &json!({"seq": seq, "hash": hash, "iat": 100}))
                .unwrap()
        };
        let h = "ab".repeat(32);
        let text = format!("{}\n\n{}\n", head(4, &h), head(2, &h));
        let heads = parse_heads(&text, &keys).unwrap();
        // Blank lines skipped, sorted by seq, lines numbered from 1.
        assert_eq!(
            heads.iter().map(|x| (x.seq, x.line)).collect::<Vec<_>>(),
            [(2, 3), (4, 1)]
        );
        let bad = |text: String, why: &str| match parse_heads(&text, &keys) {
            Err(JournalError::HeadsFile { line, reason }) => {
                assert_eq!(line, 2, "{reason}");
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("{why}: {other:?}"),
        };
        let first = head(1, &h);
        bad(format!("{first}\nnot a jws\n"), "malformed");
        bad(format!("{first}\n{}\n", head(0, &h)), "seq, hash and iat");
        bad(format!("{first}\n{}\n", head(3, "zz")), "seq, hash and iat");
        let other_typ = key
            .signer
            .sign_jwt("JWT", &json!({"seq": 1, "hash": h, "iat": 1}))
            .unwrap();
        bad(format!("{first}\n{other_typ}\n"), "not a journal head");
        let stranger = JournalKey::load_or_create(&dir.join("x"), &[]).unwrap();
        let forged = stranger
            .signer
            .sign_jwt(HEAD_TYP, &json!({"seq": 1, "hash": h, "iat": 1}))
            .unwrap();
        bad(format!("{first}\n{forged}\n"), "unknown key");
        // A valid signature over other content: a bad signature.
        let (_, payload_sig) = forged.split_once('.').unwrap();
        let (h0, _) = first.split_once('.').unwrap();
        bad(format!("{first}\n{h0}.{payload_sig}\n"), "signature");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn export_json_keeps_the_exact_data_text() {
        let e = event("one").prepare(Some(&salt()), 100).seal(None);
        let line = e.to_json().to_string();
        let v: Value = serde_json::from_str(&line).unwrap();
        let data = v["data"].as_str().unwrap();
        assert_eq!(
            sha256_hex(data.as_bytes()),
            v["data_hash"].as_str().unwrap()
        );
    }
}
