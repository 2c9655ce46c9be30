//! Credit holds: money reserved for a request before any node is asked.
//!
//! A hold takes the request's worst-case cost from its user's credits (into `held_micro`) and
//! counts it against its key's budget (`api_keys.held_micro`), in one transaction of
//! conditional `UPDATE`s, so that concurrent requests (on one gateway or on several sharing a
//! PostgreSQL database) can never hold more than there is. The bill then settles the hold to
//! the actual cost in the same transaction as the usage row and the payload
//! ([`GatewayStore::settle`]); every other end of the request releases it. Each hold is a row
//! that settling or releasing deletes first, so it ends exactly once whichever comes first.
//!
//! [`CreditHold`] is the guard a request carries: dropped without being settled, it releases
//! the hold in the background, retrying while the database fails (a full disk, a lost
//! PostgreSQL). A hold left behind by a gateway that died is released when it expires
//! ([`HOLD_TTL`], see [`GatewayStore::sweep_holds`]).

use std::time::Duration;

use sortition_types::Amount;
use sqlx::Row;
use tokio::sync::oneshot;

use super::faults::Work;
use super::{GatewayStore, KeyId, Result, StoreError, UserId, from_db, now_ms, to_db};
use crate::store::{Bill, Billed};

/// How long a hold may stay open. Longer than any request runs (streams included); a hold
/// older than this belonged to a gateway that stopped, and is released by the sweep.
pub const HOLD_TTL: Duration = Duration::from_secs(3600);

/// How long a failed release (or a streamed answer's settlement) is retried in the
/// background before the hold is left to expire.
pub const RETRY_FOR: Duration = Duration::from_secs(600);

/// One credit hold.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct HoldId(pub i64);

impl std::fmt::Display for HoldId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hold-{}", self.0)
    }
}

/// Money held for one request in flight. Released when dropped unless settled by its bill.
#[must_use = "a credit hold is released as soon as it is dropped"]
#[derive(Debug)]
pub struct CreditHold {
    /// Where the hold lives, to settle or release it.
    store: GatewayStore,
    id: HoldId,
    key: KeyId,
    amount: Amount,
    /// Still open: dropping it releases it.
    open: bool,
    /// Dropped when the hold has ended (see [`CreditHold::ended`]).
    ended: Option<oneshot::Sender<()>>,
}

/// Resolves once a hold has ended: settled, released, or its release tried once and handed
/// to the background retries. A request that failed waits for it before it answers, so that
/// the client sees its credits back as soon as it sees the error.
#[derive(Debug)]
pub struct HoldEnded(oneshot::Receiver<()>);

impl HoldEnded {
    /// Waits for the hold's end, at most `at_most`.
    pub async fn wait(self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.0).await;
    }
}

impl CreditHold {
    pub fn id(&self) -> HoldId {
        self.id
    }

    /// The key whose request this is.
    pub fn key(&self) -> KeyId {
        self.key
    }

    /// What is held: the request's worst-case cost.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// A future of this hold's end (the latest one asked for; an earlier one resolves now).
    pub fn ended(&mut self) -> HoldEnded {
        let (tx, rx) = oneshot::channel();
        self.ended = Some(tx);
        HoldEnded(rx)
    }

    /// Settles the hold with `bills` ([`GatewayStore::settle`]). On success, or when the hold
    /// is already gone, the guard is spent; on any other error it stays open (and is released
    /// when dropped).
    pub async fn settle(&mut self, bills: &[Bill]) -> Result<Billed> {
        let r = self.store.settle(self.id, bills).await;
        if matches!(r, Ok(_) | Err(StoreError::HoldNotFound(_))) {
            self.open = false;
            drop(self.ended.take());
        }
        r
    }

    /// Releases the hold now. If the database fails, the release is retried in the
    /// background (as on drop) and the error returned.
    pub async fn release(mut self) -> Result<()> {
        self.store.release_hold(self.id).await?;
        self.open = false;
        Ok(())
    }

    /// Settles the hold with `bills` in the background, retrying while the database fails,
    /// for up to [`RETRY_FOR`]. For an answer already delivered (a stream): meanwhile the
    /// worst-case cost stays taken from the credits, so the answer is never free; only a
    /// gateway that stops before the database heals leaves it to expire, refunded.
    pub fn settle_in_background(mut self, bills: Vec<Bill>) {
        self.open = false;
        let (store, id, ended) = (self.store.clone(), self.id, self.ended.take());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!(hold = %id, "no runtime to settle a credit hold; it will expire");
            return;
        };
        rt.spawn(async move {
            retry(&store, Work::Writes, id, ended, || store.settle(id, &bills)).await;
        });
    }
}

impl Drop for CreditHold {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let (store, id, ended) = (self.store.clone(), self.id, self.ended.take());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    retry(&store, Work::Releases, id, ended, || store.release_hold(id)).await;
                });
            }
            Err(_) => {
                tracing::error!(hold = %id, "no runtime to release a credit hold; it will expire");
            }
        }
    }
}

