//! The demo people and agents of the demo providers (invented identities).

use super::*;
use serde_json::{json, Map, Value};

pub(crate) fn sample_person(login: &str, claims: Value) -> DemoPerson {
    DemoPerson {
        login: login.to_string(),
        password: "123".to_string(),
        claims: match claims {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    }
}

/// Sample public agents for the agent federation. `which == 1`: a ministry's
/// provider (agents of `interieur.gouv.fr`); `which == 2`: a general-purpose
/// provider (the federation's default). Camille is at both, with the same
/// verified email, so Relais links the two into one account.
pub fn demo_agents(which: u8) -> Vec<DemoPerson> {
    let agent = |login: &str, given: &str, usual: &str, email: &str, siret: &str, unit: &str| {
        sample_person(
            login,
            json!({
                "given_name": given,
                "usual_name": usual,
                "email": email,
                "uid": format!("{login}-{which}"),
                "siret": siret,
                "organizational_unit": unit,
                "belonging_population": "agent",
                "phone_number": "01 40 07 60 60",
            }),
        )
    };
    if which == 2 {
        vec![
            agent(
                "dominique",
                "Dominique",
                "Leroy",
                "dominique.leroy@mairie-demoville.fr",
                "21750000800008",
                "Accueil",
            ),
            agent(
                "camille",
                "Camille",
                "Martin",
                "camille.martin@interieur.gouv.fr",
                "13002526500013",
                "DNUM",
            ),
        ]
    } else {
        vec![
            agent(
                "camille",
                "Camille",
                "Martin",
                "camille.martin@interieur.gouv.fr",
                "13002526500013",
                "DNUM",
            ),
            // An invalid SIRET: Relais uses the provider's default SIRET.
            agent(
                "lea",
                "Léa",
                "Petit",
                "lea.petit@prefecture.interieur.gouv.fr",
                "12345678901234",
                "Préfecture",
            ),
        ]
    }
}

/// Sample people with full French pivot identities. `which == 2` gives the
/// second list; any other value gives the first. Both lists share one person
/// (Éric Jean Mercier, written "ERIC JEAN" / "MERCIER" in the second list) and
/// differ otherwise. Every password is "123".
pub fn demo_people(which: u8) -> Vec<DemoPerson> {
    if which == 2 {
        vec![
            sample_person(
                "eric",
                json!({
                    "given_name": "ERIC JEAN",
                    "family_name": "MERCIER",
                    "birthdate": "1985-03-14",
                    "gender": "male",
                    "birthplace": "69123",
                    "birthcountry": "99100",
                    "email": "e.mercier@example.com",
                    "preferred_username": "MERCIER",
                }),
            ),
            sample_person(
                "marie",
                json!({
                    "given_name": "Marie-Thérèse Jeanne",
                    "family_name": "Lefèvre-Dupont",
                    "birthdate": "1990-01-31",
                    "gender": "female",
                    "birthplace": "13055",
                    "birthcountry": "99100",
                    "email": "marie.lefevre@example.com",
                    "preferred_username": "Lefèvre",
                }),
            ),
            sample_person(
                "jean",
                json!({
                    "given_name": "Jean-Baptiste Pierre",
                    "family_name": "N'Diaye",
                    "birthdate": "2001-06-15",
                    "gender": "male",
                    "birthplace": "97411",
                    "birthcountry": "99100",
                    "email": "jb.ndiaye@example.com",
                }),
            ),
            sample_person(
                "lucia",
                json!({
                    "given_name": "Lucia Maria",
                    "family_name": "Rossi",
                    "birthdate": "1974-12-01",
                    "gender": "female",
                    "birthcountry": "99127",
                    "email": "lucia.rossi@example.com",
                    "preferred_username": "Bernard",
                }),
            ),
        ]
    } else {
        vec![
            sample_person(
                "angela",
                json!({
                    "given_name": "Angela Claire Louise",
                    "family_name": "DUBOIS",
                    "birthdate": "1962-08-24",
                    "gender": "female",
                    "birthplace": "75107",
                    "birthcountry": "99100",
                    "email": "angela.dubois@example.fr",
                    "preferred_username": "MARTIN",
                }),
            ),
            sample_person(
                "eric",
                json!({
                    "given_name": "Éric Jean",
                    "family_name": "Mercier",
                    "birthdate": "1985-03-14",
                    "gender": "male",
                    "birthplace": "69123",
                    "birthcountry": "99100",
                    "email": "eric.mercier@example.fr",
                    "preferred_username": "Mercier",
                }),
            ),
            sample_person(
                "hiroshi",
                json!({
                    "given_name": "Hiroshi",
                    "family_name": "Tanaka",
                    "birthdate": "1979-11-02",
                    "gender": "male",
                    "birthcountry": "99217",
                    "email": "hiroshi.tanaka@example.jp",
                }),
            ),
            sample_person(
                "paul",
                json!({
                    "given_name": "Paul Émile",
                    "family_name": "Durand",
                    "birthdate": "1958-05-09",
                    "gender": "male",
                    "birthplace": "33063",
                    "birthcountry": "99100",
                    "email": "paul.durand@example.fr",
                }),
            ),
        ]
    }
}
