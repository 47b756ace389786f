//! The aidants' pages, mounted only in citizen federations (see
//! `crate::oidc::router`):
//! - [`interaction`]: an aidant acting for a usager inside a service's
//!   sign-in (`/interaction/{id}/aidant…`);
//! - [`space`]: the aidant space (`/aidant`: sign-in, organisation switch,
//!   référent dashboard, sign-out);
//! - [`mandate`]: creating a mandate (`/aidant/mandats`, then the recap
//!   inside the usager's sign-in, `/interaction/{id}/mandat`);
//! - [`attestation`]: attestation, revocation and its receipt
//!   (`/aidant/mandats/{mid}/attestation|revoquer|revocation`);
//! - [`renewal`]: renewing an expired mandate (`/aidant/mandats/{mid}/renouveler`);
//! - [`enrolment`]: first sign-in of a new aidant (`/aidant/enrolment/{token}`);
//! - [`usager`]: the usager's own view of their mandates (`/usager`,
//!   `/interaction/{id}/usager`).

pub mod attestation;
pub mod enrolment;
pub mod interaction;
pub mod mandate;
pub mod renewal;
pub mod space;
pub mod usager;

use crate::app::Ctx;
use axum::routing::{get, post};
use axum::Router;

/// The aidants' routes, relative to the federation's issuer path.
pub fn router() -> Router<Ctx> {
    Router::new()
        .route(
            "/interaction/{id}/aidant",
            get(interaction::login_page).post(interaction::login_submit),
        )
        .route(
            "/interaction/{id}/aidant/usagers",
            get(interaction::usagers_page).post(interaction::usagers_submit),
        )
        .route("/aidant", get(space::home))
        .route("/aidant/login", post(space::login_submit))
        .route(
            "/aidant/enrolment/{token}",
            get(enrolment::page).post(enrolment::submit),
        )
        .route("/aidant/logout", post(space::logout_submit))
        .route("/aidant/organisation", post(space::switch_submit))
        .route("/aidant/mandats", post(mandate::draft_submit))
        .route(
            "/aidant/mandats/{mid}/attestation",
            get(attestation::attestation),
        )
        .route(
            "/aidant/mandats/{mid}/revoquer",
            post(attestation::revoke_submit),
        )
        .route(
            "/aidant/mandats/{mid}/renouveler",
            get(renewal::renew_page).post(renewal::renew_submit),
        )
        .route(
            "/aidant/mandats/{mid}/revocation",
            get(attestation::revocation),
        )
        .route(
            "/interaction/{id}/mandat",
            get(mandate::recap_page).post(mandate::recap_submit),
        )
        .route("/usager", get(usager::start))
        .route(
            "/interaction/{id}/usager",
            get(usager::page).post(usager::revoke),
        )
}
