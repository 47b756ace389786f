//! Demo data for the aidants: an organisation, an aidant with a fixed TOTP
//! secret (so the printed secret stays valid across restarts), the demo
//! person angela as an usager, and an active mandate. Created idempotently
//! at each start of `relais demo`.

use relais::aidants::{Actor, NewAidant, NewMandate, Role};
use relais::subject::citizen::PivotIdentity;
use serde_json::Value;

pub const DEMO_ORG_NAME: &str = "France Services Démoville";
/// Luhn-valid SIRET (and SIREN), distinct from the agent demo's.
pub const DEMO_ORG_SIRET: &str = "21350000200018";
pub const DEMO_AIDANT_EMAIL: &str = "aidant@demo.test";
pub const DEMO_AIDANT_NAME: &str = "Alex Aidant";
pub const DEMO_AIDANT_PASSWORD: &str = "demo-aidant-password";
/// Fixed base32 TOTP secret (20 bytes). Demo only.
pub const DEMO_AIDANT_TOTP: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// Demo person (provider Impôts) who has a mandate.
pub const DEMO_USAGER_LOGIN: &str = "angela";
pub const DEMO_MANDATE_DOMAINS: [&str; 2] = ["papiers", "social"];

/// What the demo created or found.
#[derive(Debug, Clone)]
pub struct DemoAidants {
    pub org_id: String,
    pub aidant_id: String,
    pub usager_id: String,
    pub mandate_id: String,
}

/// The `otpauth://` URI of the demo aidant.
pub fn demo_otpauth_uri() -> String {
    relais::aidants::totp::otpauth_uri(DEMO_AIDANT_EMAIL, DEMO_AIDANT_TOTP)
}

/// Create (or find) the demo organisation, aidant, usager and mandate.
pub async fn seed(stack: &crate::Stack) -> Result<DemoAidants, String> {
    let store = &stack.state.store;
    let now = stack.state.now();
    let salt = relais::aidants::cli::salt(&stack.config)?;
    let key = relais::aidants::cli::totp_key(&stack.config)?;
    let err = |e: relais::aidants::MandateError| format!("demo aidants: {e:?}");
    let serr = |e: relais::store::StoreError| format!("demo aidants: {e}");
    let org = match store
        .organisation_by_siret(DEMO_ORG_SIRET)
        .await
        .map_err(serr)?
    {
        Some(o) => o,
        None => store
            .create_organisation(DEMO_ORG_NAME, DEMO_ORG_SIRET, &[], &Actor::Admin, now)
            .await
            .map_err(err)?,
    };
    let aidant_id = match store
        .aidant_by_email(DEMO_AIDANT_EMAIL)
        .await
        .map_err(serr)?
    {
        Some(a) => a.id,
        None => {
            let a = store
                .create_aidant(
                    &NewAidant {
                        email: DEMO_AIDANT_EMAIL,
                        name: DEMO_AIDANT_NAME,
                        password: DEMO_AIDANT_PASSWORD,
                        org_id: &org.id,
                        role: Role::Aidant,
                    },
                    &Actor::Admin,
                    &salt,
                    &key,
                    now,
                )
                .await
                .map_err(err)?;
            store
                .set_totp_secret(
                    DEMO_AIDANT_EMAIL,
                    DEMO_AIDANT_TOTP,
                    &Actor::Admin,
                    &key,
                    now,
                )
                .await
                .map_err(err)?;
            a.id
        }
    };
    let person = crate::idp::demo_people(1)
        .into_iter()
        .find(|p| p.login == DEMO_USAGER_LOGIN)
        .ok_or("demo person angela missing")?;
    let identity = PivotIdentity::from_claims(&person.claims).map_err(|e| e.to_string())?;
    let usager_id = store
        .upsert_usager(&identity.identity_key(), &salt, now)
        .await
        .map_err(err)?;
    store
        .set_usager_claims(&usager_id, &Value::Object(identity.to_claims()).to_string())
        .await
        .map_err(serr)?;
    let existing = store
        .list_mandates(&org.id)
        .await
        .map_err(serr)?
        .into_iter()
        .find(|m| {
            m.usager_id == usager_id
                && DEMO_MANDATE_DOMAINS.iter().all(|d| {
                    m.authorisations
                        .iter()
                        .any(|a| a.domain == *d && a.is_active(now))
                })
        });
    let mandate_id = match existing {
        Some(m) => m.id,
        None => {
            store
                .create_mandate(
                    &NewMandate {
                        org_id: &org.id,
                        usager_id: &usager_id,
                        aidant_id: &aidant_id,
                        domains: &DEMO_MANDATE_DOMAINS,
                        duration_days: 365,
                        consent_version: "demo",
                        consent_hash: &relais::aidants::journal::sha256_hex(b"demo mandate"),
                    },
                    &stack.config.aidants.domains,
                    now,
                )
                .await
                .map_err(err)?
                .id
        }
    };
    Ok(DemoAidants {
        org_id: org.id,
        aidant_id,
        usager_id,
        mandate_id,
    })
}
