//! A sign-in in progress: the validated request ([`AuthRequest`]), the
//! interaction row that carries it between pages ([`Interaction`]), what a
//! code stands for ([`CodeData`]), and the helpers every sign-in page uses
//! (loading the interaction, its CSRF check, error redirects and pages).

use super::claims::ClaimsRequest;
use crate::app::Client;
use crate::app::Ctx;
use crate::error::{with_query, AppError};
use crate::http::cookies::Cookies;
use crate::http::page::lang_from;
use crate::http::params::Params;
use crate::oidc::session::Authn;
use crate::store::Kind;
use crate::web::i18n::PageCode;
use crate::web::Lang;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A validated authorization request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub scopes: Vec<String>,
    pub code_challenge: Option<String>,
    pub acr_min: Option<String>,
    pub prompt: Vec<String>,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
    pub idp_hint: Option<String>,
    /// Agent profile: forwarded to the provider.
    #[serde(default)]
    pub siret_hint: Option<String>,
    pub lang: Lang,
    pub claims: ClaimsRequest,
}

impl AuthRequest {
    /// A sign-in for Relais' own pages (no service): the person signs in anew
    /// at their provider (`prompt=login`, the screen may be shared) and comes
    /// back to `return_to`.
    pub fn own_sign_in(return_to: String, lang: Lang) -> AuthRequest {
        AuthRequest {
            client_id: String::new(),
            redirect_uri: return_to,
            state: None,
            nonce: None,
            scopes: vec![],
            code_challenge: None,
            acr_min: None,
            prompt: vec!["login".into()],
            max_age: None,
            login_hint: None,
            idp_hint: None,
            siret_hint: None,
            lang,
            claims: ClaimsRequest::default(),
        }
    }
}

/// A sign-in in progress, bound to the browser session that started it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interaction {
    pub req: AuthRequest,
    /// Hash of the browser's session cookie (binds the interaction to it).
    pub session: String,
    /// Whether a session row existed for that cookie when the sign-in began.
    #[serde(default)]
    pub had_session: bool,
    pub csrf: String,
    pub provider: Option<String>,
    /// Upstream sign-in in progress; the upstream `state` is
    /// `<interaction id>.<secret>` and only the secret's hash is kept.
    #[serde(default)]
    pub pending: Option<crate::upstream::PendingUpstream>,
    #[serde(default)]
    pub state_hash: Option<String>,
    /// The authentication used (set at the callback, or from SSO).
    #[serde(default)]
    pub authn: Option<Authn>,
    /// Agent profile: providers matching the email's domain (short choice).
    #[serde(default)]
    pub candidates: Option<Vec<String>>,
    /// Who acts for the person in this sign-in (the aidants' domain: the
    /// aidant who signed in to act under a mandate). Stored as `aidant`.
    #[serde(default, rename = "aidant")]
    pub acting: DomainStep,
    /// What the sign-in is for: a service, or one of Relais' own pages.
    #[serde(default)]
    pub purpose: Purpose,
}

/// What a sign-in is for: the one hook through which another domain uses
/// the OIDC core's sign-in. A sign-in is for a service (an authorization
/// request, the default), or for one of Relais' own pages, started by a
/// domain (the aidants' mandate creation, the usager's page) with
/// [`AuthRequest::own_sign_in`]. For an own page, the callback keeps the
/// authentication in the interaction, creates no broker session, ends the
/// person's session at their provider (the screen may not be theirs) and
/// sends the browser to `/interaction/{id}/{page}`, the domain's route; the
/// consent page and the code refuse such an interaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Purpose {
    #[default]
    Service,
    OwnPage {
        /// Last path segment of the domain's page after the callback.
        page: String,
        /// The domain's own data kept with the sign-in (opaque here).
        #[serde(default)]
        data: Value,
    },
}

impl Purpose {
    /// A sign-in for the own page `page`, carrying the domain's `data`.
    pub fn own_page(page: &str, data: &impl Serialize) -> Result<Purpose, AppError> {
        Ok(Purpose::OwnPage {
            page: page.to_string(),
            data: serde_json::to_value(data).map_err(AppError::internal)?,
        })
    }
}

impl Interaction {
    /// A new interaction for `req`, bound to the browser session `session`
    /// (`had_session`: a session row existed for it), before any provider
    /// was chosen.
    pub fn new(req: AuthRequest, session: String, had_session: bool, purpose: Purpose) -> Self {
        Interaction {
            req,
            session,
            had_session,
            csrf: crate::crypto::random_token(24),
            provider: None,
            pending: None,
            state_hash: None,
            authn: None,
            candidates: None,
            acting: DomainStep::default(),
            purpose,
        }
    }

