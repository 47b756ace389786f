//! The broker session: what it holds ([`SessionData`], [`Authn`], [`Delegation`]), how one begins after an authentication ([`NewSession`]: a new id against session fixation), and the relogin mark ([`Relogin`]) for providers at which this browser may hold someone else's session.

use crate::app::Ctx;
use crate::app::Federation;
use crate::error::AppError;
use crate::http::cookies::*;
use axum::http::header;
use axum::response::Response;
use serde::{Deserialize, Serialize};

/// Providers at which this browser may still hold someone else's session:
/// a usager signed in on it for Relais' own pages (mandate creation,
/// `/usager`) at a provider without RP-initiated logout. The next sign-in
/// through such a provider on this browser asks for a fresh authentication
/// (`prompt=login`, `max_age=0`), so it is never silent single sign-on as
/// that usager; a completed sign-in there takes the provider off the list.
/// Kept in a cookie of its own (provider ids joined by `.`), which survives
/// the broker and aidant sessions: the provider's session does too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relogin(Vec<String>);

/// How long the mark lasts (provider sessions of unknown length).
pub const RELOGIN_MAX_AGE_SECS: i64 = 180 * 86_400;

impl Relogin {
    fn name(fed: &Federation) -> String {
        format!("{}_relogin", fed.cookie_name)
    }

    /// The mark, keeping only this federation's providers.
    pub fn read(fed: &Federation, cookies: &Cookies) -> Relogin {
        let mut ids: Vec<String> = Vec::new();
        for id in cookies
            .0
            .get(&Self::name(fed))
            .map(String::as_str)
            .unwrap_or("")
            .split('.')
        {
            if fed.provider(id).is_some() && !ids.iter().any(|x| x == id) {
                ids.push(id.to_string());
            }
        }
        Relogin(ids)
    }

    pub fn contains(&self, provider: &str) -> bool {
        self.0.iter().any(|p| p == provider)
    }

    pub fn add(&mut self, provider: &str) {
        if !self.contains(provider) {
            self.0.push(provider.to_string());
        }
    }

    pub fn remove(&mut self, provider: &str) {
        self.0.retain(|p| p != provider);
    }

    /// Add the cookie to `resp` when the mark differs from `before`.
    pub fn store_if_changed(&self, ctx: &Ctx, before: &Relogin, resp: &mut Response) {
        if self == before {
            return;
        }
        let max_age = if self.0.is_empty() {
            0
        } else {
            RELOGIN_MAX_AGE_SECS
        };
        resp.headers_mut().append(
            header::SET_COOKIE,
            cookie_header(ctx, &Self::name(&ctx.fed), &self.0.join("."), max_age),
        );
    }
}

/// A session about to begin after an authentication: a new id (session
/// fixation), made before it is stored so that it can be written elsewhere
/// first (the interaction's binding).
pub struct NewSession {
    /// The cookie's value.
    value: String,
    /// The stored id (hash of the value).
    pub id: String,
}

impl Default for NewSession {
    fn default() -> Self {
        NewSession::new()
    }
}

impl NewSession {
    pub fn new() -> NewSession {
        let value = crate::crypto::random_token(32);
        let id = session_key(&value);
        NewSession { value, id }
    }

    /// Store the session (deleting `replaces`, the browser's previous one)
    /// and set its cookie on `resp`.
    pub async fn begin(
        self,
        ctx: &Ctx,
        data: &SessionData,
        replaces: Option<&str>,
        now: i64,
        mut resp: Response,
    ) -> Result<Response, AppError> {
        let fed = &ctx.fed;
        let json = serde_json::to_string(data).map_err(AppError::internal)?;
        ctx.app
            .store
            .put(
                crate::store::Kind::Session,
                &self.id,
                &fed.id,
                &json,
                now + fed.cfg.session_ttl_secs,
            )
            .await?;
        if let Some(old) = replaces {
            ctx.app
                .store
                .delete(crate::store::Kind::Session, old, &fed.id)
                .await?;
        }
        resp.headers_mut().insert(
            header::SET_COOKIE,
            set_cookie(ctx, &self.value, fed.cfg.session_ttl_secs),
        );
        Ok(resp)
    }
}

/// A broker session: anonymous until an upstream sign-in completed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionData {
    pub authn: Option<Authn>,
    /// Who may act for others from this browser (the aidants' domain: an
    /// aidant's sign-in, reusable while fresh). Stored as `aidant`.
    #[serde(default, rename = "aidant")]
    pub acting: crate::oidc::interaction::DomainStep,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Authn {
    /// Stable key of the person for pairwise subjects (citizens: the
    /// normalised pivot identity key; agents: `agent:<account id>`).
    pub subject_key: String,
    /// Subject for clients registered with `subject_type = "public"` (agents).
    #[serde(default)]
    pub public_sub: Option<String>,
    /// Name shown on the information page.
    pub display_name: String,
    /// Every claim of the person that scopes may release.
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub provider: String,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: i64,
    /// Public session id (`sid` claim).
    pub sid: String,
    /// Upstream ID token, kept as `id_token_hint` for upstream logout.
    pub upstream_id_token: String,
    /// Delegated sign-in: an aidant acts for the person under a mandate.
    #[serde(default)]
    pub delegation: Option<Delegation>,
}

/// The mandate (and domain) an aidant used to act for an usager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub mandate_id: String,
    pub domain: String,
    pub aidant_id: String,
    pub org_id: String,
}

pub async fn load_session(ctx: &Ctx, id: &str) -> Result<Option<SessionData>, AppError> {
    let raw = ctx
        .app
        .store
        .get(crate::store::Kind::Session, id, &ctx.fed.id, ctx.now())
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}
