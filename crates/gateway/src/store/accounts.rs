//! Users, credits, API keys, authentication and charging.

use sortition_api::{ApiError, ErrorKind};
use sortition_types::Amount;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{GatewayStore, KeyId, Result, StoreError, UserId, from_db, now_ms, to_db};
use crate::keys::ApiKey;

/// A user and their balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: String,
    /// What the user can spend: the balance less what is on hold.
    pub credits: Amount,
    /// What is on hold for the user's requests in flight (their worst-case costs).
    pub held: Amount,
    pub created_ms: i64,
}

/// An API key as listed to its owner: never the key, only its display prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: KeyId,
    pub user_id: UserId,
    /// e.g. `sk-sort-1a2b3c4d`, so the owner can tell keys apart.
    pub prefix: String,
    pub name: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub rate_limit_rpm: u32,
    pub budget: Option<Amount>,
    pub spent: Amount,
}

/// What a request may do, decided once when its key is authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthedKey {
    pub key_id: KeyId,
    pub user_id: UserId,
    /// Requests per minute allowed for this key.
    pub rpm: u32,
    /// The key's lifetime spending cap, if any.
    pub budget: Option<Amount>,
    /// What the key has spent so far.
    pub spent: Amount,
    /// The user's balance when the key was checked.
    pub credits: Amount,
}

/// The result of a successful charge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charged {
    /// The user's balance after the charge.
    pub credits_left: Amount,
    /// The key's total spend after the charge.
    pub key_spent: Amount,
}

/// Why a presented key was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no API key was provided")]
    Missing,
    #[error("the API key is invalid")]
    Invalid,
    #[error("the API key has been revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Store(s) => return s.into(),
            AuthError::Missing => "missing_api_key",
            AuthError::Invalid => "invalid_api_key",
            AuthError::Revoked => "key_revoked",
        };
        ApiError::new(ErrorKind::Authentication, code, e.to_string())
    }
}

fn key_info(row: &AnyRow) -> Result<KeyInfo> {
    let budget: Option<i64> = row.try_get("budget_micro")?;
    Ok(KeyInfo {
        id: KeyId(row.try_get("id")?),
        user_id: UserId(row.try_get("user_id")?),
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        created_ms: row.try_get("created_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
        rate_limit_rpm: rpm_from_db(row.try_get("rate_limit_rpm")?)?,
        budget: budget
            .map(|b| from_db(b, "budget").map(Amount))
            .transpose()?,
        spent: Amount(from_db(row.try_get("spent_micro")?, "spent")?),
    })
}

fn rpm_from_db(v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("rate_limit_rpm {v}")))
}

impl GatewayStore {
    /// Creates a user with zero credits.
    pub async fn create_user(&self, name: &str) -> Result<UserId> {
        let row = sqlx::query(
            "INSERT INTO users (name, credits_micro, created_ms) VALUES ($1, 0, $2) RETURNING id",
        )
        .bind(name)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(UserId(row.try_get("id")?))
    }

