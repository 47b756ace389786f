//! Aidants foundation on SQLite and PostgreSQL: organisations, aidant
//! sign-in (password + TOTP, replay, lockout), mandates and their
//! authorisations (replacement, expiry, revocation, who may revoke), the
//! tamper-evident journal (append-only triggers, tampering detected,
//! concurrent appends, signed heads), and the admin command line.

use crate::common::*;
use relais::crypto::{keys, Alg, KeySet};
use relais::mandates::journal::{self, Event, JournalError};
use relais::mandates::{totp, Actor, LoginError, MandateError, NewAidant, NewMandate, Role, Salt};
use relais::store::{Backend, Store};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::Arc;

const NOW: i64 = 1_700_000_010;
const PASSWORD: &str = "correct horse battery staple";
const SIRET_A: &str = "35600000000048";
const SIRET_B: &str = "73282932000074";
const DAY: i64 = 86_400;

struct Db {
    store: Store,
    schema: Option<(String, String)>,
    dir: std::path::PathBuf,
    url: String,
}

async fn open(db: &Option<String>, max_connections: u32) -> Db {
    let dir = temp_dir("mandates");
    std::fs::create_dir_all(&dir).unwrap();
    let (url, schema) = match db {
        Some(u) => {
            let s = format!("t_{}", random(10));
            (format!("{u}#schema={s}"), Some((u.clone(), s)))
        }
        None => (format!("sqlite://{}", dir.join("t.db").display()), None),
    };
    let store = Store::connect(&url, max_connections).await.unwrap();
    store.migrate().await.unwrap();
    Db {
        store,
        schema,
        dir,
        url,
    }
}

impl Db {
    fn name(&self) -> &'static str {
        if self.store.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// Run raw SQL as someone with direct database access.
    async fn exec(&self, sql: &str) -> Result<u64, String> {
        match self.store.backend() {
            Backend::Sqlite(p) => sqlx::query(sql)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| e.to_string()),
            Backend::Postgres(p) => sqlx::query(sql)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| e.to_string()),
        }
    }

    /// What an attacker with database access does first.
    async fn drop_append_only_triggers(&self) {
        if self.store.is_postgres() {
            self.exec("ALTER TABLE journal DISABLE TRIGGER USER")
                .await
                .unwrap();
            self.exec("ALTER TABLE journal_heads DISABLE TRIGGER USER")
                .await
                .unwrap();
        } else {
            for t in [
                "journal_no_update",
                "journal_no_delete",
                "journal_heads_no_update",
                "journal_heads_no_delete",
            ] {
                self.exec(&format!("DROP TRIGGER {t}")).await.unwrap();
            }
        }
    }

    async fn close(self) {
        if let Some((url, s)) = self.schema {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA \"{s}\" CASCADE"))
                .execute(&pool)
                .await
                .unwrap();
        }
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

fn salt() -> Salt {
    Salt::new(b"a test deployment salt, 32 bytes").unwrap()
}

fn sha(text: &str) -> String {
    journal::sha256_hex(text.as_bytes())
}

/// Organisation A with an aidant; returns (org id, aidant id, TOTP secret).
async fn org_and_aidant(s: &Store, email: &str) -> (String, String, String) {
    let org = match s.organisation_by_siret(SIRET_A).await.unwrap() {
        Some(o) => o,
        None => s
            .create_organisation("France Services Rennes", SIRET_A, &[], &Actor::Admin, NOW)
            .await
            .unwrap(),
    };
    let a = s
        .create_aidant(
            &NewAidant {
                email,
                name: "Marie Dupont",
                password: PASSWORD,
                org_id: &org.id,
                role: Role::Aidant,
            },
            &Actor::Admin,
            &salt(),
            NOW,
        )
        .await
        .unwrap();
    (org.id, a.id, a.totp_secret)
}