/// Runs `op` on hold `id` until it succeeds, the hold is gone, or [`RETRY_FOR`] has passed,
/// backing off from 100 ms to 10 s. Failures are recorded (and logged, rate-limited) as `work`.
/// `ended` is dropped after the first try.
async fn retry<T, F, Fut>(
    store: &GatewayStore,
    work: Work,
    id: HoldId,
    mut ended: Option<oneshot::Sender<()>>,
    mut op: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut wait = Duration::from_millis(100);
    loop {
        let r = op().await;
        drop(ended.take());
        match r {
            Ok(_) | Err(StoreError::HoldNotFound(_)) => {
                store.faults.ok(work);
                return;
            }
            Err(e) if !matches!(e, StoreError::Db(_)) => {
                // A refusal, not a fault: trying again would not change it.
                tracing::error!(hold = %id, error = %e, "credit hold refused; it will expire");
                return;
            }
            Err(e) => {
                store.faults.failed(work, &e);
                if tokio::time::Instant::now() + wait > deadline || store.pool.is_closed() {
                    tracing::error!(hold = %id, error = %e, "gave up on a credit hold; it will expire");
                    return;
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

impl GatewayStore {
    /// Holds `amount` of `key`'s user's credits and of the key's budget for a request, in one
    /// transaction: both or neither. Refused with nothing held when the key is revoked, its
    /// budget (spent plus held) cannot take it, or the balance is short.
    pub async fn hold(&self, key: KeyId, amount: Amount) -> Result<CreditHold> {
        let r = self.hold_once(key, amount).await;
        self.track(Work::Writes, &r);
        let id = r?;
        Ok(CreditHold {
            store: self.clone(),
            id,
            key,
            amount,
            open: true,
            ended: None,
        })
    }

    async fn hold_once(&self, key: KeyId, amount: Amount) -> Result<HoldId> {
        let a = to_db(amount.0, "hold amount")?;
        let mut tx = self.begin_write().await?;
        // Keys before users, in every transaction that touches both: no lock-order deadlock.
        let row = sqlx::query(
            "UPDATE api_keys SET held_micro = held_micro + $1 WHERE id = $2 \
             AND revoked_ms IS NULL \
             AND (budget_micro IS NULL OR spent_micro + held_micro + $1 <= budget_micro) \
             RETURNING user_id",
        )
        .bind(a)
        .bind(key.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(self.why_key_refused(key, amount).await?);
        };
        let user = UserId(row.try_get("user_id")?);
        let debited = sqlx::query(
            "UPDATE users SET credits_micro = credits_micro - $1, held_micro = held_micro + $1 \
             WHERE id = $2 AND credits_micro >= $1",
        )
        .bind(a)
        .bind(user.0)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !debited {
            tx.rollback().await?;
            let balance = self.user(user).await?.credits;
            return Err(StoreError::InsufficientCredits {
                balance,
                cost: amount,
            });
        }
        let now = now_ms();
        let ttl = i64::try_from(HOLD_TTL.as_millis()).unwrap_or(i64::MAX);
        let row = sqlx::query(
            "INSERT INTO credit_holds (key_id, user_id, amount_micro, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(key.0)
        .bind(user.0)
        .bind(a)
        .bind(now)
        .bind(now.saturating_add(ttl))
        .fetch_one(&mut *tx)
        .await?;
        let id = HoldId(row.try_get("id")?);
        tx.commit().await?;
        Ok(id)
    }

    /// Releases a hold: its amount goes back to the credits and off the key's budget. `false`
    /// if it was already settled or released.
    pub async fn release_hold(&self, hold: HoldId) -> Result<bool> {
        let r = self.release_once(hold).await;
        self.track(Work::Releases, &r);
        r
    }

    async fn release_once(&self, hold: HoldId) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let Some(h) = take_hold(&mut tx, hold).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        let keys = sqlx::query(
            "UPDATE api_keys SET held_micro = held_micro - $1 WHERE id = $2 AND held_micro >= $1",
        )
        .bind(h.amount)
        .bind(h.key.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let users = sqlx::query(
            "UPDATE users SET credits_micro = credits_micro + $1, held_micro = held_micro - $1 \
             WHERE id = $2 AND held_micro >= $1",
        )
        .bind(h.amount)
        .bind(h.user.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if keys != 1 || users != 1 {
            tx.rollback().await?;
            return Err(StoreError::Corrupt(format!(
                "{hold} holds more than its key or user has on hold"
            )));
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Releases every hold that expired by `now_ms` (their gateway stopped before it settled
    /// or released them); returns how many.
    pub async fn sweep_holds(&self, now_ms: i64) -> Result<u64> {
        let rows = sqlx::query("SELECT id FROM credit_holds WHERE expires_ms <= $1 ORDER BY id")
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?;
        let mut released = 0;
        for row in rows {
            if self.release_hold(HoldId(row.try_get("id")?)).await? {
                released += 1;
            }
        }
        if released > 0 {
            tracing::warn!(released, "released expired credit holds");
        }
        Ok(released)
    }

    /// What `user` has on hold now (requests in flight).
    pub async fn held(&self, user: UserId) -> Result<Amount> {
        let row = sqlx::query("SELECT held_micro FROM users WHERE id = $1")
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::UserNotFound(user))?;
        Ok(Amount(from_db(row.try_get("held_micro")?, "held")?))
    }
}

/// A hold taken out of the table: its row is gone in this transaction.
pub(super) struct Taken {
    pub key: KeyId,
    pub user: UserId,
    /// As the database holds it.
    pub amount: i64,
}

/// Deletes hold `id`, returning what it held; `None` if it is gone (settled or released).
pub(super) async fn take_hold(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    id: HoldId,
) -> Result<Option<Taken>> {
    let row = sqlx::query(
        "DELETE FROM credit_holds WHERE id = $1 RETURNING key_id, user_id, amount_micro",
    )
    .bind(id.0)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| {
        Ok(Taken {
            key: KeyId(r.try_get("key_id")?),
            user: UserId(r.try_get("user_id")?),
            amount: r.try_get("amount_micro")?,
        })
    })
    .transpose()
}
