//! Store tests, each run against SQLite and (when configured) PostgreSQL.

use super::builds::NewBuild;
use super::jobs::NewJob;
use super::queue::{LeaseRequest, Priority, Renewal};
use super::secrets::{MasterKeys, SecretScope};
use super::testdb::stores;
use super::{Store, StoreError};
use chengis_model::Status;
use std::collections::HashSet;
use std::time::Duration;

async fn job_with_build_jobs(store: &Store, name: &str, n: usize) -> Vec<i64> {
    let job = store
        .create_job(&NewJob {
            name: name.into(),
            repo_url: "file:///r".into(),
            default_branch: "main".into(),
            pipeline_path: None,
            submodules: false,
        })
        .await
        .unwrap();
    let build = store.create_build(job.id, &NewBuild { trigger: "manual".into(), ..Default::default() }).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(store.create_build_job(build.id, &format!("j{i}"), &serde_json::json!({})).await.unwrap());
    }
    ids
}

fn req<'a>(agent: &'a str, labels: &'a [String], capacity: usize) -> LeaseRequest<'a> {
    LeaseRequest {
        agent,
        labels,
        capacity,
        ttl: Duration::from_secs(30),
        max_attempts: 2,
        free: None,
        defer: None,
        registered_ms: None,
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_newer_databases_are_refused() {
    for (store, dir) in stores().await {
        store.migrate().await.unwrap();
        let checksum = match store.backend() {
            super::Backend::Sqlite => "X'00'",
            super::Backend::Postgres => "'\\x00'::bytea",
        };
        let sql = format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', TRUE, {checksum}, 0)"
        );
        sqlx::query(&sql).execute(store.pool()).await.unwrap();
        let err = store.migrate().await.unwrap_err();
        assert!(matches!(err, StoreError::TooNew { database: 9999, .. }), "{err}");
        assert!(err.to_string().contains("newer than this binary"));
        drop(dir);
    }
}

#[tokio::test]
async fn jobs_and_build_numbers() {
    for (store, _dir) in stores().await {
        let new = NewJob {
            name: "app".into(),
            repo_url: "file:///r".into(),
            default_branch: "main".into(),
            pipeline_path: None,
            submodules: false,
        };
        let job = store.create_job(&new).await.unwrap();
        assert!(matches!(store.create_job(&new).await, Err(StoreError::Conflict(_))));
        assert_eq!(store.job("app").await.unwrap(), job);
        assert_eq!(store.jobs().await.unwrap().len(), 1);
        let b1 = store.create_build(job.id, &NewBuild::default()).await.unwrap();
        let b2 = store.create_build(job.id, &NewBuild::default()).await.unwrap();
        assert_eq!((b1.number, b2.number), (1, 2));
        assert_eq!(store.build(b2.id).await.unwrap().status, Status::Queued);
        store.delete_job("app").await.unwrap();
        assert!(matches!(store.job("app").await, Err(StoreError::NotFound(_))));
        assert!(matches!(store.build(b1.id).await, Err(StoreError::NotFound(_))), "builds go with their job");
    }
}

#[tokio::test]
async fn status_changes_follow_the_state_machine() {
    for (store, _dir) in stores().await {
        let ids = job_with_build_jobs(&store, "sm", 1).await;
        store.transition_build_job(ids[0], Status::Running, None).await.unwrap();
        store.transition_build_job(ids[0], Status::Success, None).await.unwrap();
        let err = store.transition_build_job(ids[0], Status::Failure, None).await.unwrap_err();
        assert!(
            matches!(err, StoreError::IllegalTransition { from: Status::Success, to: Status::Failure, .. }),
            "{err}"
        );
        assert_eq!(store.build_job_status(ids[0]).await.unwrap(), Status::Success);
    }
}

#[tokio::test]
async fn queue_order_priority_aging_and_labels() {
    for (store, _dir) in stores().await {
        let ids = job_with_build_jobs(&store, "q", 4).await;
        store.enqueue(ids[0], Priority::Low, &[]).await.unwrap();
        store.enqueue(ids[1], Priority::Normal, &[]).await.unwrap();
        store.enqueue(ids[2], Priority::High, &["gpu".into()]).await.unwrap();
        store.enqueue(ids[3], Priority::High, &[]).await.unwrap();
        // Aging: the low job waited long enough to outrank everything newer.
        sqlx::query(
            "UPDATE queue SET rank_ms = rank_ms - 400000, enqueued_ms = enqueued_ms - 400000 WHERE build_job_id = $1",
        )
        .bind(ids[0])
        .execute(store.pool())
        .await
        .unwrap();
        let none: Vec<String> = Vec::new();
        let got = store.lease(&req("a", &none, 10)).await.unwrap();
        let order: Vec<i64> = got.iter().map(|l| l.build_job_id).collect();
        assert_eq!(order, [ids[0], ids[3], ids[1]], "the gpu job needs a gpu agent");
        let gpu = vec!["gpu".to_string(), "linux".to_string()];
        let got = store.lease(&req("b", &gpu, 10)).await.unwrap();
        assert_eq!(got.iter().map(|l| l.build_job_id).collect::<Vec<_>>(), [ids[2]]);
        assert_eq!(store.queue_depth().await.unwrap(), 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_leasers_never_share_a_job() {
    for (store, _dir) in stores().await {
        let ids = job_with_build_jobs(&store, "c", 40).await;
        for id in &ids {
            store.enqueue(*id, Priority::Normal, &[]).await.unwrap();
        }
        let mut tasks = Vec::new();
        for a in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let agent = format!("agent-{a}");
                let mut mine = Vec::new();
                loop {
                    let leases = store.lease(&req(&agent, &[], 2)).await.unwrap();
                    if leases.is_empty() {
                        break;
                    }
                    for l in leases {
                        store.complete(&l, Status::Success, None).await.unwrap();
                        mine.push(l.build_job_id);
                    }
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let unique: HashSet<i64> = all.iter().copied().collect();
        assert_eq!(all.len(), 40, "every job leased exactly once");
        assert_eq!(unique.len(), 40);
        assert_eq!(store.queue_depth().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn expired_leases_are_fenced_and_retried_then_errored() {
    for (store, _dir) in stores().await {
        let ids = job_with_build_jobs(&store, "f", 1).await;
        store.enqueue(ids[0], Priority::Normal, &[]).await.unwrap();
        let short = LeaseRequest { ttl: Duration::from_millis(1), ..req("old", &[], 1) };
        let first = store.lease(&short).await.unwrap().remove(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = store.lease(&req("new", &[], 1)).await.unwrap().remove(0);
        assert!(second.token > first.token);
        assert_eq!(second.attempt, 2);
        let step = super::builds::StepRecord {
            idx: 0,
            name: "s".into(),
            status: Status::Running,
            exit_code: None,
            reason: None,
            started_ms: None,
            finished_ms: None,
            first_line: Some(1),
        };
        let line = chengis_model::log::LogLine {
            number: 1,
            stream: chengis_model::log::Stream::Stdout,
            time_ms: 0,
            text: "x".into(),
        };
        store.start_leased_job(&second).await.unwrap();
        store.record_step(&second, &step).await.unwrap();
        store.append_log(&second, std::slice::from_ref(&line)).await.unwrap();
        for err in [
            store.start_leased_job(&first).await.unwrap_err(),
            store.record_step(&first, &step).await.unwrap_err(),
            store.append_log(&first, std::slice::from_ref(&line)).await.unwrap_err(),
            store.set_build_job_result(&first, &serde_json::json!({}), "local").await.unwrap_err(),
            store.complete(&first, Status::Success, None).await.unwrap_err(),
            store.renew(&first, Duration::from_secs(1)).await.unwrap_err(),
            store.check_lease(&first).await.unwrap_err(),
        ] {
            assert!(matches!(err, StoreError::StaleLease { .. }), "{err}");
        }
        assert_eq!(
            store.renew(&second, Duration::from_secs(30)).await.unwrap(),
            Renewal::Continue(store_expiry(&store, second.entry).await)
        );
        assert_eq!(store.stop_job(ids[0], "stop").await.unwrap(), super::queue::Stopped::Asked);
        assert!(matches!(store.renew(&second, Duration::from_secs(30)).await.unwrap(), Renewal::Cancel(_)));
        // Let the second lease expire too: max_attempts = 2, so the job is marked error, and its
        // step left running ends with it.
        sqlx::query("UPDATE queue SET lease_expires_ms = 0, cancel_requested = 0").execute(store.pool()).await.unwrap();
        let batch = store.lease_batch(&req("third", &[], 1)).await.unwrap();
        assert!(batch.leases.is_empty());
        assert_eq!(batch.exhausted.len(), 1);
        assert_eq!(store.build_job_status(ids[0]).await.unwrap(), Status::Error);
        assert_eq!(store.queue_depth().await.unwrap(), 0);
        let steps = store.steps_of_build(store.build_job(ids[0]).await.unwrap().build_id).await.unwrap();
        assert!(steps.values().flatten().all(|s| s.status == Status::Error), "{steps:?}");
    }
}

#[tokio::test]
async fn a_stop_asked_of_a_silent_agent_ends_the_job_cancelled_and_is_never_leased_again() {
    for (store, _dir) in stores().await {
        let ids = job_with_build_jobs(&store, "s", 1).await;
        store.enqueue(ids[0], Priority::Normal, &[]).await.unwrap();
        let lease = store.lease(&req("gone", &[], 1)).await.unwrap().remove(0);
        store.start_leased_job(&lease).await.unwrap();
        assert_eq!(store.stop_job(ids[0], "stop").await.unwrap(), super::queue::Stopped::Asked);
        // Nothing to end while the lease runs.
        assert!(store.end_abandoned_stops().await.unwrap().is_empty());
        sqlx::query("UPDATE queue SET lease_expires_ms = 0").execute(store.pool()).await.unwrap();
        assert!(store.lease(&req("other", &[], 1)).await.unwrap().is_empty(), "a stopped job is not run again");
        let ended = store.end_abandoned_stops().await.unwrap();
        assert_eq!(ended.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![ids[0]]);
        assert_eq!(store.build_job_status(ids[0]).await.unwrap(), Status::Cancelled);
        assert_eq!(store.queue_depth().await.unwrap(), 0);
    }
}

async fn store_expiry(store: &Store, entry: i64) -> i64 {
    sqlx::query_scalar("SELECT lease_expires_ms FROM queue WHERE id = $1")
        .bind(entry)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn secrets_are_encrypted_scoped_and_rotatable() {
    for (store, _dir) in stores().await {
        let keydir = tempfile::tempdir().unwrap();
        let keyfile = keydir.path().join("master.key");
        let (mut keys, created) = MasterKeys::load_or_create(&keyfile).unwrap();
        assert!(created);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&keyfile).unwrap().permissions().mode() & 0o777, 0o600);
        store.set_secret(&keys, &SecretScope::Global, "TOKEN", "global-value").await.unwrap();
        store.set_secret(&keys, &SecretScope::Job("app".into()), "TOKEN", "app-value").await.unwrap();
        store.set_secret(&keys, &SecretScope::Global, "OTHER", "other-value").await.unwrap();
        let raw: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT ciphertext FROM secrets").fetch_all(store.pool()).await.unwrap();
        assert!(raw.iter().all(|c| !c.windows(5).any(|w| w == b"value")), "stored in the clear");
        let app = store.secrets_for_job(&keys, "app").await.unwrap();
        assert_eq!(app["TOKEN"], "app-value");
        assert_eq!(app["OTHER"], "other-value");
        assert_eq!(store.secrets_for_job(&keys, "web").await.unwrap()["TOKEN"], "global-value");
        assert_eq!(store.secret_names(&SecretScope::Global).await.unwrap(), ["OTHER", "TOKEN"]);

        // A ciphertext moved to another secret does not decrypt (scope and name are bound in).
        sqlx::query("UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets WHERE name = 'OTHER') WHERE scope = '' AND name = 'TOKEN'")
            .execute(store.pool())
            .await
            .unwrap();
        let err = store.secrets_for_job(&keys, "web").await.unwrap_err();
        assert!(!err.to_string().contains("-value"), "{err}");
        store.set_secret(&keys, &SecretScope::Global, "TOKEN", "global-value").await.unwrap();

        // A running server's keys, read before the rotation another process does.
        let (server_keys, _) = MasterKeys::load_or_create(&keyfile).unwrap();
        let old = keys.current_id().to_string();
        let new = keys.add_key(&keyfile).unwrap();
        assert_ne!(old, new);
        assert_eq!(store.rotate_secrets(&keys).await.unwrap(), 3);
        let ids: Vec<String> = sqlx::query_scalar("SELECT key_id FROM secrets").fetch_all(store.pool()).await.unwrap();
        assert!(ids.iter().all(|i| *i == new));
        // The running server decrypts what was re-encrypted under the new key, and encrypts new
        // values with it, without a restart.
        assert_eq!(store.secrets_for_job(&server_keys, "app").await.unwrap()["TOKEN"], "app-value");
        store.set_secret(&server_keys, &SecretScope::Global, "LATER", "later-value").await.unwrap();
        let later: String = sqlx::query_scalar("SELECT key_id FROM secrets WHERE name = 'LATER'")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(later, new);
        let (reloaded, created) = MasterKeys::load_or_create(&keyfile).unwrap();
        assert!(!created);
        assert_eq!(reloaded.current_id(), new);
        assert_eq!(store.secrets_for_job(&reloaded, "app").await.unwrap()["TOKEN"], "app-value");
        let stranger = MasterKeys::from_hex(&"ab".repeat(32)).unwrap();
        assert!(matches!(store.secrets_for_job(&stranger, "app").await, Err(StoreError::Crypto(_))));
        store.delete_secret(&SecretScope::Global, "OTHER").await.unwrap();
        assert!(matches!(store.delete_secret(&SecretScope::Global, "OTHER").await, Err(StoreError::NotFound(_))));
    }
}

#[test]
fn urls_are_redacted() {
    assert_eq!(super::redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
    assert_eq!(super::redact_url("sqlite:///x.db"), "sqlite:///x.db");
    assert!(MasterKeys::from_hex("short").is_err());
}

#[tokio::test]
async fn the_plugin_allowlist_records_decisions_and_configs() {
    use super::plugins::{NewPlugin, TrustState};
    for (store, _dir) in stores().await {
        let new = |version: &str, digest: &str| NewPlugin {
            name: "slack".into(),
            version: version.into(),
            digest: digest.into(),
            world: "notifier".into(),
            kinds: vec!["notifier".into()],
            description: "posts to Slack".into(),
            requested: vec!["http:https://hooks.slack.com:443".into(), "secret:SLACK_URL".into()],
            granted: vec![],
            state: TrustState::Pending,
            path: "/data/plugins/x.wasm".into(),
            builtin: false,
            by: "ops".into(),
        };
        let p = store.add_plugin(&new("1.0.0", "sha256:aa")).await.unwrap();
        assert_eq!((p.state, p.decided_by.clone()), (TrustState::Pending, None));
        assert_eq!(p.requested.len(), 2);
        assert!(matches!(store.add_plugin(&new("1.0.0", "sha256:bb")).await, Err(StoreError::Conflict(_))));
        assert!(matches!(store.add_plugin(&new("2.0.0", "sha256:aa")).await, Err(StoreError::Conflict(_))));
        store.add_plugin(&new("2.0.0", "sha256:cc")).await.unwrap();

        let grants = vec!["secret:SLACK_URL".to_string()];
        let decided =
            store.decide_plugin("slack", Some("2.0.0"), TrustState::Allowed, Some(&grants), "admin").await.unwrap();
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].granted, grants);
        assert_eq!(decided[0].decided_by.as_deref(), Some("admin"));
        let by_digest = store.plugin_by_digest("sha256:aa").await.unwrap().unwrap();
        assert_eq!(by_digest.state, TrustState::Pending, "only the named version was decided");
        store.decide_plugin("slack", None, TrustState::Denied, None, "admin").await.unwrap();
        assert!(store.plugins().await.unwrap().iter().all(|p| p.state == TrustState::Denied));
        assert_eq!(store.plugin_by_digest("sha256:cc").await.unwrap().unwrap().granted, grants, "grants kept");
        assert!(matches!(
            store.decide_plugin("nope", None, TrustState::Allowed, None, "admin").await,
            Err(StoreError::NotFound(_))
        ));

        assert!(store.plugin_config("slack").await.unwrap().is_empty());
        let mut cfg = serde_json::Map::new();
        cfg.insert("channel".into(), "#ci".into());
        store.set_plugin_config("slack", &cfg).await.unwrap();
        cfg.insert("on".into(), "failure".into());
        store.set_plugin_config("slack", &cfg).await.unwrap();
        assert_eq!(store.plugin_config("slack").await.unwrap(), cfg);

        assert_eq!(store.remove_plugin("slack", Some("1.0.0")).await.unwrap().len(), 1);
        assert_eq!(store.plugins().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn webhook_secrets_rotate_and_deliveries_deduplicate_and_expire() {
    use super::webhooks::{DeliveryOutcome, NewDelivery};
    let keys = MasterKeys::from_hex(&"ab".repeat(32)).unwrap();
    for (store, _dir) in stores().await {
        job_with_build_jobs(&store, "hooked", 0).await;
        assert!(store.webhook_secrets(&keys, "hooked").await.unwrap().is_empty());
        for secret in ["one-secret-0000000", "two-secret-0000000", "three-secret-00000"] {
            store.set_webhook_secret(&keys, "hooked", secret).await.unwrap();
        }
        // The current one first, then the one it replaced; the oldest is gone.
        assert_eq!(store.webhook_secrets(&keys, "hooked").await.unwrap(), ["three-secret-00000", "two-secret-0000000"]);
        // Webhook secrets are never among the job's build secrets.
        assert!(store.secrets_for_job(&keys, "hooked").await.unwrap().is_empty());

        let outcome = DeliveryOutcome { status: "ignored", ..DeliveryOutcome::default() };
        let d = |id: &'static str| NewDelivery {
            job: "hooked",
            provider: "github",
            event: "ping",
            delivery_id: Some(id),
            body_digest: None,
            payload: b"{\"zen\": \"Keep it logically awesome.\"}",
        };
        let first = store.record_delivery(&d("a"), &outcome).await.unwrap();
        assert!(first.is_some());
        assert_eq!(store.record_delivery(&d("a"), &outcome).await.unwrap(), None, "a repeat is refused");
        assert!(store.record_delivery(&d("b"), &outcome).await.unwrap().is_some());
        let (record, payload) = store.delivery_payload(first.unwrap()).await.unwrap();
        assert_eq!((record.status.as_str(), record.delivery_id.as_deref()), ("ignored", Some("a")));
        assert_eq!(payload, b"{\"zen\": \"Keep it logically awesome.\"}");
        // Retention: nothing is older than a minute ago, everything is older than tomorrow.
        assert_eq!(store.prune_deliveries(super::now_ms() - 60_000).await.unwrap(), 0);
        assert_eq!(store.prune_deliveries(super::now_ms() + 86_400_000).await.unwrap(), 2);
        assert!(store.deliveries(Some("hooked"), 10).await.unwrap().is_empty());
        // Deleting the job deletes its webhook secrets.
        store.delete_job("hooked").await.unwrap();
        assert!(store.webhook_secrets(&keys, "hooked").await.unwrap().is_empty());
    }
}