/// A 6-digit code that is not valid around `now` for `secret`.
fn wrong_code(secret: &str, now: i64) -> String {
    let valid: Vec<String> = [-30, 0, 30]
        .iter()
        .map(|d| totp::code_at(secret, now + d).unwrap())
        .collect();
    (0..)
        .map(|i| format!("{:06}", (123_456 + i * 7_919) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}

fn refused(r: Result<relais::mandates::AidantLogin, LoginError>, what: &str) {
    match r {
        Err(LoginError::Refused) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn organisations_need_a_valid_unique_siret() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let org = s
            .create_organisation(
                " France Services Rennes ",
                "356 000 000 00048",
                &[],
                &Actor::Admin,
                NOW,
            )
            .await
            .unwrap();
        assert_eq!(
            (org.name.as_str(), org.siret.as_str(), org.active),
            ("France Services Rennes", SIRET_A, true)
        );
        assert!(org.domains.is_empty());
        assert_eq!(
            org.allowed_domains(),
            relais::mandates::DEFAULT_DOMAINS.map(String::from).to_vec()
        );
        for bad in [
            "35600000000049", // Luhn fails
            "3560000000004",  // 13 digits
            "356000000000480",
            "3560000000004a",
            "",
            "12345678901234",
        ] {
            let r = s
                .create_organisation("X", bad, &[], &Actor::Admin, NOW)
                .await;
            assert!(
                matches!(r, Err(MandateError::Invalid(ref m)) if m.contains("SIRET")),
                "{}: {bad:?} accepted: {r:?}",
                d.name()
            );
        }
        let dup = s
            .create_organisation("Autre", SIRET_A, &[], &Actor::Admin, NOW)
            .await;
        assert!(matches!(dup, Err(MandateError::Conflict(_))), "{dup:?}");
        let r = s
            .create_organisation("", SIRET_B, &[], &Actor::Admin, NOW)
            .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        let r = s
            .create_organisation("B", SIRET_B, &["Social!".into()], &Actor::Admin, NOW)
            .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        let b = s
            .create_organisation(
                "Association B",
                SIRET_B,
                &["social".into(), "papiers".into(), "social".into()],
                &Actor::Admin,
                NOW,
            )
            .await
            .unwrap();
        assert_eq!(b.domains, ["social", "papiers"]);
        let list = s.list_organisations().await.unwrap();
        assert_eq!(list, vec![b.clone(), org.clone()], "sorted by name");
        assert_eq!(s.organisation_by_siret(SIRET_B).await.unwrap(), Some(b));
        assert_eq!(s.organisation(&org.id).await.unwrap(), Some(org));
        assert_eq!(
            s.organisation_by_siret(SIRET_A.replace('8', "9").as_str())
                .await
                .unwrap(),
            None
        );
        // Two successful creations, two journal entries; refusals leave none.
        assert_eq!(journal::verify(s).await.unwrap(), 2);
        let page = s.journal_page(0, 10).await.unwrap();
        assert!(page
            .iter()
            .all(|e| e.kind == "organisation.created" && e.actor == "admin:cli"));
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aidant_sign_in_password_totp_replay_and_lockout() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let name = d.name();
        let org = s
            .create_organisation("France Services", SIRET_A, &[], &Actor::Admin, NOW)
            .await
            .unwrap();
        let new = NewAidant {
            email: " Marie.Dupont@Mairie-Rennes.FR ",
            name: "Marie Dupont",
            password: PASSWORD,
            org_id: &org.id,
            role: Role::Aidant,
        };
        let created = s
            .create_aidant(&new, &Actor::Admin, &salt(), NOW)
            .await
            .unwrap();
        let email = "marie.dupont@mairie-rennes.fr";
        assert_eq!(created.email, email);
        assert!(created.otpauth_uri().starts_with(&format!(
            "otpauth://totp/Relais:{email}?secret={}&issuer=Relais",
            created.totp_secret
        )));
        let secret = created.totp_secret.clone();
        // Refused creations.
        let r = s.create_aidant(&new, &Actor::Admin, &salt(), NOW).await;
        assert!(matches!(r, Err(MandateError::Conflict(_))), "{r:?}");
        let short = NewAidant {
            email: "x@mairie.fr",
            password: "short",
            ..new.clone()
        };
        let r = s.create_aidant(&short, &Actor::Admin, &salt(), NOW).await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        let bad_email = NewAidant {
            email: "not-an-email",
            ..new.clone()
        };
        let r = s
            .create_aidant(&bad_email, &Actor::Admin, &salt(), NOW)
            .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        let no_org = NewAidant {
            email: "y@mairie.fr",
            org_id: "nope",
            ..new.clone()
        };
        let r = s.create_aidant(&no_org, &Actor::Admin, &salt(), NOW).await;
        assert!(matches!(r, Err(MandateError::NotFound(_))), "{r:?}");

        let stored = s.aidant_by_email(email).await.unwrap().unwrap();
        assert_eq!(stored.id, created.id);
        assert_eq!(stored.current_org.as_deref(), Some(org.id.as_str()));
        assert_eq!(stored.orgs, vec![(org.id.clone(), Role::Aidant)]);
        // The password is stored as argon2id, the secret as base32.
        let (phc, stored_secret): (String, String) = match s.backend() {
            Backend::Sqlite(p) => sqlx::query_as("SELECT password_hash, totp_secret FROM aidants")
                .fetch_one(p)
                .await
                .unwrap(),
            Backend::Postgres(p) => {
                sqlx::query_as("SELECT password_hash, totp_secret FROM aidants")
                    .fetch_one(p)
                    .await
                    .unwrap()
            }
        };
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains(PASSWORD));
        assert_eq!(stored_secret, secret);

        let t = NOW;
        let code = totp::code_at(&secret, t).unwrap();
        refused(
            s.verify_password_and_totp(email, PASSWORD, &wrong_code(&secret, t), t)
                .await,
            "wrong code",
        );
        refused(
            s.verify_password_and_totp(email, "wrong password!", &code, t)
                .await,
            "wrong password",
        );
        refused(
            s.verify_password_and_totp("nobody@mairie.fr", PASSWORD, &code, t)
                .await,
            "unknown e-mail",
        );
        refused(
            s.verify_password_and_totp("not an email", PASSWORD, &code, t)
                .await,
            "malformed e-mail",
        );
        assert_eq!(
            s.aidant_by_email(email)
                .await
                .unwrap()
                .unwrap()
                .failed_attempts,
            2,
            "{name}: failures are counted per account"
        );
        let login = s
            .verify_password_and_totp("MARIE.DUPONT@mairie-rennes.fr", PASSWORD, &code, t)
            .await
            .unwrap();
        assert_eq!(login.aidant_id, created.id);
        assert_eq!(login.current_org.as_deref(), Some(org.id.as_str()));
        assert_eq!(login.totp_step, totp::step_at(t));
        let a = s.aidant_by_email(email).await.unwrap().unwrap();
        assert_eq!((a.failed_attempts, a.totp_last_step), (0, totp::step_at(t)));
        // The same code cannot be used twice, nor an older one.
        refused(
            s.verify_password_and_totp(email, PASSWORD, &code, t + 5)
                .await,
            "replayed code",
        );
        refused(
            s.verify_password_and_totp(
                email,
                PASSWORD,
                &totp::code_at(&secret, t - 30).unwrap(),
                t,
            )
            .await,
            "code of the previous step after a newer one was used",
        );
        // The next step's code works.
        let t2 = t + 30;
        s.verify_password_and_totp(email, PASSWORD, &totp::code_at(&secret, t2).unwrap(), t2)
            .await
            .unwrap();

        // Lockout: 5 failures lock the account for 15 minutes, even for
        // correct credentials.
        let t3 = t + 600;
        for i in 0..5 {
            refused(
                s.verify_password_and_totp(email, PASSWORD, &wrong_code(&secret, t3), t3 + i)
                    .await,
                "wrong code",
            );
        }
        let a = s.aidant_by_email(email).await.unwrap().unwrap();
        assert_eq!(a.locked_until, t3 + 4 + 15 * 60, "{name}");
        let locked_until = a.locked_until;
        for at in [t3 + 10, t3 + 300, locked_until - 1] {
            refused(
                s.verify_password_and_totp(
                    email,
                    PASSWORD,
                    &totp::code_at(&secret, at).unwrap(),
                    at,
                )
                .await,
                "locked account with correct credentials",
            );
        }
        assert_eq!(
            s.aidant_by_email(email)
                .await
                .unwrap()
                .unwrap()
                .locked_until,
            locked_until,
            "attempts while locked do not extend the lock"
        );
        let after = locked_until + 1;
        s.verify_password_and_totp(
            email,
            PASSWORD,
            &totp::code_at(&secret, after).unwrap(),
            after,
        )
        .await
        .unwrap();
        // Success resets the counter: 4 failures, a success, 4 failures: not locked.
        let t4 = after + 300;
        for i in 0..4 {
            refused(
                s.verify_password_and_totp(email, "nope nope nope", "000000", t4 + i)
                    .await,
                "wrong",
            );
        }
        s.verify_password_and_totp(
            email,
            PASSWORD,
            &totp::code_at(&secret, t4 + 4).unwrap(),
            t4 + 4,
        )
        .await
        .unwrap();
        for i in 0..4 {
            refused(
                s.verify_password_and_totp(email, "nope nope nope", "000000", t4 + 40 + i)
                    .await,
                "wrong",
            );
        }
        let a = s.aidant_by_email(email).await.unwrap().unwrap();
        assert_eq!((a.failed_attempts, a.locked_until), (4, locked_until));

        // TOTP reset: the old secret stops working, the new one works, the
        // account is unlocked.
        let reset = s.reset_totp(email, &Actor::Admin, t4 + 100).await.unwrap();
        assert_ne!(reset.totp_secret, secret);
        assert_eq!(reset.id, created.id);
        let t5 = t4 + 200;
        refused(
            s.verify_password_and_totp(email, PASSWORD, &totp::code_at(&secret, t5).unwrap(), t5)
                .await,
            "old secret",
        );
        s.verify_password_and_totp(
            email,
            PASSWORD,
            &totp::code_at(&reset.totp_secret, t5 + 30).unwrap(),
            t5 + 30,
        )
        .await
        .unwrap();
        let r = s.reset_totp("nobody@mairie.fr", &Actor::Admin, t5).await;
        assert!(matches!(r, Err(MandateError::NotFound(_))), "{r:?}");

        // The journal has the actions, never the e-mail or name in clear.
        let n = journal::verify(s).await.unwrap();
        let mut out = Vec::new();
        assert_eq!(journal::export(s, &mut out).await.unwrap(), n);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.to_lowercase().contains("marie"), "{name}: {text}");
        assert!(
            text.contains(&salt().hash(email)),
            "salted hash of the e-mail"
        );
        let kinds: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "organisation.created",
                "aidant.created",
                "aidant.signed_in",
                "aidant.signed_in",
                "aidant.locked",
                "aidant.signed_in",
                "aidant.signed_in",
                "aidant.totp_reset",
                "aidant.signed_in",
            ],
            "{name}"
        );
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mandates_replace_expire_and_revoke() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let name = d.name();
        let (org_a, a1, _) = org_and_aidant(s, "a1@mairie.fr").await;
        let org_b = s
            .create_organisation("Asso B", SIRET_B, &["social".into()], &Actor::Admin, NOW)
            .await
            .unwrap()
            .id;
        let a2 = s
            .create_aidant(
                &NewAidant {
                    email: "a2@asso.fr",
                    name: "Paul",
                    password: PASSWORD,
                    org_id: &org_b,
                    role: Role::Referent,
                },
                &Actor::Admin,
                &salt(),
                NOW,
            )
            .await
            .unwrap()
            .id;
        let key = "v1\nmarie\ndupont\n1980-05-04\nfemale\n75107\n99100";
        let u = s.upsert_usager(key, &salt(), NOW).await.unwrap();
        assert_eq!(s.upsert_usager(key, &salt(), NOW + 5).await.unwrap(), u);
        let other = s.upsert_usager("v1\nother", &salt(), NOW).await.unwrap();
        assert_ne!(other, u);
        let consent = sha("Mandat v1: texte");
        let mk = |org_id: String, aidant: String, domains: Vec<&'static str>, days: i64| {
            (org_id, aidant, domains, days)
        };
        let create = |(org_id, aidant, domains, days): (String, String, Vec<&'static str>, i64),
                      usager: String,
                      at: i64| {
            let s = s.clone();
            let consent = consent.clone();
            async move {
                s.create_mandate(
                    &NewMandate {
                        org_id: &org_id,
                        usager_id: &usager,
                        aidant_id: &aidant,
                        domains: &domains,
                        duration_days: days,
                        consent_version: "v1",
                        consent_hash: &consent,
                    },
                    at,
                )
                .await
            }
        };
        let m1 = create(
            mk(org_a.clone(), a1.clone(), vec!["papiers", "social"], 30),
            u.clone(),
            NOW,
        )
        .await
        .unwrap();
        assert_eq!(m1.authorisations.len(), 2);
        assert!(m1
            .authorisations
            .iter()
            .all(|a| a.expires_at == NOW + 30 * DAY));
        let active = |m: &str, dom: &str, at: i64| {
            let s = s.clone();
            let (m, dom) = (m.to_string(), dom.to_string());
            async move { s.active_authorisation(&m, &dom, at).await.unwrap() }
        };
        assert!(active(&m1.id, "papiers", NOW).await);
        assert!(active(&m1.id, "social", NOW + 30 * DAY - 1).await);
        // Expiry.
        assert!(
            !active(&m1.id, "social", NOW + 30 * DAY).await,
            "{name}: expired"
        );
        assert!(!active(&m1.id, "papiers", NOW - 1).await, "not started");
        assert!(!active(&m1.id, "famille", NOW).await, "domain not covered");
        assert!(!active("nope", "papiers", NOW).await);

        // A new mandate for the same usager, organisation and domain replaces
        // the old authorisation; other domains are untouched.
        let t = NOW + 100;
        let m2 = create(
            mk(org_a.clone(), a1.clone(), vec!["papiers"], 365),
            u.clone(),
            t,
        )
        .await
        .unwrap();
        assert!(!active(&m1.id, "papiers", t).await, "{name}: replaced");
        assert!(active(&m1.id, "social", t).await);
        assert!(active(&m2.id, "papiers", t).await);
        assert!(active(&m2.id, "papiers", t + 365 * DAY - 1).await);
        let m1_now = s.mandate(&m1.id).await.unwrap().unwrap();
        let papiers = m1_now
            .authorisations
            .iter()
            .find(|a| a.domain == "papiers")
            .unwrap();
        assert_eq!(papiers.revoked_at, Some(t));
        assert_eq!(papiers.revoked_by, Some(format!("aidant:{a1}")));
        assert_eq!(papiers.status(t), "revoked");
        // The same domain in another organisation does not replace it.
        let mb = create(
            mk(org_b.clone(), a2.clone(), vec!["social"], 1),
            u.clone(),
            t,
        )
        .await
        .unwrap();
        assert!(active(&m1.id, "social", t).await, "other organisation");
        assert!(active(&mb.id, "social", t + DAY - 1).await);
        assert!(!active(&mb.id, "social", t + DAY).await, "one day");
        // Nor does another usager's mandate.
        let mo = create(
            mk(org_a.clone(), a1.clone(), vec!["social"], 30),
            other.clone(),
            t,
        )
        .await
        .unwrap();
        assert!(active(&m1.id, "social", t).await, "other usager");
        assert!(active(&mo.id, "social", t).await);

        // Refusals.
        let r = create(
            mk(org_a.clone(), a2.clone(), vec!["social"], 30),
            u.clone(),
            t,
        )
        .await;
        assert!(
            matches!(r, Err(MandateError::NotAllowed)),
            "aidant of another organisation: {r:?}"
        );
        let r = create(
            mk(org_b.clone(), a2.clone(), vec!["papiers"], 30),
            u.clone(),
            t,
        )
        .await;
        assert!(
            matches!(r, Err(MandateError::Invalid(ref m)) if m.contains("not allowed")),
            "{r:?}"
        );
        let r = create(
            mk(org_a.clone(), a1.clone(), vec!["papiers", "papiers"], 30),
            u.clone(),
            t,
        )
        .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        let r = create(mk(org_a.clone(), a1.clone(), vec![], 30), u.clone(), t).await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        let r = create(
            mk(org_a.clone(), a1.clone(), vec!["inconnu"], 30),
            u.clone(),
            t,
        )
        .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        for days in [0, -1, 367] {
            let r = create(
                mk(org_a.clone(), a1.clone(), vec!["papiers"], days),
                u.clone(),
                t,
            )
            .await;
            assert!(matches!(r, Err(MandateError::Invalid(_))), "{days}: {r:?}");
        }
        let r = create(
            mk(org_a.clone(), a1.clone(), vec!["papiers"], 30),
            "nobody".into(),
            t,
        )
        .await;
        assert!(matches!(r, Err(MandateError::NotFound(_))), "{r:?}");
        let r = create(
            mk("nope".into(), a1.clone(), vec!["papiers"], 30),
            u.clone(),
            t,
        )
        .await;
        assert!(matches!(r, Err(MandateError::NotFound(_))), "{r:?}");
        assert!(
            active(&m2.id, "papiers", t).await,
            "refusals changed nothing"
        );

        // Revocation: only the operator, aidants of the organisation and the
        // usager concerned.
        let t = t + 1000;
        let r = s
            .revoke_domain(&m2.id, "papiers", &Actor::Aidant(a2.clone()), t)
            .await;
        assert!(matches!(r, Err(MandateError::NotAllowed)), "{r:?}");
        let r = s
            .revoke_domain(&m2.id, "papiers", &Actor::Usager(other.clone()), t)
            .await;
        assert!(matches!(r, Err(MandateError::NotAllowed)), "{r:?}");
        let r = s.revoke_mandate("nope", &Actor::Admin, t).await;
        assert!(matches!(r, Err(MandateError::NotFound(_))), "{r:?}");
        assert!(active(&m2.id, "papiers", t).await);
        assert_eq!(
            s.revoke_domain(&m2.id, "papiers", &Actor::Usager(u.clone()), t)
                .await
                .unwrap(),
            ["papiers"]
        );
        assert!(
            !active(&m2.id, "papiers", t).await,
            "{name}: revoked by the usager"
        );
        assert!(
            !active(&m2.id, "papiers", t - 1000).await,
            "revocation also hides the past window"
        );
        assert_eq!(
            s.revoke_mandate(&m1.id, &Actor::Aidant(a1.clone()), t)
                .await
                .unwrap(),
            ["social"],
            "papiers was already replaced"
        );
        assert!(!active(&m1.id, "social", t).await);
        assert!(s
            .revoke_mandate(&m1.id, &Actor::Admin, t)
            .await
            .unwrap()
            .is_empty());
        assert!(
            active(&mb.id, "social", t).await,
            "other organisation's mandate untouched"
        );
        let m1_now = s.mandate(&m1.id).await.unwrap().unwrap();
        let social = m1_now
            .authorisations
            .iter()
            .find(|a| a.domain == "social")
            .unwrap();
        assert_eq!(
            (social.revoked_at, social.revoked_by.as_deref()),
            (Some(t), Some(format!("aidant:{a1}").as_str()))
        );

        // Listings: an organisation sees only its own mandates.
        let list_a = s.list_mandates(&org_a).await.unwrap();
        let ids: Vec<&str> = list_a.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), 3);
        assert!(
            ids.contains(&m1.id.as_str())
                && ids.contains(&m2.id.as_str())
                && ids.contains(&mo.id.as_str())
        );
        assert!(!ids.contains(&mb.id.as_str()));
        let list_b = s.list_mandates(&org_b).await.unwrap();
        assert_eq!(list_b.len(), 1);
        assert_eq!(list_b[0], s.mandate(&mb.id).await.unwrap().unwrap());
        assert_eq!(s.usager_mandates(&u).await.unwrap().len(), 3);
        assert_eq!(s.usager_mandates(&other).await.unwrap().len(), 1);

        // The journal recorded it all and verifies.
        let n = journal::verify(s).await.unwrap();
        let entries = s.journal_page(0, 1000).await.unwrap();
        assert_eq!(entries.len() as u64, n);
        let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "mandate.created").count(), 4);
        assert_eq!(kinds.iter().filter(|k| **k == "usager.created").count(), 2);
        let m2_created = entries
            .iter()
            .find(|e| e.kind == "mandate.created" && e.data.contains(&m2.id))
            .unwrap();
        let data: Value = serde_json::from_str(&m2_created.data).unwrap();
        assert_eq!(data["replaced"][0]["mandate_id"], json!(m1.id));
        assert_eq!(data["replaced"][0]["domain"], "papiers");
        assert_eq!(m2_created.org_id.as_deref(), Some(org_a.as_str()));
        let revoked = entries
            .iter()
            .find(|e| e.kind == "authorisation.revoked")
            .unwrap();
        assert_eq!(revoked.actor, format!("usager:{u}"));
        assert!(entries
            .iter()
            .any(|e| e.kind == "mandate.revoked" && e.actor == format!("aidant:{a1}")));
        assert!(
            entries.iter().all(|e| !e.data.contains("dupont")),
            "the identity key only appears hashed"
        );
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_mandates_leave_one_active_authorisation() {
    for db in databases() {
        let d = open(&db, 8).await;
        let s = &d.store;
        let (org, aidant, _) = org_and_aidant(s, "a@mairie.fr").await;
        let u = s.upsert_usager("v1\nu", &salt(), NOW).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (s, org, aidant, u) = (s.clone(), org.clone(), aidant.clone(), u.clone());
            tasks.push(tokio::spawn(async move {
                s.create_mandate(
                    &NewMandate {
                        org_id: &org,
                        usager_id: &u,
                        aidant_id: &aidant,
                        domains: &["papiers"],
                        duration_days: 30,
                        consent_version: "v1",
                        consent_hash: "h",
                    },
                    NOW + i,
                )
                .await
                .unwrap()
                .id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        let mut n_active = 0;
        for id in &ids {
            if s.active_authorisation(id, "papiers", NOW + 20)
                .await
                .unwrap()
            {
                n_active += 1;
            }
        }
        assert_eq!(
            n_active,
            1,
            "{}: exactly one active authorisation",
            d.name()
        );
        journal::verify(s).await.unwrap();
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_is_append_only_in_the_database() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let name = d.name();
        for i in 0..3 {
            journal::append(
                s,
                Event {
                    kind: "test",
                    actor: "admin:cli",
                    org_id: None,
                    data: json!({"i": i}),
                    personal: vec![],
                },
                &salt(),
                NOW + i,
            )
            .await
            .unwrap();
        }
        let dir = d.dir.join("keys");
        keys::generate(&dir, Alg::ES256, None).unwrap();
        let set = KeySet::load(&dir).unwrap();
        journal::sign_head(s, set.signer(Alg::ES256).unwrap(), NOW + 10)
            .await
            .unwrap();
        for sql in [
            "UPDATE journal SET kind = 'x' WHERE seq = 2",
            "UPDATE journal SET data = '{}'",
            "DELETE FROM journal WHERE seq = 3",
            "DELETE FROM journal",
            "UPDATE journal_heads SET seq = 2",
            "DELETE FROM journal_heads",
        ] {
            let r = d.exec(sql).await;
            assert!(
                matches!(r, Err(ref e) if e.contains("journal is append-only")),
                "{name}: {sql} must be rejected: {r:?}"
            );
        }
        if s.is_postgres() {
            for sql in ["TRUNCATE journal", "TRUNCATE journal_heads"] {
                let r = d.exec(sql).await;
                assert!(
                    matches!(r, Err(ref e) if e.contains("append-only")),
                    "{sql}: {r:?}"
                );
            }
        }
        assert_eq!(journal::verify(s).await.unwrap(), 3);
        // Inserting is allowed (that is how entries are appended).
        journal::append(
            s,
            Event {
                kind: "test",
                actor: "admin:cli",
                org_id: None,
                data: json!({}),
                personal: vec![],
            },
            &salt(),
            NOW + 20,
        )
        .await
        .unwrap();
        assert_eq!(journal::verify(s).await.unwrap(), 4);
        d.close().await;
    }
}

/// Three entries (and optionally a signed head on the third).
async fn three_entries(d: &Db) -> Vec<journal::Entry> {
    let mut v = Vec::new();
    for (i, kind) in ["organisation.created", "aidant.created", "mandate.created"]
        .iter()
        .enumerate()
    {
        v.push(
            journal::append(
                &d.store,
                Event {
                    kind,
                    actor: "admin:cli",
                    org_id: Some("org"),
                    data: json!({"n": i, "domains": ["papiers"]}),
                    personal: vec![("email", format!("person{i}@example.fr"))],
                },
                &salt(),
                NOW + i as i64,
            )
            .await
            .unwrap(),
        );
    }
    v
}

fn broken_at(r: Result<u64, JournalError>, seq: i64, why: &str, ctx: &str) {
    match r {
        Err(JournalError::Broken { seq: s, reason }) => {
            assert_eq!(s, seq, "{ctx}: {reason}");
            assert!(reason.contains(why), "{ctx}: {reason}");
        }
        other => panic!("{ctx}: expected broken at {seq}, got {other:?}"),
    }
}

fn q(s: &str) -> String {
    s.replace('\'', "''")
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_tampering_is_detected() {
    for db in databases() {
        // 1. Data edited in place.
        let d = open(&db, 4).await;
        let name = d.name();
        three_entries(&d).await;
        assert_eq!(journal::verify(&d.store).await.unwrap(), 3);
        d.drop_append_only_triggers().await;
        let n = d
            .exec("UPDATE journal SET data = replace(data, 'papiers', 'famille') WHERE seq = 2")
            .await
            .unwrap();
        assert_eq!(n, 1);
        broken_at(journal::verify(&d.store).await, 2, "data", name);
        d.close().await;

        // 2. Entry rewritten with consistent hashes: the next link breaks.
        let d = open(&db, 4).await;
        let e = three_entries(&d).await;
        d.drop_append_only_triggers().await;
        let data = e[1].data.replace("papiers", "famille");
        let data_hash = sha(&data);
        let hash = journal::entry_hash(
            2,
            e[1].at,
            &e[1].kind,
            &e[1].actor,
            e[1].org_id.as_deref(),
            &data_hash,
            &e[1].prev_hash,
        );
        d.exec(&format!(
            "UPDATE journal SET data = '{}', data_hash = '{data_hash}', hash = '{hash}' WHERE seq = 2",
            q(&data)
        ))
        .await
        .unwrap();
        broken_at(journal::verify(&d.store).await, 3, "link", name);
        // Metadata edited: the entry's own hash breaks.
        d.exec("UPDATE journal SET actor = 'aidant:someone-else' WHERE seq = 1")
            .await
            .unwrap();
        broken_at(journal::verify(&d.store).await, 1, "hash", name);
        d.close().await;

        // 3. An entry removed from the middle.
        let d = open(&db, 4).await;
        three_entries(&d).await;
        d.drop_append_only_triggers().await;
        d.exec("DELETE FROM journal WHERE seq = 2").await.unwrap();
        broken_at(journal::verify(&d.store).await, 2, "missing", name);
        d.close().await;

        // 4. The last entries removed: undetectable by the chain alone,
        //    detected by a signed head.
        let d = open(&db, 4).await;
        three_entries(&d).await;
        let dir = d.dir.join("keys");
        keys::generate(&dir, Alg::ES256, None).unwrap();
        let set = Arc::new(KeySet::load(&dir).unwrap());
        let head = journal::sign_head(&d.store, set.signer(Alg::ES256).unwrap(), NOW + 50)
            .await
            .unwrap();
        assert_eq!(head.seq, 3);
        let r = journal::verify_with_keys(&d.store, std::slice::from_ref(&set))
            .await
            .unwrap();
        assert_eq!(
            (r.entries, r.heads, r.signatures_verified, r.unknown_keys),
            (3, 1, 1, 0)
        );
        // Heads by a key not in the given sets are counted, not failed.
        let other_dir = d.dir.join("other-keys");
        keys::generate(&other_dir, Alg::ES256, None).unwrap();
        let other = Arc::new(KeySet::load(&other_dir).unwrap());
        let r = journal::verify_with_keys(&d.store, &[other]).await.unwrap();
        assert_eq!((r.signatures_verified, r.unknown_keys), (0, 1));
        d.drop_append_only_triggers().await;
        d.exec("DELETE FROM journal WHERE seq = 3").await.unwrap();
        broken_at(journal::verify(&d.store).await, 3, "removed", name);
        d.close().await;

        // 5. A signed head edited to match a rewritten chain: its signature
        //    no longer matches.
        let d = open(&db, 4).await;
        three_entries(&d).await;
        let dir = d.dir.join("keys");
        keys::generate(&dir, Alg::ES256, None).unwrap();
        let set = Arc::new(KeySet::load(&dir).unwrap());
        journal::sign_head(&d.store, set.signer(Alg::ES256).unwrap(), NOW + 50)
            .await
            .unwrap();
        d.drop_append_only_triggers().await;
        d.exec(&format!(
            "UPDATE journal_heads SET hash = '{}'",
            "ab".repeat(32)
        ))
        .await
        .unwrap();
        broken_at(journal::verify(&d.store).await, 3, "differs", name);
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_appends_keep_one_chain() {
    for db in databases() {
        let d = open(&db, 8).await;
        three_entries(&d).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = d.store.clone();
            tasks.push(tokio::spawn(async move {
                journal::append(
                    &s,
                    Event {
                        kind: "concurrent",
                        actor: "admin:cli",
                        org_id: None,
                        data: json!({"task": i}),
                        personal: vec![],
                    },
                    &salt(),
                    NOW + 100,
                )
                .await
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap().seq);
        }
        seqs.sort();
        assert_eq!(seqs, (4..=23).collect::<Vec<i64>>(), "{}", d.name());
        assert_eq!(journal::verify(&d.store).await.unwrap(), 23, "{}", d.name());
        let entries = d.store.journal_page(0, 100).await.unwrap();
        let mut tasks_seen: Vec<i64> = entries
            .iter()
            .filter(|e| e.kind == "concurrent")
            .map(|e| {
                serde_json::from_str::<Value>(&e.data).unwrap()["task"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        tasks_seen.sort();
        assert_eq!(tasks_seen, (0..20).collect::<Vec<i64>>());
        d.close().await;
    }
}

fn relais(args: &[&str], config: &std::path::Path, stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_relais"))
        .args(args)
        .env("RELAIS_CONFIG", config)
        .env("RELAIS_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_aidants_and_journal_verify_detects_tampering() {
    for db in databases() {
        let d = open(&db, 2).await;
        let name = d.name();
        let urls = relais::demo::Urls {
            broker: "http://127.0.0.1:1".into(),
            idp1: "http://127.0.0.1:2".into(),
            idp2: "http://127.0.0.1:3".into(),
            service: "http://127.0.0.1:4".into(),
            idp3: "http://127.0.0.1:5".into(),
            idp4: "http://127.0.0.1:6".into(),
            agent_service: "http://127.0.0.1:7".into(),
        };
        let keys_dir = d.dir.join("keys");
        let cfg = d.dir.join("relais.toml");
        std::fs::write(
            &cfg,
            relais::demo::demo_config(&urls, "127.0.0.1:0", &d.url, &keys_dir),
        )
        .unwrap();
        let run = |args: &[&str], stdin: Option<&str>| relais(args, &cfg, stdin);

        let (ok, out, err) = run(
            &[
                "aidants",
                "org-create",
                "--name",
                "France Services Test",
                "--siret",
                SIRET_A,
            ],
            None,
        );
        assert!(ok, "{name}: {out}{err}");
        assert!(out.contains("France Services Test"), "{out}");
        let (ok, _, err) = run(
            &[
                "aidants",
                "org-create",
                "--name",
                "Bad",
                "--siret",
                "35600000000049",
            ],
            None,
        );
        assert!(!ok && err.contains("invalid SIRET"), "{err}");
        let (ok, out, err) = run(&["aidants", "org-list"], None);
        assert!(ok && out.contains(SIRET_A), "{out}{err}");

        let (ok, out, err) = run(
            &[
                "aidants",
                "create",
                "--email",
                "Cli.Aidant@Mairie.fr",
                "--name",
                "Cli Aidant",
                "--org",
                SIRET_A,
            ],
            Some(&format!("{PASSWORD}\n")),
        );
        assert!(ok, "{name}: {out}{err}");
        assert!(
            out.contains("otpauth://totp/Relais:cli.aidant@mairie.fr?secret="),
            "{out}"
        );
        let secret = out
            .lines()
            .find_map(|l| l.strip_prefix("secret: "))
            .unwrap()
            .to_string();
        assert!(totp::base32_decode(&secret).is_some_and(|k| k.len() == 20));
        // The password read from stdin is the one stored.
        let now = relais::mandates::cli::now();
        let login = d
            .store
            .verify_password_and_totp(
                "cli.aidant@mairie.fr",
                PASSWORD,
                &totp::code_at(&secret, now).unwrap(),
                now,
            )
            .await
            .unwrap();
        let (ok, _, err) = run(
            &[
                "aidants",
                "create",
                "--email",
                "r@mairie.fr",
                "--name",
                "R",
                "--org",
                SIRET_A,
                "--referent",
            ],
            Some("short\n"),
        );
        assert!(!ok && err.contains("at least 12"), "{err}");
        let (ok, out, err) = run(
            &[
                "aidants",
                "create",
                "--email",
                "r@mairie.fr",
                "--name",
                "Réf",
                "--org",
                SIRET_A,
                "--referent",
            ],
            Some(&format!("{PASSWORD}\n")),
        );
        assert!(ok, "{out}{err}");
        let r = d
            .store
            .aidant_by_email("r@mairie.fr")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.orgs[0].1, Role::Referent);
        let (ok, _, err) = run(
            &[
                "aidants",
                "create",
                "--email",
                "x@mairie.fr",
                "--name",
                "X",
                "--org",
                SIRET_B,
            ],
            Some(&format!("{PASSWORD}\n")),
        );
        assert!(!ok && err.contains("no organisation"), "{err}");

        let (ok, out, err) = run(
            &["aidants", "reset-totp", "--email", "cli.aidant@mairie.fr"],
            None,
        );
        assert!(ok, "{out}{err}");
        let new_secret = out
            .lines()
            .find_map(|l| l.strip_prefix("secret: "))
            .unwrap();
        assert_ne!(new_secret, secret);
        let (ok, _, err) = run(
            &["aidants", "reset-totp", "--email", "nobody@mairie.fr"],
            None,
        );
        assert!(!ok && err.contains("not found"), "{err}");

        // A mandate made through the API, listed by the CLI.
        let org = d
            .store
            .organisation_by_siret(SIRET_A)
            .await
            .unwrap()
            .unwrap();
        let u = d
            .store
            .upsert_usager("v1\ncli", &salt(), now)
            .await
            .unwrap();
        let m = d
            .store
            .create_mandate(
                &NewMandate {
                    org_id: &org.id,
                    usager_id: &u,
                    aidant_id: &login.aidant_id,
                    domains: &["papiers", "social"],
                    duration_days: 30,
                    consent_version: "v1",
                    consent_hash: "abc",
                },
                now,
            )
            .await
            .unwrap();
        d.store
            .revoke_domain(&m.id, "social", &Actor::Usager(u.clone()), now)
            .await
            .unwrap();
        let (ok, out, err) = run(&["aidants", "mandates", "--org", SIRET_A], None);
        assert!(ok, "{out}{err}");
        assert!(out.contains("1 mandate(s)") && out.contains(&m.id), "{out}");
        let papiers = out
            .lines()
            .find(|l| l.trim_start().starts_with("papiers"))
            .unwrap();
        assert!(papiers.contains("active"), "{out}");
        let social = out
            .lines()
            .find(|l| l.trim_start().starts_with("social"))
            .unwrap();
        assert!(
            social.contains("revoked") && social.contains(&format!("usager:{u}")),
            "{out}"
        );

        let (ok, out, err) = run(&["journal", "verify"], None);
        assert!(ok, "{out}{err}");
        let entries = d.store.journal_page(0, 1000).await.unwrap().len();
        assert!(
            out.contains(&format!("journal verified: {entries} entries")),
            "{out}"
        );

        // Signing needs an ES256 key of the federation.
        let (ok, _, err) = run(&["journal", "sign-head", "--federation", "citizen"], None);
        assert!(!ok && err.contains("no active ES256 key"), "{err}");
        let (ok, _, err) = run(&["journal", "sign-head", "--federation", "nope"], None);
        assert!(!ok && err.contains("no federation"), "{err}");
        let (ok, out, err) = run(&["keys", "generate", "--alg", "ES256"], None);
        assert!(ok, "{out}{err}");
        let (ok, out, err) = run(&["journal", "sign-head", "--federation", "citizen"], None);
        assert!(
            ok && out.contains(&format!("entry {entries}")),
            "{out}{err}"
        );
        let (ok, out, err) = run(&["journal", "verify"], None);
        assert!(
            ok && out.contains("1 signed head(s), 1 signature(s) checked"),
            "{out}{err}"
        );

        let (ok, out, err) = run(&["journal", "export"], None);
        assert!(ok, "{err}");
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), entries + 1);
        assert!(lines[..entries].iter().all(|l| l["type"] == "entry"));
        assert_eq!(lines[entries]["type"], "head");
        for l in &lines[..entries] {
            assert_eq!(
                sha(l["data"].as_str().unwrap()),
                l["data_hash"].as_str().unwrap(),
                "data_hash recomputable from the export"
            );
        }
        assert!(
            !out.contains("cli.aidant@mairie.fr"),
            "no e-mail in clear: {out}"
        );
        let salt_file = keys_dir.join("journal-salt");
        assert!(salt_file.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&salt_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Tamper with the database directly: verify fails, naming the entry.
        d.drop_append_only_triggers().await;
        d.exec("UPDATE journal SET data = replace(data, 'papiers', 'famille') WHERE kind = 'mandate.created'")
            .await
            .unwrap();
        let seq = d
            .store
            .journal_page(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.kind == "mandate.created")
            .unwrap()
            .seq;
        let (ok, out, err) = run(&["journal", "verify"], None);
        assert!(!ok, "{name}: tampering must fail verification: {out}");
        assert!(
            err.contains(&format!("journal BROKEN at entry {seq}")),
            "{name}: {err}"
        );
        d.close().await;
    }
}
