//! The store on SQLite and PostgreSQL: the same behaviour on both.

use relais::store::{Kind, Redeem, Store};
use relais_testkit::*;

async fn open(db: &Option<String>) -> (Store, Option<(String, String)>, std::path::PathBuf) {
    let dir = temp_dir("store");
    std::fs::create_dir_all(&dir).unwrap();
    let (url, schema) = match db {
        Some(u) => {
            let s = format!("t_{}", random(10));
            (format!("{u}#schema={s}"), Some((u.clone(), s)))
        }
        None => (format!("sqlite://{}", dir.join("t.db").display()), None),
    };
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    // Migrations are idempotent.
    store.migrate().await.unwrap();
    (store, schema, dir)
}

async fn close(schema: Option<(String, String)>, dir: std::path::PathBuf) {
    if let Some((url, s)) = schema {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA \"{s}\" CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_rows_codes_tokens_jti_registry_and_purge() {
    for db in databases() {
        let (s, schema, dir) = open(&db).await;
        let backend = if s.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        };
        assert_eq!(backend == "postgres", db.is_some());
        let now = 1_000_000;
        // put / get / update / take / federation isolation / expiry
        s.put(Kind::Interaction, "i1", "citizen", "{\"a\":1}", now + 10)
            .await
            .unwrap();
        assert_eq!(
            s.get(Kind::Interaction, "i1", "citizen", now)
                .await
                .unwrap()
                .as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(
            s.get(Kind::Interaction, "i1", "agent", now).await.unwrap(),
            None,
            "{backend}: federations are isolated"
        );
        assert_eq!(
            s.get(Kind::Interaction, "i1", "citizen", now + 10)
                .await
                .unwrap(),
            None,
            "{backend}: expired"
        );
        assert!(s
            .update(Kind::Interaction, "i1", "citizen", "{\"a\":2}", now + 20)
            .await
            .unwrap());
        assert!(!s
            .update(Kind::Interaction, "nope", "citizen", "{}", now + 20)
            .await
            .unwrap());
        assert_eq!(
            s.take(Kind::Interaction, "i1", "citizen", now)
                .await
                .unwrap()
                .as_deref(),
            Some("{\"a\":2}")
        );
        assert_eq!(
            s.take(Kind::Interaction, "i1", "citizen", now)
                .await
                .unwrap(),
            None,
            "{backend}: single use"
        );
        s.put(Kind::Logout, "u1", "citizen", "x", now - 1)
            .await
            .unwrap();
        assert_eq!(
            s.take(Kind::Logout, "u1", "citizen", now).await.unwrap(),
            None,
            "{backend}: expired take"
        );

        // codes: single use; reuse revokes the grant's tokens
        s.insert_code("c1", "citizen", "svc", "g1", "{}", now + 60)
            .await
            .unwrap();
        assert!(matches!(
            s.redeem_code("c1", "agent", now).await.unwrap(),
            Redeem::Unknown
        ));
        match s.redeem_code("c1", "citizen", now).await.unwrap() {
            Redeem::Fresh {
                client_id,
                grant_id,
                ..
            } => assert_eq!((client_id.as_str(), grant_id.as_str()), ("svc", "g1")),
            other => panic!("{backend}: {other:?}"),
        }
        s.insert_token("t1", "citizen", "svc", "g1", "sess", "{\"k\":1}", now + 60)
            .await
            .unwrap();
        assert!(s.get_token("t1", "citizen", now).await.unwrap().is_some());
        assert!(s.get_token("t1", "agent", now).await.unwrap().is_none());
        assert!(matches!(
            s.redeem_code("c1", "citizen", now).await.unwrap(),
            Redeem::Reused { .. }
        ));
        assert!(
            s.get_token("t1", "citizen", now).await.unwrap().is_none(),
            "{backend}: revoked"
        );
        s.insert_code("c2", "citizen", "svc", "g2", "{}", now + 60)
            .await
            .unwrap();
        assert!(
            matches!(
                s.redeem_code("c2", "citizen", now + 60).await.unwrap(),
                Redeem::Unknown
            ),
            "{backend}: expired code"
        );
        // Concurrent redemption: exactly one wins.
        s.insert_code("c3", "citizen", "svc", "g3", "{}", now + 60)
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            s.redeem_code("c3", "citizen", now),
            s.redeem_code("c3", "citizen", now)
        );
        let fresh = [a.unwrap(), b.unwrap()]
            .iter()
            .filter(|r| matches!(r, Redeem::Fresh { .. }))
            .count();
        assert_eq!(fresh, 1, "{backend}: a code is redeemed once");

        // jti replay
        assert!(s
            .record_jti("citizen", "svc", "j1", now + 60)
            .await
            .unwrap());
        assert!(!s
            .record_jti("citizen", "svc", "j1", now + 60)
            .await
            .unwrap());
        assert!(s
            .record_jti("citizen", "other", "j1", now + 60)
            .await
            .unwrap());

        // consents and registry
        s.record_consent("k1", "citizen", "svc", "sub", "openid", now)
            .await
            .unwrap();
        assert_eq!(s.count_consents("citizen", "svc").await.unwrap(), 1);
        s.registry_put(&[("key".into(), "look".into(), "v1".into())])
            .await
            .unwrap();
        s.registry_put(&[
            ("key".into(), "look".into(), "v2".into()),
            ("key2".into(), "look".into(), "v3".into()),
        ])
        .await
        .unwrap();
        assert_eq!(s.registry_get("key").await.unwrap().as_deref(), Some("v2"));
        assert_eq!(s.registry_similar("look").await.unwrap().len(), 2);

        // purge
        s.put(Kind::Session, "old", "citizen", "{}", now - 5)
            .await
            .unwrap();
        s.put(Kind::Session, "new", "citizen", "{}", now + 500)
            .await
            .unwrap();
        s.put(Kind::Logout, "old", "citizen", "{}", now - 1)
            .await
            .unwrap();
        let purged = s.purge_expired(now).await.unwrap();
        assert_eq!(purged, 2, "{backend}: purged {purged}");
        assert!(
            s.take(Kind::Session, "old", "citizen", now - 10)
                .await
                .unwrap()
                .is_none(),
            "{backend}: row deleted"
        );
        assert!(s
            .get(Kind::Session, "new", "citizen", now)
            .await
            .unwrap()
            .is_some());
        // Codes stay a day past expiry so that a late replay still revokes.
        assert!(matches!(
            s.redeem_code("c1", "citizen", now).await.unwrap(),
            Redeem::Reused { .. }
        ));
        assert_eq!(
            s.purge_expired(now + 86_400 + 61).await.unwrap(),
            7,
            "{backend}: codes c1..c3, token t1, the new session and two jti rows"
        );
        s.ping().await.unwrap();
        close(schema, dir).await;
    }
}

