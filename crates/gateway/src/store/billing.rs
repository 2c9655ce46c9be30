//! Billing a served request in one transaction: the stack's units, the user's charge, the usage
//! record and the payload kept for auditors commit together, with one commit instead of four.

use sortition_types::{Amount, StackId};
use sqlx::Row;

use super::stacks::{insert_payload, insert_usage};
use super::{GatewayStore, NewUsage, Payload, Result, StoreError, UserId, to_db};

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
    /// The usage row; its `cost` is set to what was actually charged.
    pub usage: NewUsage,
    /// The request and its receipt, for auditors.
    pub payload: Option<Payload>,
}

/// What billing did.
#[derive(Debug)]
pub struct Billed {
    /// What the user was charged: the price, or zero when the charge was refused.
    pub charged: Amount,
    /// Why the stack's reservation could not be settled, if it could not.
    pub settle_error: Option<StoreError>,
    /// Why the charge was refused (a concurrent request spent the credits first, the budget
    /// ran out, the key was revoked), if it was. The usage row records the shortfall.
    pub charge_error: Option<StoreError>,
}

impl GatewayStore {
    /// Settles the stack, charges the key, records the usage and keeps the payload, in one
    /// transaction: all of it is committed, or (on a database error) none of it. A refused
    /// charge or an impossible settlement does not stop the rest: the request was served.
    pub async fn bill(&self, b: &Bill) -> Result<Billed> {
        if b.used > b.reserved {
            return Err(StoreError::OutOfRange("used units above the reservation"));
        }
        let c = to_db(b.price.0, "cost")?;
        let key = b.usage.key_id;
        let mut tx = self.begin_write().await?;
        let settled = sqlx::query(
            "UPDATE stacks SET units_reserved = units_reserved - $1, units_used = units_used + $2 \
             WHERE stack_id = $3 AND units_reserved >= $1",
        )
        .bind(to_db(b.reserved, "units")?)
        .bind(to_db(b.used, "units")?)
        .bind(to_db(b.stack.0, "stack_id")?)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        let spent = sqlx::query(
            "UPDATE api_keys SET spent_micro = spent_micro + $1 WHERE id = $2 \
             AND revoked_ms IS NULL AND (budget_micro IS NULL OR spent_micro + $1 <= budget_micro) \
             RETURNING user_id",
        )
        .bind(c)
        .bind(key.0)
        .fetch_optional(&mut *tx)
        .await?;
        let mut ok = false;
        let mut short_user = None;
        if let Some(row) = spent {
            let user = UserId(row.try_get("user_id")?);
            let debited = sqlx::query(
                "UPDATE users SET credits_micro = credits_micro - $1 \
                 WHERE id = $2 AND credits_micro >= $1",
            )
            .bind(c)
            .bind(user.0)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if debited {
                ok = true;
            } else {
                // Undo the key's spend inside the same transaction: nothing was charged.
                sqlx::query("UPDATE api_keys SET spent_micro = spent_micro - $1 WHERE id = $2")
                    .bind(c)
                    .bind(key.0)
                    .execute(&mut *tx)
                    .await?;
                short_user = Some(user);
            }
        }
        let charged = if ok { b.price } else { Amount::ZERO };
        insert_usage(&mut *tx, &b.usage, charged).await?;
        if let Some(p) = &b.payload {
            insert_payload(&mut *tx, p).await?;
        }
        tx.commit().await?;
        // Explanations for the log, read after the commit (only on the rare refusals).
        let settle_error = if settled {
            None
        } else {
            Some(match self.stack(b.stack).await {
                Ok(s) => StoreError::OverRelease {
                    stack: b.stack,
                    reserved: s.units_reserved,
                    requested: b.reserved,
                },
                Err(e) => e,
            })
        };
        let charge_error = match (ok, short_user) {
            (true, _) => None,
            (false, Some(user)) => Some(StoreError::InsufficientCredits {
                balance: self.user(user).await.map(|u| u.credits).unwrap_or_default(),
                cost: b.price,
            }),
            (false, None) => Some(self.why_key_refused(key, b.price).await?),
        };
        Ok(Billed {
            charged,
            settle_error,
            charge_error,
        })
    }
}
