//! Billing served requests in one transaction: the stacks' units, the user's charge (settling
//! the request's credit hold), the usage records and the payloads kept for auditors commit
//! together, or (on any error) none of it does. A charge that cannot be made fails the whole
//! bill: no request is ever recorded as served at cost 0 because its charge was refused.

use sortition_types::{Amount, StackId};
use sqlx::Row;

use super::faults::Work;
use super::holds::{HoldId, take_hold};
use super::stacks::{insert_payload, insert_usage};
use super::{GatewayStore, KeyId, NewUsage, Payload, Result, StoreError, UserId, to_db};

/// Everything recorded for one request served under a verified receipt.
#[derive(Clone, Debug)]
pub struct Bill {
    /// The stack the request used, and the units reserved on it for the request.
    pub stack: StackId,
    pub reserved: u64,
    /// Units the receipt consumed (at most `reserved`).
    pub used: u64,
    /// What the key's user owes for the request.
    pub price: Amount,
    /// The usage row; its `cost` is set to `price`.
    pub usage: NewUsage,
    /// The request and its receipt, for auditors.
    pub payload: Option<Payload>,
}

/// What billing did.
#[derive(Debug)]
pub struct Billed {
    /// What the user was charged: the bills' prices.
    pub charged: Amount,
    /// Why a stack's reservation could not be settled, if one could not (the rest of the bill
    /// stands: the node served the request and will claim it).
    pub settle_error: Option<StoreError>,
}

impl GatewayStore {
    /// Charges the key for `b` directly (no hold), settles the stack, records the usage and
    /// keeps the payload, in one transaction. Refused, with nothing recorded, when the key is
    /// revoked or its budget or its user's balance cannot take the price.
    pub async fn bill(&self, b: &Bill) -> Result<Billed> {
        let r = self.bill_once(None, std::slice::from_ref(b)).await;
        self.track(Work::Writes, &r);
        r
    }

    /// Settles credit hold `hold` to the bills' total (what was held beyond it goes back to
    /// the credits and off the key's budget; a total above it is charged only if the balance
    /// and budget can take the difference), settles the stacks, records the usage and keeps
    /// the payloads, in one transaction. [`StoreError::HoldNotFound`] if the hold was already
    /// settled or released; on any error nothing is recorded and the hold stays as it was.
    /// Every bill must be for the hold's key.
    pub async fn settle(&self, hold: HoldId, bills: &[Bill]) -> Result<Billed> {
        let r = self.bill_once(Some(hold), bills).await;
        self.track(Work::Writes, &r);
        r
    }