    /// The own page this sign-in ends on (`None`: a service's sign-in).
    pub fn own_page(&self) -> Option<&str> {
        match &self.purpose {
            Purpose::Service => None,
            Purpose::OwnPage { page, .. } => Some(page),
        }
    }

    /// The domain's data of a sign-in for the own page `page`.
    pub fn own_data<T: serde::de::DeserializeOwned>(&self, page: &str) -> Option<T> {
        match &self.purpose {
            Purpose::OwnPage { page: p, data } if p == page => T::deserialize(data).ok(),
            _ => None,
        }
    }
}

/// A domain's own step kept with an interaction or a session, opaque to
/// the OIDC core: the domain writes and reads it as its own type
/// (`aidants::pages::interaction::AidantStep`). The second half of the
/// sign-in hook beside [`Purpose`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DomainStep(Option<Value>);

impl DomainStep {
    /// A step holding `value`.
    pub fn of(value: &impl Serialize) -> Result<DomainStep, AppError> {
        serde_json::to_value(value)
            .map(|v| DomainStep(Some(v)))
            .map_err(AppError::internal)
    }

    /// The step as the domain's type (`None`: none, or not of that type).
    pub fn get<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.0.as_ref().and_then(|v| T::deserialize(v).ok())
    }
}

/// What a code stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeData {
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub scopes: Vec<String>,
    pub sub: String,
    /// Claims for userinfo (scope-filtered).
    pub userinfo: Map<String, Value>,
    /// Extra claims for the ID token (claims request parameter).
    pub id_token_extra: Map<String, Value>,
    pub acr: Option<String>,
    pub amr: Vec<String>,
    pub auth_time: i64,
    pub sid: String,
    pub session: String,
    /// Delegated sign-in: re-checked at the token endpoint.
    #[serde(default)]
    pub delegation: Option<crate::oidc::session::Delegation>,
}

impl Ctx {
    /// Store a new interaction under `id` for `interaction_ttl_secs`.
    pub(crate) async fn put_interaction(
        &self,
        id: &str,
        inter: &Interaction,
    ) -> Result<(), AppError> {
        self.write_interaction(id, inter, true).await
    }

    /// Write back an interaction that moved on, extending its lifetime.
    pub(crate) async fn save_interaction(
        &self,
        id: &str,
        inter: &Interaction,
    ) -> Result<(), AppError> {
        self.write_interaction(id, inter, false).await
    }

    async fn write_interaction(
        &self,
        id: &str,
        inter: &Interaction,
        new: bool,
    ) -> Result<(), AppError> {
        let data = serde_json::to_string(inter).map_err(AppError::internal)?;
        let (store, fed) = (&self.app.store, &self.fed.id);
        let expires = self.now() + self.fed.cfg.interaction_ttl_secs;
        if new {
            store
                .put(Kind::Interaction, id, fed, &data, expires)
                .await?;
        } else {
            store
                .update(Kind::Interaction, id, fed, &data, expires)
                .await?;
        }
        Ok(())
    }

    pub(crate) fn redirect_error(
        &self,
        req: &AuthRequest,
        error: &'static str,
        description: impl Into<String>,
    ) -> AppError {
        AppError::Redirect {
            redirect_uri: req.redirect_uri.clone(),
            error,
            description: description.into(),
            state: req.state.clone(),
            iss: self.fed.issuer.clone(),
        }
    }

    /// Link returning `access_denied` (with the original state) to the service.
    pub fn back_url(&self, req: &AuthRequest, error: &str) -> String {
        let mut p = vec![("error", error)];
        if let Some(s) = &req.state {
            p.push(("state", s));
        }
        p.push(("iss", &self.fed.issuer));
        with_query(&req.redirect_uri, &p)
    }

    /// Error page for this sign-in, with a link returning `access_denied`
    /// (and the original state) to the service.
    pub(crate) fn refuse(&self, req: &AuthRequest, status: StatusCode, code: PageCode) -> AppError {
        self.page_error(
            req.lang,
            status,
            code,
            Some(self.back_url(req, "access_denied")),
        )
    }

    pub(crate) fn client(&self, id: &str) -> Option<&Client> {
        self.fed.clients.get(id)
    }