    /// A user and their current balance.
    pub async fn user(&self, user: UserId) -> Result<User> {
        let row = sqlx::query(
            "SELECT id, name, credits_micro, held_micro, created_ms FROM users WHERE id = $1",
        )
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::UserNotFound(user))?;
        Ok(User {
            id: UserId(row.try_get("id")?),
            name: row.try_get("name")?,
            credits: Amount(from_db(row.try_get("credits_micro")?, "credits")?),
            held: Amount(from_db(row.try_get("held_micro")?, "held")?),
            created_ms: row.try_get("created_ms")?,
        })
    }

    /// Adds credits; returns the new balance. Fails, changing nothing, on overflow.
    pub async fn top_up(&self, user: UserId, amount: Amount) -> Result<Amount> {
        let add = to_db(amount.0, "top-up amount")?;
        let row = sqlx::query(
            "UPDATE users SET credits_micro = credits_micro + $1 \
             WHERE id = $2 AND credits_micro <= $3 - $1 RETURNING credits_micro",
        )
        .bind(add)
        .bind(user.0)
        .bind(i64::MAX)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Amount(from_db(r.try_get("credits_micro")?, "credits")?)),
            None => {
                self.user(user).await?;
                Err(StoreError::OutOfRange("balance after top-up"))
            }
        }
    }

    /// Creates a key for `user`. The plaintext is returned once and never stored.
    pub async fn create_key(
        &self,
        user: UserId,
        name: &str,
        rpm: u32,
        budget: Option<Amount>,
    ) -> Result<(KeyId, ApiKey)> {
        if rpm == 0 {
            return Err(StoreError::OutOfRange(
                "rate_limit_rpm (must be at least 1)",
            ));
        }
        let budget = budget.map(|b| to_db(b.0, "budget")).transpose()?;
        self.user(user).await?;
        let key = ApiKey::generate()?;
        let hash = self.secret.hash_key(&key);
        let row = sqlx::query(
            "INSERT INTO api_keys (user_id, prefix, key_hash, name, created_ms, rate_limit_rpm, \
             budget_micro, spent_micro) VALUES ($1, $2, $3, $4, $5, $6, $7, 0) RETURNING id",
        )
        .bind(user.0)
        .bind(key.display_prefix())
        .bind(hash.to_hex())
        .bind(name)
        .bind(now_ms())
        .bind(i64::from(rpm))
        .bind(budget)
        .fetch_one(&self.pool)
        .await?;
        Ok((KeyId(row.try_get("id")?), key))
    }

    /// All keys of a user, revoked ones included, oldest first.
    pub async fn list_keys(&self, user: UserId) -> Result<Vec<KeyInfo>> {
        let sql = "SELECT id, user_id, prefix, name, created_ms, revoked_ms, rate_limit_rpm, \
                   budget_micro, spent_micro FROM api_keys WHERE user_id = $1 ORDER BY id";
        let rows = sqlx::query(sql).bind(user.0).fetch_all(&self.pool).await?;
        rows.iter().map(key_info).collect()
    }

    /// Revokes a key of `user`. Idempotent: revoking twice keeps the first time.
    pub async fn revoke_key(&self, user: UserId, key: KeyId) -> Result<()> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, $1) WHERE id = $2 AND user_id = $3",
        )
        .bind(now_ms())
        .bind(key.0)
        .bind(user.0)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::KeyNotFound(key));
        }
        Ok(())
    }

    /// Checks a presented key (the bearer token, if any) and loads what it may do.
    pub async fn authenticate(&self, presented: Option<&str>) -> Result<AuthedKey, AuthError> {
        let presented = presented
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Missing)?;
        let key = ApiKey::parse(presented).ok_or(AuthError::Invalid)?;
        let hash = self.secret.hash_key(&key);
        let row = sqlx::query(
            "SELECT k.id, k.user_id, k.key_hash, k.revoked_ms, k.rate_limit_rpm, k.budget_micro, \
             k.spent_micro, u.credits_micro FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = $1",
        )
        .bind(hash.to_hex())
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)?
        .ok_or(AuthError::Invalid)?;
        let stored: String = row.try_get("key_hash").map_err(StoreError::from)?;
        let stored = hex::decode(stored).map_err(|_| StoreError::Corrupt("key_hash".into()))?;
        if !crate::keys::ct_eq(&stored, &hash.0) {
            return Err(AuthError::Invalid);
        }
        let revoked: Option<i64> = row.try_get("revoked_ms").map_err(StoreError::from)?;
        if revoked.is_some() {
            return Err(AuthError::Revoked);
        }
        let read = || -> Result<AuthedKey> {
            let budget: Option<i64> = row.try_get("budget_micro")?;
            Ok(AuthedKey {
                key_id: KeyId(row.try_get("id")?),
                user_id: UserId(row.try_get("user_id")?),
                rpm: rpm_from_db(row.try_get("rate_limit_rpm")?)?,
                budget: budget
                    .map(|b| from_db(b, "budget").map(Amount))
                    .transpose()?,
                spent: Amount(from_db(row.try_get("spent_micro")?, "spent")?),
                credits: Amount(from_db(row.try_get("credits_micro")?, "credits")?),
            })
        };
        Ok(read()?)
    }

    /// Debits `cost` from the key's user and adds it to the key's spend, in one transaction.
    /// Fails with nothing applied if the key is revoked, the budget would be exceeded (counting
    /// what the key has on hold), or the balance would go negative.
    pub async fn charge(&self, key: KeyId, cost: Amount) -> Result<Charged> {
        let r = self.charge_once(key, cost).await;
        self.track(super::faults::Work::Writes, &r);
        r
    }

    async fn charge_once(&self, key: KeyId, cost: Amount) -> Result<Charged> {
        let c = to_db(cost.0, "cost")?;
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "UPDATE api_keys SET spent_micro = spent_micro + $1 WHERE id = $2 \
             AND revoked_ms IS NULL \
             AND (budget_micro IS NULL OR spent_micro + held_micro + $1 <= budget_micro) \
             RETURNING user_id, spent_micro",
        )
        .bind(c)
        .bind(key.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(self.why_key_refused(key, cost).await?);
        };
        let user = UserId(row.try_get("user_id")?);
        let key_spent = Amount(from_db(row.try_get("spent_micro")?, "spent")?);
        let row = sqlx::query(
            "UPDATE users SET credits_micro = credits_micro - $1 \
             WHERE id = $2 AND credits_micro >= $1 RETURNING credits_micro",
        )
        .bind(c)
        .bind(user.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            let balance = self.user(user).await?.credits;
            return Err(StoreError::InsufficientCredits { balance, cost });
        };
        let credits_left = Amount(from_db(row.try_get("credits_micro")?, "credits")?);
        tx.commit().await?;
        Ok(Charged {
            credits_left,
            key_spent,
        })
    }

    /// Explains why the key's conditional update matched nothing.
    pub(super) async fn why_key_refused(&self, key: KeyId, cost: Amount) -> Result<StoreError> {
        let row = sqlx::query(
            "SELECT revoked_ms, budget_micro, spent_micro, held_micro FROM api_keys WHERE id = $1",
        )
        .bind(key.0)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(StoreError::KeyNotFound(key));
        };
        let revoked: Option<i64> = row.try_get("revoked_ms")?;
        if revoked.is_some() {
            return Ok(StoreError::KeyRevoked(key));
        }
        let budget: Option<i64> = row.try_get("budget_micro")?;
        let spent = Amount(from_db(row.try_get("spent_micro")?, "spent")?);
        let held = Amount(from_db(row.try_get("held_micro")?, "held")?);
        match budget {
            Some(b) => Ok(StoreError::OverBudget {
                budget: Amount(from_db(b, "budget")?),
                spent,
                held,
                cost,
            }),
            None => Ok(StoreError::OutOfRange("key spend after charge")),
        }
    }
}
