//! The agent federation profile (ProConnect style): email-first routing to
//! the provider of the agent's organisation, agent claims, accounts linked
//! across providers by verified email, pairwise or public subjects, and
//! multi-factor levels.

pub mod identity;

use crate::app::Federation;
use crate::config::DomainMismatch;
use crate::upstream::{Upstream, UpstreamLogin};
use identity::{may_vouch, route, AgentError, AgentIdentity, Route, SiretPolicy};
use serde_json::json;

/// Providers that may serve this client at this level, with their domains.
fn candidates(
    fed: &Federation,
    client_id: &str,
    acr_min: Option<&str>,
) -> Vec<(String, Vec<String>)> {
    let min = acr_min.and_then(|a| fed.acr_rank(a));
    fed.providers
        .iter()
        .filter(|p| fed.provider_allowed(p, client_id) && fed.provider_max_rank(p) >= min)
        .map(|p| (p.cfg.id.clone(), p.cfg.domains.clone()))
        .collect()
}

/// Route an email to the provider(s) of its domain.
pub fn route_email(fed: &Federation, client_id: &str, email: &str, acr_min: Option<&str>) -> Route {
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let list = candidates(fed, client_id, acr_min);
    let default = fed
        .cfg
        .default_provider
        .as_deref()
        .filter(|d| !d.is_empty() && list.iter().any(|(id, _)| id == d));
    route(domain, &list, default)
}

/// Does this request ask for multi-factor authentication?
pub fn wants_mfa(fed: &Federation, acr_min: Option<&str>) -> bool {
    match (&fed.cfg.mfa_acr, acr_min) {
        (Some(mfa), Some(min)) => fed.acr_rank(min) >= fed.acr_rank(mfa),
        _ => false,
    }
}

#[derive(Debug)]
pub enum AgentRefusal {
    Identity(AgentError),
    Domain(String),
}

/// Validate what the provider returned and check it may vouch for the email.
pub fn identity_from_login(
    fed: &Federation,
    provider: &Upstream,
    login: &UpstreamLogin,
) -> Result<AgentIdentity, AgentRefusal> {
    let policy = match &provider.cfg.default_siret {
        Some(s) => SiretPolicy::Default(s),
        None => SiretPolicy::Refuse,
    };
    let agent =
        AgentIdentity::from_claims(&login.claims, policy).map_err(AgentRefusal::Identity)?;
    let domain = agent.email_domain().to_string();
    let is_default = fed.cfg.default_provider.as_deref() == Some(provider.cfg.id.as_str());
    if !may_vouch(
        &domain,
        &provider.cfg.domains,
        &provider.cfg.extra_domains,
        is_default,
    ) {
        match provider.cfg.domain_mismatch {
            DomainMismatch::Refuse => return Err(AgentRefusal::Domain(domain)),
            DomainMismatch::Log => {
                tracing::warn!(event = "agent_domain_mismatch", provider = %provider.cfg.id, ?domain, "provider vouched for a domain outside its own; accepted (log mode)")
            }
        }
    }
    Ok(agent)
}

/// Claims an agent may release (by scope), with the provider's id and level.
pub fn claims(
    agent: &AgentIdentity,
    provider: &str,
    login: &UpstreamLogin,
) -> serde_json::Map<String, serde_json::Value> {
    let mut c = agent.to_claims();
    c.insert("idp_id".into(), json!(provider));
    if let Some(a) = &login.acr {
        c.insert("idp_acr".into(), json!(a));
    }
    c.insert("amr".into(), json!(login.amr));
    c
}
