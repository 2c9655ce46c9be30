//! The gateway store against SQLite and PostgreSQL: every scenario runs on both.
//!
//! PostgreSQL comes from `SORTITION_TEST_PG_URL` (see `scripts/pg.sh`); each test gets its own
//! schema. Without the variable the PostgreSQL half is skipped loudly, unless `CI` is set, in
//! which case the test fails.

use std::sync::Arc;

use sortition_api::ApiError;
use sortition_gateway::keys::ServerSecret;
use sortition_gateway::store::{
    AuthError, Backend, Bill, GatewayStore, NewUsage, Payload, StackRecord, StackState, StoreError,
    UsageStatus,
};
use sortition_types::{Amount, ModelId, NodeId, StackId, sha256};
use sqlx::AssertSqlSafe;

/// One store under test, and what to clean up after it.
struct Db {
    store: GatewayStore,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl Db {
    async fn cleanup(self) {
        self.store.close().await;
        if let Some((url, schema)) = self.pg_schema {
            let admin = admin_pool(&url).await;
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            sqlx::query(AssertSqlSafe(sql))
                .execute(&admin)
                .await
                .expect("drop schema");
        }
    }
}

fn secret() -> ServerSecret {
    ServerSecret::from_bytes([42; 32])
}

fn pg_url() -> Option<String> {
    match std::env::var("SORTITION_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "SORTITION_TEST_PG_URL is not set and CI is: the PostgreSQL tests must run in CI"
            )
        }
        _ => {
            eprintln!(
                "\n!!!!!!!! SKIPPING the PostgreSQL half of this test: SORTITION_TEST_PG_URL is not set.\n\
                 !!!!!!!! Run `export SORTITION_TEST_PG_URL=$(scripts/pg.sh)` to test PostgreSQL too.\n"
            );
            None
        }
    }
}

async fn admin_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to PostgreSQL")
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = GatewayStore::open_sqlite(dir.path(), secret())
        .await
        .expect("open sqlite");
    Db {
        store,
        _dir: Some(dir),
        pg_schema: None,
    }
}

async fn postgres(url: &str) -> Db {
    let mut rnd = [0u8; 6];
    getrandom::fill(&mut rnd).expect("random");
    let schema = format!("t_{}", hex::encode(rnd));
    let admin = admin_pool(url).await;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("schema");
    admin.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let store = GatewayStore::open(&scoped, secret())
        .await
        .expect("open postgres");
    assert_eq!(store.backend(), Backend::Postgres);
    Db {
        store,
        _dir: None,
        pg_schema: Some((url.to_string(), schema)),
    }
}

/// SQLite always; PostgreSQL when configured.
async fn backends() -> Vec<Db> {
    let mut dbs = vec![sqlite().await];
    if let Some(url) = pg_url() {
        dbs.push(postgres(&url).await);
    }
    dbs
}

