//! Aidants foundation on SQLite and PostgreSQL: organisations, aidant
//! sign-in (password + TOTP, replay, lockout), mandates and their
//! authorisations (replacement, expiry, revocation, who may revoke), the
//! tamper-evident journal (append-only triggers, tampering detected,
//! concurrent appends, signed heads), and the admin command line.

use relais::aidants::journal::{self, Event, JournalError};
use relais::aidants::journal_key::{self, JournalKey, PublicKeys};
use relais::aidants::pages::enrolment;
use relais::aidants::{
    default_domains, totp, Actor, LoginError, MandateError, NewAidant, NewMandate, Role, Salt,
    TotpKey,
};
use relais::crypto::{keys, Alg, KeySet};
use relais::store::{Backend, Store};
use relais_testkit::*;
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

    /// One text value read with raw SQL.
    async fn text(&self, sql: &str) -> String {
        match self.store.backend() {
            Backend::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Backend::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
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

fn key() -> TotpKey {
    TotpKey::new(b"a test TOTP encryption key, 32 b").unwrap()
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
            &key(),
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

fn refused(r: Result<relais::aidants::AidantLogin, LoginError>, what: &str) {
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
            org.allowed_domains(&default_domains()),
            relais::aidants::DEFAULT_DOMAINS.map(String::from).to_vec()
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
            .create_aidant(&new, &Actor::Admin, &salt(), &key(), NOW)
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
        let r = s
            .create_aidant(&new, &Actor::Admin, &salt(), &key(), NOW)
            .await;
        assert!(matches!(r, Err(MandateError::Conflict(_))), "{r:?}");
        let short = NewAidant {
            email: "x@mairie.fr",
            password: "short",
            ..new.clone()
        };
        let r = s
            .create_aidant(&short, &Actor::Admin, &salt(), &key(), NOW)
            .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        let bad_email = NewAidant {
            email: "not-an-email",
            ..new.clone()
        };
        let r = s
            .create_aidant(&bad_email, &Actor::Admin, &salt(), &key(), NOW)
            .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        let no_org = NewAidant {
            email: "y@mairie.fr",
            org_id: "nope",
            ..new.clone()
        };
        let r = s
            .create_aidant(&no_org, &Actor::Admin, &salt(), &key(), NOW)
            .await;
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
        // Encrypted at rest, readable with the deployment's key only.
        assert!(stored_secret.starts_with("v1:") && !stored_secret.contains(&secret));
        assert_eq!(
            key().open(&created.id, &stored_secret).unwrap().secret(),
            secret
        );

        let t = NOW;
        let code = totp::code_at(&secret, t).unwrap();
        refused(
            s.verify_password_and_totp(email, PASSWORD, &wrong_code(&secret, t), &key(), t)
                .await,
            "wrong code",
        );
        refused(
            s.verify_password_and_totp(email, "wrong password!", &code, &key(), t)
                .await,
            "wrong password",
        );
        refused(
            s.verify_password_and_totp("nobody@mairie.fr", PASSWORD, &code, &key(), t)
                .await,
            "unknown e-mail",
        );
        refused(
            s.verify_password_and_totp("not an email", PASSWORD, &code, &key(), t)
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
            .verify_password_and_totp("MARIE.DUPONT@mairie-rennes.fr", PASSWORD, &code, &key(), t)
            .await
            .unwrap();
        assert_eq!(login.aidant_id, created.id);
        assert_eq!(login.current_org.as_deref(), Some(org.id.as_str()));
        assert_eq!(login.totp_step, totp::step_at(t));
        let a = s.aidant_by_email(email).await.unwrap().unwrap();
        assert_eq!((a.failed_attempts, a.totp_last_step), (0, totp::step_at(t)));
        // The same code cannot be used twice, nor an older one.
        refused(
            s.verify_password_and_totp(email, PASSWORD, &code, &key(), t + 5)
                .await,
            "replayed code",
        );
        refused(
            s.verify_password_and_totp(
                email,
                PASSWORD,
                &totp::code_at(&secret, t - 30).unwrap(),
                &key(),
                t,
            )
            .await,
            "code of the previous step after a newer one was used",
        );
        // The next step's code works.
        let t2 = t + 30;
        s.verify_password_and_totp(
            email,
            PASSWORD,
            &totp::code_at(&secret, t2).unwrap(),
            &key(),
            t2,
        )
        .await
        .unwrap();

        // Lockout: 5 failures lock the account for 15 minutes, even for
        // correct credentials.
        let t3 = t + 600;
        for i in 0..5 {
            refused(
                s.verify_password_and_totp(
                    email,
                    PASSWORD,
                    &wrong_code(&secret, t3),
                    &key(),
                    t3 + i,
                )
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
                    &key(),
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
            &key(),
            after,
        )
        .await
        .unwrap();
        // Success resets the counter: 4 failures, a success, 4 failures: not locked.
        let t4 = after + 300;
        for i in 0..4 {
            refused(
                s.verify_password_and_totp(email, "nope nope nope", "000000", &key(), t4 + i)
                    .await,
                "wrong",
            );
        }
        s.verify_password_and_totp(
            email,
            PASSWORD,
            &totp::code_at(&secret, t4 + 4).unwrap(),
            &key(),
            t4 + 4,
        )
        .await
        .unwrap();
        for i in 0..4 {
            refused(
                s.verify_password_and_totp(email, "nope nope nope", "000000", &key(), t4 + 40 + i)
                    .await,
                "wrong",
            );
        }
        let a = s.aidant_by_email(email).await.unwrap().unwrap();
        assert_eq!((a.failed_attempts, a.locked_until), (4, locked_until));

        // TOTP reset: the old secret stops working, the new one works, the
        // account is unlocked.
        let reset = s
            .reset_totp(email, &Actor::Admin, &key(), t4 + 100)
            .await
            .unwrap();
        assert_ne!(reset.totp_secret, secret);
        assert_eq!(reset.id, created.id);
        let t5 = t4 + 200;
        refused(
            s.verify_password_and_totp(
                email,
                PASSWORD,
                &totp::code_at(&secret, t5).unwrap(),
                &key(),
                t5,
            )
            .await,
            "old secret",
        );
        s.verify_password_and_totp(
            email,
            PASSWORD,
            &totp::code_at(&reset.totp_secret, t5 + 30).unwrap(),
            &key(),
            t5 + 30,
        )
        .await
        .unwrap();
        let r = s
            .reset_totp("nobody@mairie.fr", &Actor::Admin, &key(), t5)
            .await;
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
                &key(),
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
                    &default_domains(),
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
                    &default_domains(),
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

/// Trust exactly this key for heads.
fn trusting(key: &relais::crypto::SigningKey) -> PublicKeys {
    let mut keys = PublicKeys::new();
    keys.insert(key.public_jwk.clone());
    keys
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
        let r = journal::verify_with_keys(&d.store, &trusting(set.signer(Alg::ES256).unwrap()))
            .await
            .unwrap();
        assert_eq!(
            (r.entries, r.heads, r.signatures_verified, r.unsigned_tail()),
            (3, 1, 1, 0)
        );
        // A head signed by a key the journal does not trust breaks
        // verification (it used to be counted and accepted).
        let other_dir = d.dir.join("other-keys");
        keys::generate(&other_dir, Alg::ES256, None).unwrap();
        let other = KeySet::load(&other_dir).unwrap();
        let r = journal::verify_with_keys(&d.store, &trusting(other.signer(Alg::ES256).unwrap()))
            .await
            .map(|r| r.entries);
        broken_at(r, 3, "unknown key", name);
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

/// A demo configuration for `d` (plus `extra` TOML); returns its path and
/// the keys folder.
fn cli_config(d: &Db, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let urls = relais_demo::Urls {
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
    let text = relais_demo::demo_config(&urls, "127.0.0.1:0", &d.url, &keys_dir);
    std::fs::write(&cfg, format!("{text}\n{extra}")).unwrap();
    (cfg, keys_dir)
}

async fn entry(d: &Db, i: i64) {
    journal::append(
        &d.store,
        Event {
            kind: "mandate.created",
            actor: "aidant:a1",
            org_id: Some("org"),
            data: json!({"n": i, "domains": ["papiers"]}),
            personal: vec![],
        },
        &salt(),
        NOW + i,
    )
    .await
    .unwrap();
}

/// The attack the external heads file is for: someone with the database
/// drops the append-only triggers, removes or rewrites entries, recomputes
/// every hash after them and removes (or, holding the journal key,
/// re-signs) the heads in the database. The database alone then verifies;
/// `verify --heads FILE` does not, and names the first differing head.
#[tokio::test(flavor = "multi_thread")]
async fn rewritten_chain_is_caught_by_the_external_heads_file() {
    for db in databases() {
        let d = open(&db, 2).await;
        let name = d.name();
        let (cfg, keys_dir) = cli_config(&d, "");
        let heads = d.dir.join("heads.jsonl");
        let heads_arg = heads.to_str().unwrap();
        let run = |args: &[&str]| relais(args, &cfg, None);
        // Five entries; heads signed through the CLI after entries 2, 4 and 5.
        for i in 1..=5 {
            entry(&d, i).await;
            if [2, 4, 5].contains(&i) {
                let (ok, out, err) = run(&["journal", "sign-head", "--out", heads_arg]);
                assert!(
                    ok && out.contains(&format!("entry {i}")) && out.contains("appended to"),
                    "{name}: {out}{err}"
                );
            }
        }
        assert_eq!(std::fs::read_to_string(&heads).unwrap().lines().count(), 3);
        let (ok, out, err) = run(&["journal", "verify", "--heads", heads_arg]);
        assert!(
            ok && out.contains("3 head(s) match the journal, up to entry 5 (0 entries after it)"),
            "{name}: {out}{err}"
        );

        // The last entry and the heads removed: the database alone cannot tell.
        d.drop_append_only_triggers().await;
        d.exec("DELETE FROM journal_heads").await.unwrap();
        d.exec("DELETE FROM journal WHERE seq = 5").await.unwrap();
        let (ok, out, err) = run(&["journal", "verify"]);
        assert!(
            ok && out.contains("journal verified: 4 entries, 0 signed head(s)"),
            "{name}: {out}{err}"
        );
        let (ok, _, err) = run(&["journal", "verify", "--heads", heads_arg]);
        assert!(
            !ok && err.contains("journal REWRITTEN at or before entry 5")
                && err.contains("line 3")
                && err.contains("ends at 4: entries were removed"),
            "{name}: {err}"
        );

        // Entry 3 rewritten and every hash from it recomputed.
        let mut entries = d.store.journal_page(0, 10).await.unwrap();
        let mut prev = entries[1].hash.clone();
        for e in &mut entries[2..] {
            if e.seq == 3 {
                e.data = e.data.replace("papiers", "social");
                e.data_hash = sha(&e.data);
            }
            e.prev_hash = prev.clone();
            e.hash = e.computed_hash();
            d.exec(&format!(
                "UPDATE journal SET data = '{}', data_hash = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {}",
                q(&e.data),
                e.data_hash,
                e.prev_hash,
                e.hash,
                e.seq
            ))
            .await
            .unwrap();
            prev = e.hash.clone();
        }
        // The database alone is consistent again, nothing is signed...
        let (ok, out, err) = run(&["journal", "verify"]);
        assert!(
            ok && out.contains("journal verified: 4 entries, 0 signed head(s)")
                && out.contains("unsigned tail: 4 entries (no signed head)"),
            "{name}: {out}{err}"
        );
        // ...which --max-unsigned refuses,
        let (ok, _, err) = run(&["journal", "verify", "--max-unsigned", "2"]);
        assert!(
            !ok && err.contains("4 entries are not covered by a signed head"),
            "{name}: {err}"
        );
        // and the heads file names the first divergence: the head at entry 4
        // (line 2) differs, the one at entry 2 (line 1) still matches.
        let (ok, _, err) = run(&["journal", "verify", "--heads", heads_arg]);
        assert!(
            !ok && err.contains("journal REWRITTEN at or before entry 4")
                && err.contains("line 2")
                && err.contains("within entries 3 to 4"),
            "{name}: {err}"
        );

        // An attacker who also holds the journal key re-signs the head in the
        // database: it verifies, with its signature checked; the heads
        // file, kept on another system, still catches the rewrite.
        let key = JournalKey::load(&keys_dir).unwrap();
        journal::sign_head(&d.store, &key.signer, NOW + 100)
            .await
            .unwrap();
        let (ok, out, err) = run(&["journal", "verify"]);
        assert!(
            ok && out.contains("1 signed head(s), 1 signature(s) checked")
                && out.contains("unsigned tail: 0 entries"),
            "{name}: {out}{err}"
        );
        let (ok, _, err) = run(&["journal", "verify", "--heads", heads_arg]);
        assert!(
            !ok && err.contains("journal REWRITTEN at or before entry 4"),
            "{name}: {err}"
        );
        d.close().await;
    }
}

/// Heads are signed with the journal key: a head by any other key fails
/// verification (database or heads file), rotating the ID-token keys
/// changes nothing (even for heads an older version signed with the
/// citizen ES256 key), and rotating the journal key keeps older heads
/// verifiable.
#[tokio::test(flavor = "multi_thread")]
async fn journal_heads_are_signed_with_their_own_key() {
    for db in databases() {
        let d = open(&db, 2).await;
        let name = d.name();
        let heads = d.dir.join("heads.jsonl");
        let (cfg, keys_dir) = cli_config(
            &d,
            &format!("[aidants]\njournal_heads_file = \"{}\"\n", heads.display()),
        );
        let run = |args: &[&str]| relais(args, &cfg, None);
        three_entries(&d).await;
        // A head an older version signed with the citizen ES256 key.
        let (ok, out, err) = run(&["keys", "generate", "--alg", "ES256"]);
        assert!(ok, "{out}{err}");
        let citizen = KeySet::load(&keys_dir.join("citizen")).unwrap();
        let legacy = citizen.signer(Alg::ES256).unwrap();
        journal::sign_head(&d.store, legacy, NOW + 10)
            .await
            .unwrap();
        // The journal key is created on first use, apart from the
        // federations' keys; the configured heads file gets the head.
        entry(&d, 4).await;
        let (ok, out, err) = run(&["journal", "sign-head"]);
        assert!(ok && out.contains("entry 4"), "{name}: {out}{err}");
        let journal_kid = JournalKey::load(&keys_dir).unwrap().signer.kid.clone();
        assert!(
            out.contains(&journal_kid) && out.contains("appended to"),
            "{out}"
        );
        assert_ne!(journal_kid, legacy.kid);
        let (ok, out, err) = run(&["journal", "verify", "--heads", heads.to_str().unwrap()]);
        assert!(
            ok && out.contains("2 signed head(s), 2 signature(s) checked")
                && out.contains("1 head(s) match the journal, up to entry 4"),
            "{name}: {out}{err}"
        );

        // Three rotations of the ID-token keys delete the legacy key.
        for _ in 0..3 {
            let (ok, out, err) = run(&["keys", "rotate", "--alg", "ES256"]);
            assert!(ok, "{out}{err}");
        }
        let citizen = KeySet::load(&keys_dir.join("citizen")).unwrap();
        assert!(citizen.infos().iter().all(|i| i.kid != legacy.kid));
        let (ok, out, err) = run(&["journal", "verify"]);
        assert!(
            ok && out.contains("2 signed head(s), 2 signature(s) checked"),
            "{name}: {out}{err}"
        );

        // A journal key rotation: the old heads still verify.
        let (ok, out, err) = run(&["journal", "rotate-key"]);
        assert!(ok && out.contains(&journal_kid), "{out}{err}");
        entry(&d, 5).await;
        let (ok, out, err) = run(&["journal", "sign-head"]);
        assert!(ok && !out.contains(&journal_kid), "{out}{err}");
        let (ok, out, err) = run(&["journal", "verify", "--heads", heads.to_str().unwrap()]);
        assert!(
            ok && out.contains("3 signed head(s), 3 signature(s) checked")
                && out.contains("2 head(s) match the journal, up to entry 5"),
            "{name}: {out}{err}"
        );

        // A line signed by an unknown key in the heads file.
        let stranger_dir = d.dir.join("stranger");
        let stranger = JournalKey::load_or_create(&stranger_dir, &[]).unwrap();
        let text = std::fs::read_to_string(&heads).unwrap();
        let forged = journal::sign_head(&d.store, &stranger.signer, NOW + 60)
            .await
            .unwrap();
        let other_file = d.dir.join("other-heads.jsonl");
        std::fs::write(&other_file, format!("{text}{}\n", forged.signature)).unwrap();
        let (ok, _, err) = run(&["journal", "verify", "--heads", other_file.to_str().unwrap()]);
        assert!(
            !ok && err.contains("line 3") && err.contains("unknown key"),
            "{name}: {err}"
        );
        // The same head in the database: verification fails (an unknown
        // kid used to be a warning).
        let (ok, out, err) = run(&["journal", "verify"]);
        assert!(
            !ok && err.contains("journal BROKEN at entry 5") && err.contains("unknown key"),
            "{name}: {out}{err}"
        );
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_aidants_and_journal_verify_detects_tampering() {
    for db in databases() {
        let d = open(&db, 2).await;
        let name = d.name();
        let urls = relais_demo::Urls {
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
            relais_demo::demo_config(&urls, "127.0.0.1:0", &d.url, &keys_dir),
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
        let (ok, _, err) = run(
            &[
                "aidants",
                "org-create",
                "--name",
                "Impots",
                "--siret",
                SIRET_B,
                "--domains",
                "social,impots",
            ],
            None,
        );
        assert!(!ok && err.contains("not in the configured list"), "{err}");

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
        let now = relais::aidants::cli::now();
        let login = d
            .store
            .verify_password_and_totp(
                "cli.aidant@mairie.fr",
                PASSWORD,
                &totp::code_at(&secret, now).unwrap(),
                &TotpKey::in_keys_dir(&keys_dir).unwrap(),
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
                &default_domains(),
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

        assert!(
            out.contains(&format!(
                "unsigned tail: {entries} entries (no signed head)"
            )),
            "{out}"
        );

        // Signing uses the journal key, created on first use (no federation
        // ES256 key needed; --federation is accepted and ignored).
        let (ok, out, err) = run(&["journal", "sign-head", "--federation", "citizen"], None);
        assert!(
            ok && out.contains(&format!("entry {entries}")) && err.contains("ignored"),
            "{out}{err}"
        );
        assert!(keys_dir.join("journal/active.pem").exists());
        let (ok, out, err) = run(&["journal", "verify"], None);
        assert!(
            ok && out.contains("1 signed head(s), 1 signature(s) checked")
                && out.contains(&format!(
                    "unsigned tail: 0 entries after the last signed head (entry {entries})"
                )),
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

        // TOTP secrets are encrypted with {keys_dir}/totp-key.
        let key_file = keys_dir.join("totp-key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let stored = d
            .text("SELECT totp_secret FROM aidants WHERE email = 'cli.aidant@mairie.fr'")
            .await;
        assert!(
            stored.starts_with("v1:") && !stored.contains(new_secret),
            "{stored}"
        );
        // A row stored in clear by an older version is converted, once.
        d.exec(&format!(
            "UPDATE aidants SET totp_secret = '{new_secret}' WHERE email = 'r@mairie.fr'"
        ))
        .await
        .unwrap();
        let (ok, out, err) = run(&["aidants", "encrypt-secrets"], None);
        assert!(
            ok && out.contains("1 TOTP secret(s) encrypted"),
            "{out}{err}"
        );
        let (ok, out, err) = run(&["aidants", "encrypt-secrets"], None);
        assert!(
            ok && out.contains("0 TOTP secret(s) encrypted"),
            "{out}{err}"
        );
        assert!(d
            .text("SELECT totp_secret FROM aidants WHERE email = 'r@mairie.fr'")
            .await
            .starts_with("v1:"));

        // Retention purge: the mandate is recent, nobody is purged.
        let (ok, out, err) = run(&["aidants", "purge"], None);
        assert!(
            ok && out.contains("0 usager(s)") && out.contains("1825 days"),
            "{out}{err}"
        );
        let (ok, _, err) = run(&["aidants", "purge", "--retention-days", "0"], None);
        assert!(!ok && err.contains("at least 1 day"), "{err}");

        // Deactivating the organisation stops its mandates at once.
        assert!(d
            .store
            .active_authorisation(&m.id, "papiers", now)
            .await
            .unwrap());
        let (ok, out, err) = run(&["aidants", "org-deactivate", "--siret", SIRET_A], None);
        assert!(ok && out.contains("deactivated"), "{out}{err}");
        assert!(!d
            .store
            .active_authorisation(&m.id, "papiers", now)
            .await
            .unwrap());
        let (ok, out, err) = run(&["aidants", "org-list"], None);
        assert!(ok && out.contains("inactive"), "{out}{err}");
        let (ok, out, err) = run(&["aidants", "org-deactivate", "--siret", SIRET_A], None);
        assert!(ok && out.contains("already inactive"), "{out}{err}");
        let (ok, _, err) = run(&["aidants", "org-deactivate", "--siret", SIRET_B], None);
        assert!(!ok && err.contains("no organisation"), "{err}");
        // An enrolment link instead of the secret.
        let (ok, out, err) = run(
            &[
                "aidants",
                "reset-totp",
                "--email",
                "r@mairie.fr",
                "--enrolment-link",
            ],
            None,
        );
        assert!(
            ok && out.contains("http://127.0.0.1:1/aidant/enrolment/") && !out.contains("secret:"),
            "{out}{err}"
        );
        let (ok, out, err) = run(&["journal", "verify"], None);
        assert!(ok, "{out}{err}");

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

/// An aidant with a known password in organisation `org_id`.
async fn aidant_in(s: &Store, org_id: &str, email: &str) -> (String, String) {
    let a = s
        .create_aidant(
            &NewAidant {
                email,
                name: "Aidant",
                password: PASSWORD,
                org_id,
                role: Role::Aidant,
            },
            &Actor::Admin,
            &salt(),
            &key(),
            NOW,
        )
        .await
        .unwrap();
    (a.id, a.totp_secret)
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_secrets_are_encrypted_at_rest() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let name = d.name();
        let (org, a_id, a_secret) = org_and_aidant(s, "a@mairie.fr").await;
        let (b_id, b_secret) = aidant_in(s, &org, "b@mairie.fr").await;
        let column = |id: &str| format!("SELECT totp_secret FROM aidants WHERE id = '{id}'");
        // The column holds neither the base32 secret nor its bytes.
        let stored_a = d.text(&column(&a_id)).await;
        assert!(stored_a.starts_with("v1:"), "{name}: {stored_a}");
        assert!(!stored_a.contains(&a_secret), "{name}: {stored_a}");
        assert_ne!(stored_a, d.text(&column(&b_id)).await);
        // Sign-in still works (password + code, and code alone).
        let t = NOW + 60;
        let login = s
            .verify_password_and_totp(
                "a@mairie.fr",
                PASSWORD,
                &totp::code_at(&a_secret, t).unwrap(),
                &key(),
                t,
            )
            .await
            .unwrap();
        assert_eq!(login.aidant_id, a_id);
        let t = t + 30;
        s.verify_totp(
            &a_id,
            &totp::code_at(&a_secret, t).unwrap(),
            "test",
            &key(),
            t,
        )
        .await
        .unwrap();
        // Another deployment's key cannot read it: an error, not a sign-in.
        let other = TotpKey::new(&[5u8; 32]).unwrap();
        let t = t + 30;
        let r = s
            .verify_password_and_totp(
                "a@mairie.fr",
                PASSWORD,
                &totp::code_at(&a_secret, t).unwrap(),
                &other,
                t,
            )
            .await;
        assert!(matches!(r, Err(LoginError::Store(_))), "{name}: {r:?}");
        // A's row copied onto B does not decrypt for B: neither A's nor B's
        // codes sign B in.
        d.exec(&format!(
            "UPDATE aidants SET totp_secret = '{stored_a}' WHERE id = '{b_id}'"
        ))
        .await
        .unwrap();
        let t = t + 30;
        for secret in [&a_secret, &b_secret] {
            let r = s
                .verify_password_and_totp(
                    "b@mairie.fr",
                    PASSWORD,
                    &totp::code_at(secret, t).unwrap(),
                    &key(),
                    t,
                )
                .await;
            assert!(r.is_err(), "{name}: copied secret accepted: {r:?}");
            let r = s
                .verify_totp(&b_id, &totp::code_at(secret, t).unwrap(), "test", &key(), t)
                .await;
            assert!(r.is_err(), "{name}: copied secret accepted: {r:?}");
        }
        // A is unaffected.
        s.verify_password_and_totp(
            "a@mairie.fr",
            PASSWORD,
            &totp::code_at(&a_secret, t).unwrap(),
            &key(),
            t,
        )
        .await
        .unwrap();
        // reset-totp writes an encrypted secret too, and fixes B.
        let reset = s
            .reset_totp("b@mairie.fr", &Actor::Admin, &key(), t)
            .await
            .unwrap();
        let stored_b = d.text(&column(&b_id)).await;
        assert!(stored_b.starts_with("v1:") && !stored_b.contains(&reset.totp_secret));
        let t = t + 30;
        s.verify_password_and_totp(
            "b@mairie.fr",
            PASSWORD,
            &totp::code_at(&reset.totp_secret, t).unwrap(),
            &key(),
            t,
        )
        .await
        .unwrap();

        // Rows written before encryption (plain base32) still work, and are
        // encrypted by the sign-in that uses them.
        let (c_id, c_secret) = aidant_in(s, &org, "c@mairie.fr").await;
        let (e_id, e_secret) = aidant_in(s, &org, "e@mairie.fr").await;
        for (id, secret) in [(&c_id, &c_secret), (&e_id, &e_secret)] {
            d.exec(&format!(
                "UPDATE aidants SET totp_secret = '{secret}' WHERE id = '{id}'"
            ))
            .await
            .unwrap();
        }
        assert_eq!(d.text(&column(&c_id)).await, c_secret);
        s.verify_password_and_totp(
            "c@mairie.fr",
            PASSWORD,
            &totp::code_at(&c_secret, t).unwrap(),
            &key(),
            t,
        )
        .await
        .unwrap();
        let stored_c = d.text(&column(&c_id)).await;
        assert!(
            stored_c.starts_with("v1:") && !stored_c.contains(&c_secret),
            "{name}: {stored_c}"
        );
        // The conversion command handles the rest, once.
        assert_eq!(
            s.encrypt_totp_secrets(&key(), &Actor::Admin, t)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.encrypt_totp_secrets(&key(), &Actor::Admin, t)
                .await
                .unwrap(),
            0
        );
        let stored_e = d.text(&column(&e_id)).await;
        assert!(
            stored_e.starts_with("v1:") && !stored_e.contains(&e_secret),
            "{name}: {stored_e}"
        );
        let t = t + 30;
        for (email, secret) in [("c@mairie.fr", &c_secret), ("e@mairie.fr", &e_secret)] {
            s.verify_password_and_totp(
                email,
                PASSWORD,
                &totp::code_at(secret, t).unwrap(),
                &key(),
                t,
            )
            .await
            .unwrap();
        }
        let entries = s.journal_page(0, 1000).await.unwrap();
        let conv: Vec<_> = entries
            .iter()
            .filter(|e| e.kind == "aidants.totp_secrets_encrypted")
            .collect();
        assert_eq!(conv.len(), 1, "{name}");
        assert_eq!(
            serde_json::from_str::<Value>(&conv[0].data).unwrap()["count"],
            1
        );
        journal::verify(s).await.unwrap();
        d.close().await;
    }
}

/// A mandate for `usager` created at `at` for `days`.
async fn mandate_at(
    s: &Store,
    org: &str,
    aidant: &str,
    usager: &str,
    at: i64,
    days: i64,
) -> String {
    s.create_mandate(
        &NewMandate {
            org_id: org,
            usager_id: usager,
            aidant_id: aidant,
            domains: &["social"],
            duration_days: days,
            consent_version: "v1",
            consent_hash: "abc",
        },
        &default_domains(),
        at,
    )
    .await
    .unwrap()
    .id
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_purge_removes_usager_personal_data_only() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let name = d.name();
        let (org, aidant, _) = org_and_aidant(s, "a@mairie.fr").await;
        let long_ago = NOW - 2000 * DAY;
        let mut usagers = Vec::new();
        for n in [
            "old", "revoked", "recent", "active", "mixed", "none_old", "none_new",
        ] {
            let at = if n == "none_new" { NOW - DAY } else { long_ago };
            let id = s
                .upsert_usager(&format!("key-{n}"), &salt(), at)
                .await
                .unwrap();
            s.set_usager_claims(&id, &json!({"given_name": n}).to_string())
                .await
                .unwrap();
            usagers.push((n, id));
        }
        let id = |n: &str| usagers.iter().find(|u| u.0 == n).unwrap().1.clone();
        // Ended 1970 days ago.
        mandate_at(s, &org, &aidant, &id("old"), long_ago, 30).await;
        // Would run for a year but revoked after 10 days (1890 days ago).
        let m = mandate_at(s, &org, &aidant, &id("revoked"), NOW - 1900 * DAY, 366).await;
        s.revoke_mandate(&m, &Actor::Admin, NOW - 1890 * DAY)
            .await
            .unwrap();
        // Ended 100 days ago: kept.
        mandate_at(s, &org, &aidant, &id("recent"), NOW - 130 * DAY, 30).await;
        // Still active: kept.
        mandate_at(s, &org, &aidant, &id("active"), NOW - DAY, 30).await;
        // One old mandate, one still active: kept.
        mandate_at(s, &org, &aidant, &id("mixed"), long_ago, 30).await;
        mandate_at(s, &org, &aidant, &id("mixed"), NOW - DAY, 30).await;
        let journal_before = s.journal_page(0, 1000).await.unwrap();
        let refused = s.purge_usagers(0, &Actor::Admin, NOW).await;
        assert!(
            matches!(refused, Err(MandateError::Invalid(_))),
            "{refused:?}"
        );

        let n = s.purge_usagers(1825, &Actor::Admin, NOW).await.unwrap();
        assert_eq!(n, 3, "{name}");
        for gone in ["old", "revoked", "none_old"] {
            let (key, claims) = s.usager(&id(gone)).await.unwrap().unwrap();
            assert_eq!(key, format!("purged:{}", id(gone)), "{name}: {gone}");
            assert_eq!(claims, None, "{name}: {gone}");
            assert_eq!(
                s.usager_by_identity_key(&format!("key-{gone}"))
                    .await
                    .unwrap(),
                None
            );
            assert_eq!(s.usager_purged_at(&id(gone)).await.unwrap(), Some(NOW));
        }
        for kept in ["recent", "active", "mixed", "none_new"] {
            let (key, claims) = s.usager(&id(kept)).await.unwrap().unwrap();
            assert_eq!(key, format!("key-{kept}"), "{name}: {kept}");
            assert!(claims.unwrap().contains(kept));
            assert_eq!(s.usager_purged_at(&id(kept)).await.unwrap(), None);
        }
        // The mandates stay, under the usager's random id only.
        assert_eq!(s.usager_mandates(&id("revoked")).await.unwrap().len(), 1);
        // The journal is untouched (only one entry added) and verifies.
        let after = s.journal_page(0, 1000).await.unwrap();
        assert_eq!(after[..journal_before.len()], journal_before[..]);
        assert_eq!(after.len(), journal_before.len() + 1);
        let entry = after.last().unwrap();
        assert_eq!(
            (entry.kind.as_str(), entry.actor.as_str()),
            ("usagers.purged", "admin:cli")
        );
        let data: Value = serde_json::from_str(&entry.data).unwrap();
        assert_eq!(
            (data["usagers"].as_i64(), data["mandates"].as_i64()),
            (Some(3), Some(2))
        );
        assert_eq!(data["retention_days"], 1825);
        assert!(!entry.data.contains("key-"), "counts only: {}", entry.data);
        assert_eq!(journal::verify(s).await.unwrap(), after.len() as u64);
        // Nothing left to purge; a shorter period takes the recent one too.
        assert_eq!(s.purge_usagers(1825, &Actor::Admin, NOW).await.unwrap(), 0);
        assert_eq!(s.purge_usagers(90, &Actor::Admin, NOW).await.unwrap(), 1);
        assert_eq!(s.usager(&id("recent")).await.unwrap().unwrap().1, None);
        // The same person coming back is a new usager.
        let again = s.upsert_usager("key-old", &salt(), NOW).await.unwrap();
        assert_ne!(again, id("old"));
        journal::verify(s).await.unwrap();
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deactivated_organisation_authorises_nothing() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let (org, aidant, _) = org_and_aidant(s, "a@mairie.fr").await;
        let u = s.upsert_usager("key-u", &salt(), NOW).await.unwrap();
        let m = mandate_at(s, &org, &aidant, &u, NOW, 30).await;
        assert!(s.active_authorisation(&m, "social", NOW + 1).await.unwrap());
        assert!(s
            .set_organisation_active(&org, false, &Actor::Admin, NOW + 2)
            .await
            .unwrap());
        assert!(!s
            .set_organisation_active(&org, false, &Actor::Admin, NOW + 2)
            .await
            .unwrap());
        assert!(!s.organisation(&org).await.unwrap().unwrap().active);
        assert!(!s.active_authorisation(&m, "social", NOW + 3).await.unwrap());
        let r = s
            .create_mandate(
                &NewMandate {
                    org_id: &org,
                    usager_id: &u,
                    aidant_id: &aidant,
                    domains: &["papiers"],
                    duration_days: 30,
                    consent_version: "v1",
                    consent_hash: "abc",
                },
                &default_domains(),
                NOW + 3,
            )
            .await;
        assert!(
            matches!(r, Err(MandateError::Invalid(ref m)) if m.contains("not active")),
            "{r:?}"
        );
        assert!(matches!(
            s.set_organisation_active("nope", false, &Actor::Admin, NOW)
                .await,
            Err(MandateError::NotFound(_))
        ));
        assert!(s
            .set_organisation_active(&org, true, &Actor::Admin, NOW + 4)
            .await
            .unwrap());
        assert!(s.active_authorisation(&m, "social", NOW + 5).await.unwrap());
        let kinds: Vec<String> = s
            .journal_page(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .filter(|k| k.starts_with("organisation."))
            .collect();
        assert_eq!(
            kinds,
            [
                "organisation.created",
                "organisation.deactivated",
                "organisation.activated"
            ]
        );
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn journal_head_signed_when_due() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let name = d.name();
        let dir = d.dir.join("keys-citizen");
        keys::generate(&dir, Alg::ES256, None).unwrap();
        let set = Arc::new(KeySet::load(&dir).unwrap());
        let key = set.signer(Alg::ES256).unwrap();
        const HOUR: i64 = 3600;
        // Empty journal: nothing to sign.
        assert_eq!(
            journal::sign_head_if_due(s, key, NOW, HOUR).await.unwrap(),
            None
        );
        let (_, _, _) = org_and_aidant(s, "a@mairie.fr").await;
        // No head yet: signed at once.
        let first = journal::sign_head_if_due(s, key, NOW + 10, HOUR)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            Some((first.seq, first.hash.clone())),
            s.journal_last().await.unwrap()
        );
        // Not grown: nothing, however late.
        assert_eq!(
            journal::sign_head_if_due(s, key, NOW + 10 * HOUR, HOUR)
                .await
                .unwrap(),
            None
        );
        // Grown, but the last head is recent: nothing yet.
        s.upsert_usager("key-u", &salt(), NOW + 20).await.unwrap();
        assert_eq!(
            journal::sign_head_if_due(s, key, NOW + 10 + HOUR - 1, HOUR)
                .await
                .unwrap(),
            None
        );
        // Grown and due.
        let second = journal::sign_head_if_due(s, key, NOW + 10 + HOUR, HOUR)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.seq, first.seq + 1, "{name}");
        assert_eq!(second.at, NOW + 10 + HOUR);
        assert_eq!(
            journal::sign_head_if_due(s, key, NOW + 20 * HOUR, HOUR)
                .await
                .unwrap(),
            None
        );
        assert_eq!(s.journal_heads().await.unwrap().len(), 2);
        let r = journal::verify_with_keys(s, &trusting(key)).await.unwrap();
        assert_eq!(
            (r.heads, r.signatures_verified, r.unsigned_tail()),
            (2, 2, 0),
            "{name}"
        );
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deployment_domain_list_bounds_mandates() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let (org, aidant, _) = org_and_aidant(s, "a@mairie.fr").await;
        let u = s.upsert_usager("key-u", &salt(), NOW).await.unwrap();
        let deployment: Vec<String> = vec!["impots".into(), "social".into()];
        fn with<'a>(
            domains: &'a [&'a str],
            org_id: &'a str,
            usager_id: &'a str,
            aidant_id: &'a str,
        ) -> NewMandate<'a> {
            NewMandate {
                org_id,
                usager_id,
                aidant_id,
                domains,
                duration_days: 30,
                consent_version: "v1",
                consent_hash: "abc",
            }
        }
        // An organisation without a list of its own gets the deployment's.
        let o = s.organisation(&org).await.unwrap().unwrap();
        assert_eq!(o.allowed_domains(&deployment), deployment);
        s.create_mandate(&with(&["impots"], &org, &u, &aidant), &deployment, NOW)
            .await
            .unwrap();
        let r = s
            .create_mandate(&with(&["papiers"], &org, &u, &aidant), &deployment, NOW)
            .await;
        assert!(
            matches!(r, Err(MandateError::Invalid(ref m)) if m.contains("papiers")),
            "{r:?}"
        );
        // An organisation's own list only counts within the deployment's.
        let b = s
            .create_organisation(
                "B",
                SIRET_B,
                &["social".into(), "papiers".into()],
                &Actor::Admin,
                NOW,
            )
            .await
            .unwrap();
        assert_eq!(b.allowed_domains(&deployment), ["social"]);
        s.add_aidant_to_org(&aidant, &b.id, Role::Aidant, &Actor::Admin, NOW)
            .await
            .unwrap();
        let r = s
            .create_mandate(&with(&["papiers"], &b.id, &u, &aidant), &deployment, NOW)
            .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{r:?}");
        s.create_mandate(
            &with(&["papiers"], &b.id, &u, &aidant),
            &default_domains(),
            NOW,
        )
        .await
        .unwrap();
        d.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_signs_journal_heads_periodically() {
    for db in databases() {
        let heads_file = temp_dir("heads").with_extension("jsonl");
        let env = Env::start_with(
            db,
            String::new(),
            vec![
                (
                    "RELAIS__AIDANTS__JOURNAL_HEAD_INTERVAL_SECS".into(),
                    "1".into(),
                ),
                (
                    "RELAIS__AIDANTS__JOURNAL_HEADS_FILE".into(),
                    heads_file.display().to_string(),
                ),
            ],
            false,
        )
        .await;
        let state = &env.stack.state;
        let s = &state.store;
        journal::append(
            s,
            Event {
                kind: "test.entry",
                actor: "admin:cli",
                org_id: None,
                data: json!({}),
                personal: vec![],
            },
            &salt(),
            state.now(),
        )
        .await
        .unwrap();
        let (last, _) = s.journal_last().await.unwrap().unwrap();
        let mut signed = false;
        for _ in 0..100 {
            if s.journal_heads()
                .await
                .unwrap()
                .iter()
                .any(|h| h.seq == last)
            {
                signed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(signed, "no head signed for entry {last}");
        // Signed with the journal key, and appended to the heads file.
        let keys_dir = state.federations[0]
            .keys
            .dir()
            .parent()
            .unwrap()
            .to_path_buf();
        let keys = journal_key::trusted_keys(&keys_dir, &[]).unwrap();
        let r = journal::verify_with_keys(s, &keys).await.unwrap();
        assert!(
            r.signatures_verified >= 1 && r.unsigned_tail() == 0,
            "{r:?}"
        );
        let file = std::fs::read_to_string(&heads_file).unwrap();
        let external = journal::parse_heads(&file, &keys).unwrap();
        assert!(external.iter().any(|h| h.seq == last), "{file}");
        let r = journal::verify_against(s, &keys, &external).await.unwrap();
        assert_eq!((r.last_external, r.external_tail()), (last, 0));
        // Not grown: no new head at the next intervals.
        let heads = s.journal_heads().await.unwrap().len();
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert_eq!(s.journal_heads().await.unwrap().len(), heads);
        assert_eq!(
            std::fs::read_to_string(&heads_file)
                .unwrap()
                .lines()
                .count(),
            heads,
            "one line per head"
        );
        let _ = std::fs::remove_file(&heads_file);
        env.cleanup().await;
    }
}

/// `relais serve` runs the retention purge by itself every
/// `purge_usagers_interval_secs`: an usager whose mandates all ended more
/// than `retention_days` ago loses their personal data, journalled by
/// `system:serve`, and the journal still verifies.
#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_the_retention_purge() {
    for db in databases() {
        let env = Env::start_with(
            db,
            String::new(),
            vec![
                (
                    "RELAIS__AIDANTS__PURGE_USAGERS_INTERVAL_SECS".into(),
                    "1".into(),
                ),
                ("RELAIS__AIDANTS__RETENTION_DAYS".into(), "1".into()),
            ],
            false,
        )
        .await;
        let state = &env.stack.state;
        let s = &state.store;
        let now = state.now();
        let (org, aidant, _) = org_and_aidant(s, "p@mairie.fr").await;
        let old = s
            .upsert_usager("key-old-enough", &salt(), now - 10 * DAY)
            .await
            .unwrap();
        s.set_usager_claims(&old, &json!({"given_name": "old"}).to_string())
            .await
            .unwrap();
        // One day of mandate, ended nine days ago.
        mandate_at(s, &org, &aidant, &old, now - 10 * DAY, 1).await;
        let recent = s
            .upsert_usager("key-still-active", &salt(), now - 10 * DAY)
            .await
            .unwrap();
        mandate_at(s, &org, &aidant, &recent, now - DAY, 30).await;
        let mut purged = None;
        for _ in 0..100 {
            purged = s.usager_purged_at(&old).await.unwrap();
            if purged.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(purged.is_some(), "the old usager was not purged");
        assert_eq!(s.usager_purged_at(&recent).await.unwrap(), None);
        let entries = s.journal_page(0, 10_000).await.unwrap();
        assert!(
            entries
                .iter()
                .any(|e| e.kind == "usagers.purged" && e.actor == "system:serve"),
            "purge journalled by the server"
        );
        let keys_dir = state.federations[0]
            .keys
            .dir()
            .parent()
            .unwrap()
            .to_path_buf();
        let keys = journal_key::trusted_keys(&keys_dir, &[]).unwrap();
        journal::verify_with_keys(s, &keys).await.unwrap();
        env.cleanup().await;
    }
}

/// Every page of the enrolment flow is neither cached nor sent as a referrer.
fn private_page(r: &reqwest::Response) {
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
}

/// A form post to an enrolment link.
async fn enrolment_step(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    http.post(url).form(form).send().await.unwrap()
}

/// The text of the element `id` of a page (up to the next tag).
fn element_text(html: &str, id: &str) -> Option<String> {
    let rest = html.split(&format!("id=\"{id}\">")).nth(1)?;
    Some(rest.split('<').next()?.to_string())
}

/// The value of the hidden field `name` of a page.
fn hidden_value(html: &str, name: &str) -> Option<String> {
    let rest = html.split(&format!("name=\"{name}\" value=\"")).nth(1)?;
    Some(rest.split('"').next()?.to_string())
}

/// Through the enrolment link's password step: the pending secret shown.
async fn enrolment_secret(http: &reqwest::Client, url: &str) -> String {
    let r = enrolment_step(http, url, &[("step", "password"), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 200);
    element_text(&r.text().await.unwrap(), "totp-secret").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn totp_enrolment_link_shows_qr_code_and_needs_confirmation() {
    for db in databases() {
        let env = Env::start(db).await;
        let state = &env.stack.state;
        let s = &state.store;
        let key = TotpKey::beside(&state.journal_salt_path).unwrap();
        let now = state.now();
        let email = "enrol@mairie.fr";
        let org = s
            .create_organisation("France Services", SIRET_A, &[], &Actor::Admin, now)
            .await
            .unwrap();
        let created = s
            .create_aidant(
                &NewAidant {
                    email,
                    name: "Enrolée",
                    password: PASSWORD,
                    org_id: &org.id,
                    role: Role::Aidant,
                },
                &Actor::Admin,
                &salt(),
                &key,
                now,
            )
            .await
            .unwrap();
        let e = s
            .issue_enrolment(email, &Actor::Admin, &key, now)
            .await
            .unwrap();
        assert_eq!(e.expires_at, now + 72 * 3600);
        let url = format!("{}/aidant/enrolment/{}", env.broker(), e.token);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let failures = || async {
            s.aidant_by_email(email)
                .await
                .unwrap()
                .unwrap()
                .failed_attempts
        };
        // The link alone shows the e-mail and a password field, no secret.
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        private_page(&r);
        let get_html = r.text().await.unwrap();
        assert!(get_html.contains(email) && get_html.contains("name=\"password\""));
        for hidden in ["otpauth://", "<svg", "totp-secret", "name=\"proof\""] {
            assert!(!get_html.contains(hidden), "{hidden}: {get_html}");
        }
        // A wrong password: the password form again, 401, no secret, and it
        // counts like a sign-in failure.
        assert_eq!(failures().await, 0);
        let r = enrolment_step(
            &http,
            &url,
            &[("step", "password"), ("password", "wrong password!!")],
        )
        .await;
        assert_eq!(r.status(), 401);
        private_page(&r);
        let html = r.text().await.unwrap();
        assert!(html.contains("enrolment-error") && html.contains("name=\"password\""));
        for hidden in ["otpauth://", "<svg", "totp-secret", "name=\"proof\""] {
            assert!(!html.contains(hidden), "{hidden}: {html}");
        }
        assert_eq!(failures().await, 1);
        // The right password: the secret (QR code, URI, key) and a proof.
        let r = enrolment_step(&http, &url, &[("step", "password"), ("password", PASSWORD)]).await;
        assert_eq!(r.status(), 200);
        private_page(&r);
        let html = r.text().await.unwrap();
        assert!(html.contains("<svg") && html.contains("</svg>"), "{html}");
        let secret = element_text(&html, "totp-secret").unwrap();
        assert!(totp::base32_decode(&secret).is_some_and(|k| k.len() == 20));
        assert!(
            unescape(&html).contains(&format!("otpauth://totp/Relais:{email}?secret={secret}&")),
            "{html}"
        );
        let proof = hidden_value(&html, "proof").unwrap();
        assert!(!get_html.contains(&secret), "secret shown by GET");
        // Until confirmed, neither the old secret nor the new one signs in.
        state.clock.advance(30);
        let t = state.now();
        for sec in [&created.totp_secret, &secret] {
            let r = s
                .verify_password_and_totp(email, PASSWORD, &totp::code_at(sec, t).unwrap(), &key, t)
                .await;
            refused(r, "before confirmation");
        }
        // A missing, forged, tampered, foreign-key or expired proof: back to
        // the password form (401), no secret, nothing changes.
        let code = totp::code_at(&secret, t).unwrap();
        let tag = proof.split_once('.').unwrap().1.to_string();
        let other_key = TotpKey::new(&[9u8; 32]).unwrap();
        let bad_proofs = [
            String::new(),
            "garbage".to_string(),
            format!("{t}.{tag}"),
            enrolment::sign_proof(&other_key, &e.token, &created.id, t),
            enrolment::sign_proof(&key, &e.token, "another-aidant", t),
            enrolment::sign_proof(&key, "another-token", &created.id, t),
            enrolment::sign_proof(&key, &e.token, &created.id, t - enrolment::PROOF_TTL_SECS),
        ];
        for bad in &bad_proofs {
            let r = enrolment_step(
                &http,
                &url,
                &[("step", "code"), ("proof", bad), ("totp", &code)],
            )
            .await;
            assert_eq!(r.status(), 401, "{bad}");
            private_page(&r);
            let html = r.text().await.unwrap();
            assert!(html.contains("enrolment-expired") && html.contains("name=\"password\""));
            assert!(
                !html.contains(&secret) && !html.contains("otpauth://"),
                "{bad}: {html}"
            );
        }
        // A proof signed with the server's key for this link and aidant,
        // still fresh, is accepted (the key is derived from `totp-key`).
        assert!(enrolment::check_proof(
            &state.totp_key,
            &proof,
            &e.token,
            &created.id,
            t
        ));
        // A wrong code: the code form again, 401, nothing changes.
        let r = enrolment_step(
            &http,
            &url,
            &[
                ("step", "code"),
                ("proof", &proof),
                ("totp", &wrong_code(&secret, t)),
            ],
        )
        .await;
        assert_eq!(r.status(), 401);
        private_page(&r);
        assert!(r.text().await.unwrap().contains("enrolment-error"));
        // The proof and a first code: enrolled.
        let r = enrolment_step(
            &http,
            &url,
            &[("step", "code"), ("proof", &proof), ("totp", &code)],
        )
        .await;
        assert_eq!(r.status(), 200);
        private_page(&r);
        assert!(r.text().await.unwrap().contains("enrolment-done"));
        assert_eq!(failures().await, 0);
        // The link works once.
        assert_eq!(http.get(&url).send().await.unwrap().status(), 404);
        let r = enrolment_step(
            &http,
            &url,
            &[("step", "code"), ("proof", &proof), ("totp", &code)],
        )
        .await;
        assert_eq!(r.status(), 404);
        let r = enrolment_step(&http, &url, &[("step", "password"), ("password", PASSWORD)]).await;
        assert_eq!(r.status(), 404);
        // The code used to confirm is consumed; the next one signs in.
        let r = s
            .verify_password_and_totp(
                email,
                PASSWORD,
                &totp::code_at(&secret, t).unwrap(),
                &key,
                t,
            )
            .await;
        refused(r, "confirmation code replayed");
        state.clock.advance(30);
        let t = state.now();
        s.verify_password_and_totp(
            email,
            PASSWORD,
            &totp::code_at(&secret, t).unwrap(),
            &key,
            t,
        )
        .await
        .unwrap();
        // The database holds the token's hash only.
        let count = |sql: String| async move {
            let n: i64 = match s.backend() {
                Backend::Sqlite(p) => sqlx::query_scalar(&sql).fetch_one(p).await.unwrap(),
                Backend::Postgres(p) => sqlx::query_scalar(&sql).fetch_one(p).await.unwrap(),
            };
            n
        };
        let q =
            |v: &str| format!("SELECT COUNT(*) FROM aidant_enrolments WHERE token_hash = '{v}'");
        assert_eq!(count(q(&sha(&e.token))).await, 1);
        assert_eq!(count(q(&e.token)).await, 0);
        let kinds: Vec<String> = s
            .journal_page(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&"aidant.enrolment_issued".to_string()));
        assert!(kinds.contains(&"aidant.totp_enrolled".to_string()));
        // A link expires after 72 hours; a newer link replaces an older one.
        let old = s
            .issue_enrolment(email, &Actor::Admin, &key, t)
            .await
            .unwrap();
        let newer = s
            .issue_enrolment(email, &Actor::Admin, &key, t)
            .await
            .unwrap();
        let link = |tok: &str| format!("{}/aidant/enrolment/{tok}", env.broker());
        assert_eq!(
            http.get(link(&old.token)).send().await.unwrap().status(),
            404
        );
        assert_eq!(
            http.get(link(&newer.token)).send().await.unwrap().status(),
            200
        );
        state.clock.advance(72 * 3600 + 1);
        assert_eq!(
            http.get(link(&newer.token)).send().await.unwrap().status(),
            404
        );
        assert_eq!(
            http.get(link("not-a-token")).send().await.unwrap().status(),
            404
        );
        env.cleanup().await;
    }
}

/// Review fix: a purged usager cannot get a new mandate (refused inside
/// `create_mandate`'s transaction), and the same person coming back gets a
/// fresh, usable usager (a `purged:` key names no one).
#[tokio::test(flavor = "multi_thread")]
async fn purged_usager_refused_and_returning_person_is_new() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let name = d.name();
        let (org, aidant, _) = org_and_aidant(s, "a@mairie.fr").await;
        let long_ago = NOW - 2000 * DAY;
        let old = s
            .upsert_usager("key-back", &salt(), long_ago)
            .await
            .unwrap();
        mandate_at(s, &org, &aidant, &old, long_ago, 30).await;
        assert_eq!(s.purge_usagers(1825, &Actor::Admin, NOW).await.unwrap(), 1);
        let refused = s
            .create_mandate(
                &NewMandate {
                    org_id: &org,
                    usager_id: &old,
                    aidant_id: &aidant,
                    domains: &["social"],
                    duration_days: 30,
                    consent_version: "v1",
                    consent_hash: "abc",
                },
                &default_domains(),
                NOW,
            )
            .await;
        assert!(
            matches!(refused, Err(MandateError::Invalid(ref m)) if m.contains("purged")),
            "{name}: {refused:?}"
        );
        assert_eq!(s.usager_mandates(&old).await.unwrap().len(), 1, "{name}");
        // A `purged:` key is not an identity.
        let r = s
            .upsert_usager(&format!("purged:{old}"), &salt(), NOW)
            .await;
        assert!(matches!(r, Err(MandateError::Invalid(_))), "{name}: {r:?}");
        // The person comes back: a new usager, not purged, usable.
        let again = s.upsert_usager("key-back", &salt(), NOW).await.unwrap();
        assert_ne!(again, old, "{name}");
        assert_eq!(s.usager_purged_at(&again).await.unwrap(), None);
        assert_eq!(
            s.upsert_usager("key-back", &salt(), NOW + 1).await.unwrap(),
            again,
            "{name}: then found again"
        );
        let m = mandate_at(s, &org, &aidant, &again, NOW, 30).await;
        assert!(s.active_authorisation(&m, "social", NOW + 1).await.unwrap());
        journal::verify(s).await.unwrap();
        d.close().await;
    }
}

/// Review fix: a sign-in whose step-consuming update comes after a TOTP
/// reset (it read the old secret before) fails: the update requires the
/// secret it checked the code against.
#[tokio::test(flavor = "multi_thread")]
async fn sign_in_overlapping_totp_reset_fails() {
    for db in databases() {
        let d = open(&db, 4).await;
        let name = d.name();
        let (_, aidant, secret) = org_and_aidant(&d.store, "r@mairie.fr").await;
        let t = NOW + 60;
        let code = totp::code_at(&secret, t).unwrap();
        let other = totp::generate_secret().unwrap();
        let sealed_other = key().seal(&aidant, &other).unwrap();
        let spawn_sign_in = || {
            let s = d.store.clone();
            let code = code.clone();
            tokio::spawn(async move {
                s.verify_password_and_totp("r@mairie.fr", PASSWORD, &code, &key(), t)
                    .await
            })
        };
        // A reset in progress holds the write lock while the sign-in reads
        // the old secret and checks the code; the reset commits first.
        let update = "UPDATE aidants SET totp_secret = $1 WHERE id = $2";
        let pause = std::time::Duration::from_millis(1500);
        let result = match d.store.backend() {
            Backend::Sqlite(p) => {
                let mut tx = p.begin_with("BEGIN IMMEDIATE").await.unwrap();
                let h = spawn_sign_in();
                tokio::time::sleep(pause).await;
                sqlx::query(update)
                    .bind(&sealed_other)
                    .bind(&aidant)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                h.await.unwrap()
            }
            Backend::Postgres(p) => {
                let mut tx = p.begin().await.unwrap();
                sqlx::query("LOCK TABLE journal IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let h = spawn_sign_in();
                tokio::time::sleep(pause).await;
                sqlx::query(update)
                    .bind(&sealed_other)
                    .bind(&aidant)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                h.await.unwrap()
            }
        };
        refused(result, &format!("{name}: sign-in overlapping a reset"));
        let a = d
            .store
            .aidant_by_email("r@mairie.fr")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.totp_last_step, 0, "{name}: no step consumed");
        // The new secret signs in.
        d.store
            .verify_password_and_totp(
                "r@mairie.fr",
                PASSWORD,
                &totp::code_at(&other, t + 30).unwrap(),
                &key(),
                t + 30,
            )
            .await
            .unwrap();
        d.close().await;
    }
}

/// Review fix: a locked account costs the same argon2 run as an unknown
/// e-mail (the refusals look alike, in time too).
#[tokio::test(flavor = "multi_thread")]
async fn locked_account_refusal_costs_an_argon2_run() {
    for db in databases() {
        let d = open(&db, 4).await;
        let s = &d.store;
        let name = d.name();
        let (_, _, secret) = org_and_aidant(s, "l@mairie.fr").await;
        for i in 0..5 {
            let t = NOW + i;
            refused(
                s.verify_password_and_totp(
                    "l@mairie.fr",
                    "wrong password!!",
                    &totp::code_at(&secret, t).unwrap(),
                    &key(),
                    t,
                )
                .await,
                "wrong password",
            );
        }
        let t = NOW + 100;
        let a = s.aidant_by_email("l@mairie.fr").await.unwrap().unwrap();
        assert!(a.locked_until > t, "{name}: locked");
        // Counted, not timed (a timing comparison flakes on a loaded
        // machine): each refusal runs argon2 exactly once, through the gate,
        // like a wrong password.
        let gate = s.argon2_gate();
        for i in 0..3 {
            let code = totp::code_at(&secret, t + 30 * i).unwrap();
            let before = gate.runs();
            refused(
                s.verify_password_and_totp("nobody@mairie.fr", PASSWORD, &code, &key(), t)
                    .await,
                "unknown",
            );
            let unknown = gate.runs() - before;
            let before = gate.runs();
            refused(
                s.verify_password_and_totp("l@mairie.fr", PASSWORD, &code, &key(), t)
                    .await,
                "locked",
            );
            let locked = gate.runs() - before;
            assert_eq!(
                unknown, 1,
                "{name}: an unknown account costs one argon2 run"
            );
            assert_eq!(locked, unknown, "{name}: a locked account costs the same");
        }
        d.close().await;
    }
}

/// Review fixes: a TOTP reset (random or demo secret) cancels the aidant's
/// unused enrolment links in the same transaction, so a link issued before
/// cannot replace the new secret; the server loaded (created) its TOTP key
/// at start, before any sign-in.
#[tokio::test(flavor = "multi_thread")]
async fn totp_reset_cancels_enrolment_links() {
    for db in databases() {
        let env = Env::start(db).await;
        let state = &env.stack.state;
        let s = &state.store;
        let key_file = state.journal_salt_path.with_file_name("totp-key");
        assert!(key_file.exists(), "created at start");
        let key = TotpKey::beside(&state.journal_salt_path).unwrap();
        let sealed = state.totp_key.seal("x", "JBSWY3DPEHPK3PXP").unwrap();
        assert_eq!(key.open("x", &sealed).unwrap().secret(), "JBSWY3DPEHPK3PXP");
        let now = state.now();
        let email = "reset@mairie.fr";
        let org = s
            .create_organisation("France Services", SIRET_A, &[], &Actor::Admin, now)
            .await
            .unwrap();
        let aidant_id = s
            .create_aidant(
                &NewAidant {
                    email,
                    name: "Remise",
                    password: PASSWORD,
                    org_id: &org.id,
                    role: Role::Aidant,
                },
                &Actor::Admin,
                &salt(),
                &key,
                now,
            )
            .await
            .unwrap()
            .id;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for demo in [false, true] {
            let t = state.now();
            let e = s
                .issue_enrolment(email, &Actor::Admin, &key, t)
                .await
                .unwrap();
            let url = format!("{}/aidant/enrolment/{}", env.broker(), e.token);
            let r = http.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let pending = enrolment_secret(&http, &url).await;
            let proof = enrolment::sign_proof(&key, &e.token, &aidant_id, t);
            let new_secret = if demo {
                let fixed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
                s.set_totp_secret(email, fixed, &Actor::Admin, &key, t)
                    .await
                    .unwrap();
                fixed.to_string()
            } else {
                s.reset_totp(email, &Actor::Admin, &key, t)
                    .await
                    .unwrap()
                    .totp_secret
            };
            // The link no longer works: neither the page nor confirming it.
            assert_eq!(http.get(&url).send().await.unwrap().status(), 404);
            state.clock.advance(30);
            let t = state.now();
            let r = http
                .post(&url)
                .form(&[
                    ("step", "code"),
                    ("proof", proof.as_str()),
                    ("totp", totp::code_at(&pending, t).unwrap().as_str()),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "demo={demo}");
            let r =
                enrolment_step(&http, &url, &[("step", "password"), ("password", PASSWORD)]).await;
            assert_eq!(r.status(), 404, "demo={demo}");
            // The secret set by the reset stays the aidant's.
            refused(
                s.verify_password_and_totp(
                    email,
                    PASSWORD,
                    &totp::code_at(&pending, t).unwrap(),
                    &key,
                    t,
                )
                .await,
                "pending secret of the cancelled link",
            );
            s.verify_password_and_totp(
                email,
                PASSWORD,
                &totp::code_at(&new_secret, t).unwrap(),
                &key,
                t,
            )
            .await
            .unwrap();
            state.clock.advance(30);
        }
        env.cleanup().await;
    }
}