    async fn bill_once(&self, hold: Option<HoldId>, bills: &[Bill]) -> Result<Billed> {
        let Some(first) = bills.first() else {
            return Err(StoreError::OutOfRange("a bill of no request"));
        };
        let key = first.usage.key_id;
        let mut total: u64 = 0;
        for b in bills {
            if b.used > b.reserved {
                return Err(StoreError::OutOfRange("used units above the reservation"));
            }
            if b.usage.key_id != key {
                return Err(StoreError::OutOfRange("bills of several keys"));
            }
            total = total
                .checked_add(b.price.0)
                .ok_or(StoreError::OutOfRange("cost"))?;
        }
        let cost = to_db(total, "cost")?;
        let mut tx = self.begin_write().await?;
        let held = match hold {
            Some(id) => {
                let Some(h) = take_hold(&mut tx, id).await? else {
                    tx.rollback().await?;
                    return Err(StoreError::HoldNotFound(id));
                };
                if h.key != key {
                    tx.rollback().await?;
                    return Err(StoreError::OutOfRange("a bill for another key's hold"));
                }
                Some((h.user, h.amount))
            }
            None => None,
        };
        let charged = match held {
            Some((user, amount)) => charge_held(&mut tx, key, user, amount, cost).await?,
            None => charge_direct(&mut tx, key, cost).await?,
        };
        if let Err(refused) = charged {
            tx.rollback().await?;
            return Err(match refused {
                Refused::Key => self.why_key_refused(key, Amount(total)).await?,
                Refused::Credits(user) => StoreError::InsufficientCredits {
                    balance: self.user(user).await?.credits,
                    cost: Amount(total),
                },
            });
        }
        let mut unsettled = None;
        for b in bills {
            let settled = sqlx::query(
                "UPDATE stacks SET units_reserved = units_reserved - $1, \
                 units_used = units_used + $2 WHERE stack_id = $3 AND units_reserved >= $1",
            )
            .bind(to_db(b.reserved, "units")?)
            .bind(to_db(b.used, "units")?)
            .bind(to_db(b.stack.0, "stack_id")?)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !settled && unsettled.is_none() {
                unsettled = Some(b);
            }
            insert_usage(&mut *tx, &b.usage, b.price).await?;
            if let Some(p) = &b.payload {
                insert_payload(&mut *tx, p).await?;
            }
        }
        tx.commit().await?;
        // An explanation for the log, read after the commit (only on the rare refusal).
        let settle_error = match unsettled {
            None => None,
            Some(b) => Some(match self.stack(b.stack).await {
                Ok(s) => StoreError::OverRelease {
                    stack: b.stack,
                    reserved: s.units_reserved,
                    requested: b.reserved,
                },
                Err(e) => e,
            }),
        };
        Ok(Billed {
            charged: Amount(total),
            settle_error,
        })
    }
}

/// Why a charge matched no row.
enum Refused {
    /// Revoked, or over the key's budget.
    Key,
    /// The user's balance is short.
    Credits(UserId),
}

/// Charges `cost` against a hold of `held` (already taken out of the holds table): the key's
/// hold becomes spend, the user's hold goes back to the credits less the cost. A cost above
/// the hold is charged only if the budget and balance can take the difference.
async fn charge_held(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    key: KeyId,
    user: UserId,
    held: i64,
    cost: i64,
) -> Result<Result<(), Refused>> {
    let keyed = sqlx::query(
        "UPDATE api_keys SET held_micro = held_micro - $1, spent_micro = spent_micro + $2 \
         WHERE id = $3 AND held_micro >= $1 \
         AND ($2 <= $1 OR budget_micro IS NULL OR spent_micro + held_micro - $1 + $2 <= budget_micro)",
    )
    .bind(held)
    .bind(cost)
    .bind(key.0)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0;
    if !keyed {
        return Ok(Err(Refused::Key));
    }
    let debited = sqlx::query(
        "UPDATE users SET credits_micro = credits_micro + $1 - $2, held_micro = held_micro - $1 \
         WHERE id = $3 AND held_micro >= $1 AND credits_micro + $1 >= $2",
    )
    .bind(held)
    .bind(cost)
    .bind(user.0)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0;
    Ok(if debited {
        Ok(())
    } else {
        Err(Refused::Credits(user))
    })
}

/// Charges `cost` to `key` with no hold: its spend (within its budget, counting what it has
/// on hold) and its user's credits.
async fn charge_direct(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    key: KeyId,
    cost: i64,
) -> Result<Result<(), Refused>> {
    let spent = sqlx::query(
        "UPDATE api_keys SET spent_micro = spent_micro + $1 WHERE id = $2 \
         AND revoked_ms IS NULL \
         AND (budget_micro IS NULL OR spent_micro + held_micro + $1 <= budget_micro) \
         RETURNING user_id",
    )
    .bind(cost)
    .bind(key.0)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = spent else {
        return Ok(Err(Refused::Key));
    };
    let user = UserId(row.try_get("user_id")?);
    let debited = sqlx::query(
        "UPDATE users SET credits_micro = credits_micro - $1 WHERE id = $2 AND credits_micro >= $1",
    )
    .bind(cost)
    .bind(user.0)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0;
    Ok(if debited {
        Ok(())
    } else {
        Err(Refused::Credits(user))
    })
}