    /// The service of a request held in an interaction. Relais' own
    /// sign-ins (the usager page, a mandate's usager) have none and never
    /// reach the consent or code steps; a request that sends them there
    /// (or whose service was removed from the configuration meanwhile) gets
    /// the "sign-in expired" page, never a 500.
    pub(crate) fn client_of(&self, req: &AuthRequest) -> Result<&Client, AppError> {
        self.client(&req.client_id).ok_or_else(|| {
            tracing::info!(federation = %self.fed.id, "interaction without a service at a service step");
            self.expired(req.lang, None)
        })
    }
}

/// Load an interaction and check it belongs to this browser.
pub(crate) async fn load_interaction(
    ctx: &Ctx,
    id: &str,
    cookies: &Cookies,
    headers: &HeaderMap,
) -> Result<Interaction, AppError> {
    load_interaction_raw(ctx, id, cookies, headers)
        .await
        .map(|(i, _)| i)
}

/// Same, with the stored JSON (for compare-and-swap updates).
pub(crate) async fn load_interaction_raw(
    ctx: &Ctx,
    id: &str,
    cookies: &Cookies,
    headers: &HeaderMap,
) -> Result<(Interaction, String), AppError> {
    let lang = lang_from(headers, None);
    let expired = || ctx.expired(lang, None);
    let raw = ctx
        .app
        .store
        .get(Kind::Interaction, id, &ctx.fed.id, ctx.now())
        .await?
        .ok_or_else(expired)?;
    let inter: Interaction = serde_json::from_str(&raw).map_err(AppError::internal)?;
    if cookies.session_id(&ctx.fed).as_deref() != Some(inter.session.as_str()) {
        return Err(expired());
    }
    Ok((inter, raw))
}

pub(crate) fn check_csrf(ctx: &Ctx, inter: &Interaction, form: &Params) -> Result<(), AppError> {
    let given = form.get("csrf").unwrap_or("");
    if !crate::crypto::ct_eq(given.as_bytes(), inter.csrf.as_bytes()) {
        tracing::warn!(federation = %ctx.fed.id, "CSRF token missing or wrong");
        return Err(ctx.page_error(inter.req.lang, StatusCode::FORBIDDEN, PageCode::Csrf, None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AuthRequest {
        AuthRequest::own_sign_in("https://id.example/usager".into(), Lang::Fr)
    }

    #[test]
    fn an_own_page_sign_in_carries_its_domain_data_for_that_page_only() {
        let purpose = Purpose::own_page("mandat", &vec!["social".to_string()]).unwrap();
        let inter = Interaction::new(request(), "s".into(), true, purpose);
        assert_eq!(inter.own_page(), Some("mandat"));
        assert_eq!(
            inter.own_data::<Vec<String>>("mandat"),
            Some(vec!["social".to_string()])
        );
        assert_eq!(inter.own_data::<Vec<String>>("usager"), None);
        // Stored and read back (the interaction row's JSON), it stays the same.
        let back: Interaction =
            serde_json::from_str(&serde_json::to_string(&inter).unwrap()).unwrap();
        assert_eq!(back.purpose, inter.purpose);
    }

    #[test]
    fn a_service_sign_in_has_no_own_page_and_is_the_default() {
        let inter = Interaction::new(request(), "s".into(), false, Purpose::Service);
        assert_eq!(inter.own_page(), None);
        assert_eq!(inter.own_data::<()>("usager"), None);
        let mut json = serde_json::to_value(&inter).unwrap();
        json.as_object_mut().unwrap().remove("purpose");
        let back: Interaction = serde_json::from_value(json).unwrap();
        assert_eq!(back.purpose, Purpose::Service);
    }

    #[test]
    fn a_domain_step_is_kept_as_the_domain_wrote_it_under_its_stored_name() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Step {
            who: String,
        }
        let mut inter = Interaction::new(request(), "s".into(), false, Purpose::Service);
        assert_eq!(inter.acting.get::<Step>(), None);
        inter.acting = DomainStep::of(&Step { who: "a1".into() }).unwrap();
        let json = serde_json::to_value(&inter).unwrap();
        // The stored name stays `aidant`: rows written before the rename read back.
        assert_eq!(json["aidant"]["who"], "a1");
        let back: Interaction = serde_json::from_value(json).unwrap();
        assert_eq!(back.acting.get::<Step>(), Some(Step { who: "a1".into() }));
        // Another type does not read it.
        assert_eq!(back.acting.get::<Vec<String>>(), None);
    }
}