fn stack(id: u64, units: u64, expires_at_ms: i64) -> StackRecord {
    StackRecord {
        stack_id: StackId(id),
        model: ModelId::new("smollm2-135m-instruct"),
        node_id: NodeId(3),
        owner: "gateway-account".into(),
        units_total: units,
        units_reserved: 0,
        units_used: 0,
        expires_at_ms,
        state: StackState::Active,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_authenticate_list_and_revoke() {
    for db in backends().await {
        let s = &db.store;
        let user = s.create_user("alice").await.expect("user");
        assert_eq!(
            s.top_up(user, Amount(5_000)).await.expect("top up"),
            Amount(5_000)
        );
        let (kid, key) = s
            .create_key(user, "laptop", 60, Some(Amount(1_000)))
            .await
            .expect("key");

        let authed = s
            .authenticate(Some(&format!("  {}  ", key.expose())))
            .await
            .expect("valid key");
        assert_eq!((authed.key_id, authed.user_id, authed.rpm), (kid, user, 60));
        assert_eq!(
            (authed.budget, authed.spent, authed.credits),
            (Some(Amount(1_000)), Amount(0), Amount(5_000))
        );

        assert!(matches!(
            s.authenticate(None).await,
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            s.authenticate(Some("")).await,
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            s.authenticate(Some("sk-sort-nothex")).await,
            Err(AuthError::Invalid)
        ));
        let other = sortition_gateway::keys::ApiKey::generate().expect("key");
        assert!(matches!(
            s.authenticate(Some(other.expose())).await,
            Err(AuthError::Invalid)
        ));

        let keys = s.list_keys(user).await.expect("list");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].prefix, key.display_prefix());
        assert!(
            !format!("{keys:?}").contains(&key.expose()[20..]),
            "listing leaks the key"
        );

        s.revoke_key(user, kid).await.expect("revoke");
        s.revoke_key(user, kid)
            .await
            .expect("revoking twice is fine");
        let err = s
            .authenticate(Some(key.expose()))
            .await
            .expect_err("revoked");
        assert!(matches!(err, AuthError::Revoked));
        assert_eq!(ApiError::from(err).status().as_u16(), 401);
        let stranger = s.create_user("mallory").await.expect("user");
        assert!(matches!(
            s.revoke_key(stranger, kid).await,
            Err(StoreError::KeyNotFound(_))
        ));
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_different_secret_does_not_authenticate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = GatewayStore::open_sqlite(dir.path(), secret())
        .await
        .expect("open");
    let user = s.create_user("bob").await.expect("user");
    let (_, key) = s.create_key(user, "k", 10, None).await.expect("key");
    s.close().await;
    let s2 = GatewayStore::open_sqlite(dir.path(), ServerSecret::from_bytes([1; 32]))
        .await
        .expect("reopen");
    assert!(matches!(
        s2.authenticate(Some(key.expose())).await,
        Err(AuthError::Invalid)
    ));
    let s3 = GatewayStore::open_sqlite(dir.path(), secret())
        .await
        .expect("reopen, idempotent migrations");
    s3.authenticate(Some(key.expose()))
        .await
        .expect("same secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charge_applies_both_debits_or_neither() {
    for db in backends().await {
        let s = &db.store;
        let user = s.create_user("carol").await.expect("user");
        s.top_up(user, Amount(1_000)).await.expect("top up");
        let (budgeted, _) = s
            .create_key(user, "b", 60, Some(Amount(300)))
            .await
            .expect("key");
        let (open, _) = s.create_key(user, "o", 60, None).await.expect("key");

        let c = s
            .charge(budgeted, Amount(200))
            .await
            .expect("within budget");
        assert_eq!((c.credits_left, c.key_spent), (Amount(800), Amount(200)));
        let err = s
            .charge(budgeted, Amount(101))
            .await
            .expect_err("over budget");
        assert!(matches!(err, StoreError::OverBudget { .. }), "{err}");
        assert_eq!(ApiError::from(err).status().as_u16(), 402);
        assert_eq!(
            s.user(user).await.expect("user").credits,
            Amount(800),
            "nothing applied"
        );

        let err = s.charge(open, Amount(801)).await.expect_err("insufficient");
        assert!(
            matches!(
                err,
                StoreError::InsufficientCredits {
                    balance: Amount(800),
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(ApiError::from(err).status().as_u16(), 402);
        let keys = s.list_keys(user).await.expect("list");
        assert_eq!(
            keys.iter().find(|k| k.id == open).map(|k| k.spent),
            Some(Amount(0)),
            "rolled back"
        );

        s.charge(open, Amount(800))
            .await
            .expect("exactly the balance");
        assert_eq!(s.user(user).await.expect("user").credits, Amount(0));
        assert!(matches!(
            s.top_up(user, Amount(u64::MAX)).await,
            Err(StoreError::OutOfRange(_))
        ));
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_charges_never_overspend() {
    for db in backends().await {
        let s = Arc::new(db.store.clone());
        let user = s.create_user("dave").await.expect("user");
        s.top_up(user, Amount(1_000)).await.expect("top up");
        let (key, _) = s.create_key(user, "k", 60, None).await.expect("key");
        let rich = s.create_user("frank").await.expect("user");
        s.top_up(rich, Amount(1_000)).await.expect("top up");
        let (capped, _) = s
            .create_key(rich, "capped", 60, Some(Amount(100)))
            .await
            .expect("key");
        let mut tasks = Vec::new();
        for i in 0..96 {
            let s = s.clone();
            let k = if i % 2 == 0 { key } else { capped };
            tasks.push(tokio::spawn(async move { s.charge(k, Amount(30)).await }));
        }
        let mut ok = [0u64; 2];
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.expect("task") {
                Ok(_) => ok[i % 2] += 1,
                Err(StoreError::InsufficientCredits { .. } | StoreError::OverBudget { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        // Credits bound the first key (33 x 30 <= 1000), the budget the second (3 x 30 <= 100).
        assert_eq!(ok, [33, 3]);
        assert_eq!(s.user(user).await.expect("user").credits, Amount(10));
        assert_eq!(s.user(rich).await.expect("user").credits, Amount(910));
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_reservations_never_overspend_a_stack() {
    for db in backends().await {
        let s = Arc::new(db.store.clone());
        s.insert_stack(&stack(7, 1_000, i64::MAX))
            .await
            .expect("stack");
        s.insert_stack(&stack(7, 5, 0))
            .await
            .expect("re-insert is a no-op");
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.reserve_stack_units(StackId(7), 13, 0).await
            }));
        }
        let mut granted = 0u64;
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => granted += 1,
                Err(StoreError::StackExhausted { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(granted, 1_000 / 13);
        let st = s.stack(StackId(7)).await.expect("stack");
        assert_eq!(
            (st.units_reserved, st.available()),
            (granted * 13, 1_000 - granted * 13)
        );

        // Half finish using 10 of 13; the rest release everything.
        let mut tasks = Vec::new();
        for i in 0..granted {
            let s = s.clone();
            let used = if i % 2 == 0 { 10 } else { 0 };
            tasks.push(tokio::spawn(async move {
                s.settle_stack_units(StackId(7), 13, used).await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("settle");
        }
        let st = s.stack(StackId(7)).await.expect("stack");
        assert_eq!(st.units_reserved, 0);
        assert_eq!(st.units_used, granted.div_ceil(2) * 10);
        assert!(matches!(
            s.release(StackId(7), 1).await,
            Err(StoreError::OverRelease { .. })
        ));
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stacks_expire_close_and_are_listed() {
    for db in backends().await {
        let s = &db.store;
        s.insert_stack(&stack(1, 100, 1_000)).await.expect("stack");
        s.insert_stack(&stack(2, 500, 1_000)).await.expect("stack");
        let m = ModelId::new("smollm2-135m-instruct");
        let usable = s.usable_stacks(NodeId(3), &m, 500).await.expect("list");
        assert_eq!(
            usable.iter().map(|x| x.stack_id).collect::<Vec<_>>(),
            vec![StackId(2), StackId(1)]
        );
        let err = s
            .reserve_stack_units(StackId(1), 1, 1_000)
            .await
            .expect_err("expired");
        assert!(matches!(err, StoreError::StackInactive(_)));
        assert_eq!(ApiError::from(err).status().as_u16(), 402);
        s.close_stack(StackId(2)).await.expect("close");
        assert!(matches!(
            s.reserve_stack_units(StackId(2), 1, 0).await,
            Err(StoreError::StackInactive(_))
        ));
        assert!(matches!(
            s.reserve_stack_units(StackId(9), 1, 0).await,
            Err(StoreError::StackNotFound(_))
        ));
        assert_eq!(
            s.usable_stacks(NodeId(3), &m, 500)
                .await
                .expect("list")
                .len(),
            1
        );
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_and_payloads_round_trip_and_sweep() {
    for db in backends().await {
        let s = &db.store;
        let user = s.create_user("erin").await.expect("user");
        let (key, _) = s.create_key(user, "k", 60, None).await.expect("key");
        let usage = NewUsage {
            key_id: key,
            user_id: user,
            model: ModelId::new("smollm2-135m-instruct"),
            node_id: NodeId(3),
            stack_id: Some(StackId(1)),
            prompt_tokens: 12,
            completion_tokens: 34,
            cost: Amount(46),
            status: UsageStatus::Ok,
            receipt_json: Some(r#"{"seq":1}"#.into()),
            request_hash: sha256(b"req-1"),
        };
        s.record_usage(&usage).await.expect("usage");
        let failed = NewUsage {
            status: UsageStatus::Failed,
            receipt_json: None,
            stack_id: None,
            ..usage.clone()
        };
        s.record_usage(&failed).await.expect("usage");
        let got = s.usage_for_user(user, 10).await.expect("list");
        assert_eq!(got.len(), 2);
        assert_eq!((&got[0].usage, &got[1].usage), (&failed, &usage));

        let body: Vec<u8> = (0..=255u8).collect();
        // The same request (same hash) on two receipts is kept twice.
        for (i, expires) in [(1u64, 100i64), (2, 200)] {
            let p = Payload {
                request_hash: sha256(&[7]),
                stack_id: StackId(1),
                receipt_seq: i,
                body: body.clone(),
                receipt_json: Some(format!("{{\"seq\":{i}}}")),
                answer: (i == 2).then(|| b"{}".to_vec()),
                expires_at_ms: expires,
            };
            s.put_payload(&p).await.expect("payload");
            s.put_payload(&p).await.expect("idempotent");
        }
        let p1 = s
            .payload(StackId(1), 1, 50)
            .await
            .expect("get")
            .expect("kept");
        assert_eq!((p1.body, p1.receipt_seq), (body, 1));
        assert_eq!(p1.receipt_json.as_deref(), Some("{\"seq\":1}"));
        assert_eq!(p1.answer, None);
        let p2 = s
            .payload(StackId(1), 2, 50)
            .await
            .expect("get")
            .expect("kept");
        assert_eq!(
            (p2.request_hash, p2.answer),
            (sha256(&[7]), Some(b"{}".to_vec()))
        );
        assert_eq!(
            s.payload(StackId(1), 1, 100).await.expect("get"),
            None,
            "expired"
        );
        assert_eq!(s.payload(StackId(9), 1, 0).await.expect("get"), None);
        assert_eq!(s.sweep_payloads(150).await.expect("sweep"), 1);
        assert_eq!(s.sweep_payloads(150).await.expect("sweep"), 0);
        assert!(s.payload(StackId(1), 2, 150).await.expect("get").is_some());
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_served_request_is_billed_in_one_transaction() {
    for db in backends().await {
        let s = &db.store;
        let user = s.create_user("grace").await.expect("user");
        s.top_up(user, Amount(100)).await.expect("top up");
        let (key, _) = s.create_key(user, "k", 60, None).await.expect("key");
        let model = ModelId::new("smollm2-135m-instruct");
        s.insert_stack(&stack(5, 100, i64::MAX))
            .await
            .expect("stack");
        s.insert_stack(&stack(6, 10, i64::MAX))
            .await
            .expect("stack");
        // The stack with the most room is reserved on; none has 101 units.
        let held = s
            .reserve_on_any_stack(NodeId(3), &model, 40, 0)
            .await
            .expect("reserve")
            .expect("a stack has room");
        assert_eq!((held.stack_id, held.units_reserved), (StackId(5), 40));
        assert_eq!(
            s.reserve_on_any_stack(NodeId(3), &model, 101, 0)
                .await
                .expect("reserve"),
            None
        );
        assert_eq!(
            s.reserve_on_any_stack(NodeId(4), &model, 1, 0)
                .await
                .expect("reserve"),
            None,
            "another node's stacks are not used"
        );

        let bill = |seq: u64, price: u64| Bill {
            stack: StackId(5),
            reserved: 20,
            used: 15,
            price: Amount(price),
            usage: NewUsage {
                key_id: key,
                user_id: user,
                model: model.clone(),
                node_id: NodeId(3),
                stack_id: Some(StackId(5)),
                prompt_tokens: 10,
                completion_tokens: 5,
                cost: Amount(0),
                status: UsageStatus::Ok,
                receipt_json: Some("{}".into()),
                request_hash: sha256(b"req"),
            },
            payload: Some(Payload {
                request_hash: sha256(b"req"),
                stack_id: StackId(5),
                receipt_seq: seq,
                body: b"req".to_vec(),
                receipt_json: Some("{}".into()),
                answer: None,
                expires_at_ms: i64::MAX,
            }),
        };
        let billed = s.bill(&bill(0, 60)).await.expect("bill");
        assert_eq!(billed.charged, Amount(60));
        assert!(billed.settle_error.is_none() && billed.charge_error.is_none());
        // More than the balance: the request is still settled, recorded and kept, unpaid.
        let billed = s.bill(&bill(1, 60)).await.expect("bill");
        assert_eq!(billed.charged, Amount(0));
        assert!(matches!(
            billed.charge_error,
            Some(StoreError::InsufficientCredits { .. })
        ));
        assert_eq!(s.user(user).await.expect("user").credits, Amount(40));
        let keys = s.list_keys(user).await.expect("keys");
        assert_eq!(
            keys[0].spent,
            Amount(60),
            "the refused charge left no spend"
        );
        let st = s.stack(StackId(5)).await.expect("stack");
        assert_eq!((st.units_reserved, st.units_used), (0, 30));
        let usage = s.usage_for_user(user, 10).await.expect("usage");
        let costs: Vec<Amount> = usage.iter().map(|u| u.usage.cost).collect();
        assert_eq!(costs, [Amount(0), Amount(60)]);
        for seq in [0, 1] {
            assert!(s.payload(StackId(5), seq, 0).await.expect("get").is_some());
        }
        // Nothing left reserved: the settlement is refused, the rest still recorded.
        let billed = s.bill(&bill(2, 0)).await.expect("bill");
        assert!(matches!(
            billed.settle_error,
            Some(StoreError::OverRelease { .. })
        ));
        assert!(s.payload(StackId(5), 2, 0).await.expect("get").is_some());
        db.cleanup().await;
    }
}

/// Under steady writes the background checkpoints alone never let SQLite start its WAL over
/// (a commit always lands during their `fsync`s), so the store restarts it past a bound: the
/// WAL file stays near 32 MiB (plus what is written while a checkpoint waits its turn, more on
/// a loaded machine) instead of growing with everything ever written (220 MiB here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_wal_stays_bounded_under_steady_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = GatewayStore::open_sqlite(dir.path(), secret())
        .await
        .expect("open sqlite");
    let wal = dir
        .path()
        .join(format!("{}-wal", sortition_gateway::store::SQLITE_FILE));
    let body = vec![7u8; 16 * 1024];
    let mut largest = 0;
    // About 220 MiB of WAL frames in all: five 4 KiB pages per payload, 11,000 payloads.
    for seq in 0..11_000u64 {
        s.put_payload(&Payload {
            request_hash: sha256(&seq.to_le_bytes()),
            stack_id: StackId(1),
            receipt_seq: seq,
            body: body.clone(),
            receipt_json: None,
            answer: None,
            expires_at_ms: i64::MAX,
        })
        .await
        .expect("payload");
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(largest < 110 << 20, "the WAL grew to {} MiB", largest >> 20);
    s.close().await;
}