/// `take_bound` only takes a live row whose data holds the binding, verbatim
/// (no pattern characters), and leaves any other row in place.
#[tokio::test(flavor = "multi_thread")]
async fn take_bound_matches_the_binding_only() {
    for db in databases() {
        let (s, schema, dir) = open(&db).await;
        let now = 1_000_000;
        let data = r#"{"csrf":"c","session":"abc_1"}"#;
        s.put(Kind::Interaction, "i1", "citizen", data, now + 10)
            .await
            .unwrap();
        for wrong in [
            r#""session":"abc_2""#,
            r#""session":"abc%""#,
            r#""session":"abc__""#,
            r#""session":"ABC_1""#,
        ] {
            assert_eq!(
                s.take_bound(Kind::Interaction, "i1", "citizen", wrong, now)
                    .await
                    .unwrap(),
                None,
                "{wrong}"
            );
        }
        let binding = r#""session":"abc_1""#;
        assert_eq!(
            s.take_bound(Kind::Interaction, "i1", "agent", binding, now)
                .await
                .unwrap(),
            None,
            "another federation"
        );
        assert_eq!(
            s.get(Kind::Interaction, "i1", "citizen", now)
                .await
                .unwrap()
                .as_deref(),
            Some(data),
            "nothing removed by a wrong binding"
        );
        assert_eq!(
            s.take_bound(Kind::Interaction, "i1", "citizen", binding, now)
                .await
                .unwrap(),
            Some((data.to_string(), now + 10))
        );
        assert_eq!(
            s.get(Kind::Interaction, "i1", "citizen", now)
                .await
                .unwrap(),
            None,
            "single use"
        );
        close(schema, dir).await;
    }
}
