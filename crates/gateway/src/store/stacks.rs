//! Stacks the gateway holds (unit reservations), usage records, and audit payloads.

use sortition_types::{Amount, Hash32, ModelId, NodeId, StackId};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{GatewayStore, KeyId, Result, StoreError, UserId, from_db, now_ms, to_db};

/// Where a stack is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackState {
    Active,
    Closed,
}

impl StackState {
    fn as_str(self) -> &'static str {
        match self {
            StackState::Active => "active",
            StackState::Closed => "closed",
        }
    }
    fn parse(s: &str) -> Result<StackState> {
        match s {
            "active" => Ok(StackState::Active),
            "closed" => Ok(StackState::Closed),
            other => Err(StoreError::Corrupt(format!("stack state {other:?}"))),
        }
    }
}

/// A stack of prepaid units on one node for one model, bought by this gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackRecord {
    pub stack_id: StackId,
    pub model: ModelId,
    pub node_id: NodeId,
    /// The gateway's ledger account that owns the stack.
    pub owner: String,
    pub units_total: u64,
    /// Units held by requests in flight.
    pub units_reserved: u64,
    /// Units consumed by finished requests.
    pub units_used: u64,
    pub expires_at_ms: i64,
    pub state: StackState,
}

impl StackRecord {
    /// Units neither reserved nor used.
    pub fn available(&self) -> u64 {
        self.units_total
            .saturating_sub(self.units_reserved)
            .saturating_sub(self.units_used)
    }
}

/// How a request ended, for the usage log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageStatus {
    Ok,
    Failed,
    Cancelled,
}

impl UsageStatus {
    fn as_str(self) -> &'static str {
        match self {
            UsageStatus::Ok => "ok",
            UsageStatus::Failed => "failed",
            UsageStatus::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Result<UsageStatus> {
        match s {
            "ok" => Ok(UsageStatus::Ok),
            "failed" => Ok(UsageStatus::Failed),
            "cancelled" => Ok(UsageStatus::Cancelled),
            other => Err(StoreError::Corrupt(format!("usage status {other:?}"))),
        }
    }
}

/// One served (or failed) request, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUsage {
    pub key_id: KeyId,
    pub user_id: UserId,
    pub model: ModelId,
    pub node_id: NodeId,
    pub stack_id: Option<StackId>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: Amount,
    pub status: UsageStatus,
    /// The node's signed receipt, as JSON, when there is one.
    pub receipt_json: Option<String>,
    pub request_hash: Hash32,
}

/// A usage row read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub id: i64,
    pub usage: NewUsage,
    pub created_ms: i64,
}

/// A request body kept so an auditor can re-execute it, until `expires_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub request_hash: Hash32,
    pub stack_id: StackId,
    /// The receipt's sequence number on the stack.
    pub receipt_seq: u64,
    pub body: Vec<u8>,
    /// The node's signed receipt (JSON), delivered to auditors with the body.
    pub receipt_json: Option<String>,
    /// The answer the user received (JSON text and finish reason), for scoring audits.
    pub answer: Option<Vec<u8>>,
    pub expires_at_ms: i64,
}

fn id_to_db(v: u64, what: &'static str) -> Result<i64> {
    to_db(v, what)
}

fn stack_row(row: &AnyRow) -> Result<StackRecord> {
    let state: String = row.try_get("state")?;
    Ok(StackRecord {
        stack_id: StackId(from_db(row.try_get("stack_id")?, "stack_id")?),
        model: ModelId(row.try_get("model")?),
        node_id: NodeId(from_db(row.try_get("node_id")?, "node_id")?),
        owner: row.try_get("owner")?,
        units_total: from_db(row.try_get("units_total")?, "units_total")?,
        units_reserved: from_db(row.try_get("units_reserved")?, "units_reserved")?,
        units_used: from_db(row.try_get("units_used")?, "units_used")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        state: StackState::parse(&state)?,
    })
}

fn hash_from_db(s: &str) -> Result<Hash32> {
    Hash32::from_hex(s).map_err(|_| StoreError::Corrupt(format!("request_hash {s:?}")))
}

impl GatewayStore {
    /// Records a stack bought on the ledger. Re-inserting the same id changes nothing.
    pub async fn insert_stack(&self, s: &StackRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO stacks (stack_id, model, node_id, owner, units_total, units_reserved, \
             units_used, expires_at_ms, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (stack_id) DO NOTHING",
        )
        .bind(id_to_db(s.stack_id.0, "stack_id")?)
        .bind(s.model.as_str())
        .bind(id_to_db(s.node_id.0, "node_id")?)
        .bind(s.owner.as_str())
        .bind(to_db(s.units_total, "units_total")?)
        .bind(to_db(s.units_reserved, "units_reserved")?)
        .bind(to_db(s.units_used, "units_used")?)
        .bind(s.expires_at_ms)
        .bind(s.state.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One stack.
    pub async fn stack(&self, id: StackId) -> Result<StackRecord> {
        let row = sqlx::query("SELECT * FROM stacks WHERE stack_id = $1")
            .bind(id_to_db(id.0, "stack_id")?)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::StackNotFound(id))?;
        stack_row(&row)
    }

    /// Active, unexpired stacks on `node` for `model`, most free units first.
    pub async fn usable_stacks(
        &self,
        node: NodeId,
        model: &ModelId,
        now_ms: i64,
    ) -> Result<Vec<StackRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM stacks WHERE node_id = $1 AND model = $2 AND state = 'active' \
             AND expires_at_ms > $3 ORDER BY units_total - units_reserved - units_used DESC",
        )
        .bind(id_to_db(node.0, "node_id")?)
        .bind(model.as_str())
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stack_row).collect()
    }

    /// Reserves `n` units for a request, atomically: never more than the stack has free, even
    /// with many gateways' requests racing. Returns the units still free afterwards.
    pub async fn reserve_stack_units(&self, stack: StackId, n: u64, now_ms: i64) -> Result<u64> {
        let n_db = to_db(n, "units")?;
        let row = sqlx::query(
            "UPDATE stacks SET units_reserved = units_reserved + $1 WHERE stack_id = $2 \
             AND state = 'active' AND expires_at_ms > $3 \
             AND units_total - units_reserved - units_used >= $1 \
             RETURNING units_total - units_reserved - units_used AS free",
        )
        .bind(n_db)
        .bind(id_to_db(stack.0, "stack_id")?)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return from_db(row.try_get("free")?, "free units");
        }
        let s = self.stack(stack).await?;
        if s.state != StackState::Active || s.expires_at_ms <= now_ms {
            return Err(StoreError::StackInactive(stack));
        }
        Err(StoreError::StackExhausted {
            stack,
            available: s.available(),
            requested: n,
        })
    }

    /// Reserves `n` units on the usable stack of `node` for `model` with the most free units
    /// (active, expiring after `horizon_ms`), in one atomic statement; `None` if no stack has
    /// `n` units free. The conditions are checked again on the row updated, so concurrent
    /// gateways never overspend a stack.
    pub async fn reserve_on_any_stack(
        &self,
        node: NodeId,
        model: &ModelId,
        n: u64,
        horizon_ms: i64,
    ) -> Result<Option<StackRecord>> {
        let row = sqlx::query(
            "UPDATE stacks SET units_reserved = units_reserved + $1 WHERE stack_id = \
             (SELECT stack_id FROM stacks WHERE node_id = $2 AND model = $3 AND state = 'active' \
             AND expires_at_ms > $4 AND units_total - units_reserved - units_used >= $1 \
             ORDER BY units_total - units_reserved - units_used DESC LIMIT 1) \
             AND state = 'active' AND expires_at_ms > $4 \
             AND units_total - units_reserved - units_used >= $1 RETURNING *",
        )
        .bind(to_db(n, "units")?)
        .bind(id_to_db(node.0, "node_id")?)
        .bind(model.as_str())
        .bind(horizon_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stack_row).transpose()
    }

    /// Returns `n` reserved units unused (the request failed before any work was done).
    pub async fn release(&self, stack: StackId, n: u64) -> Result<()> {
        self.settle_stack_units(stack, n, 0).await
    }

    /// Ends a reservation of `reserved` units of which `used` were consumed; the rest become
    /// free again. Atomic; fails, changing nothing, if fewer than `reserved` are reserved.
    pub async fn settle_stack_units(&self, stack: StackId, reserved: u64, used: u64) -> Result<()> {
        if used > reserved {
            return Err(StoreError::OutOfRange("used units above the reservation"));
        }
        let done = sqlx::query(
            "UPDATE stacks SET units_reserved = units_reserved - $1, units_used = units_used + $2 \
             WHERE stack_id = $3 AND units_reserved >= $1",
        )
        .bind(to_db(reserved, "units")?)
        .bind(to_db(used, "units")?)
        .bind(id_to_db(stack.0, "stack_id")?)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            let s = self.stack(stack).await?;
            return Err(StoreError::OverRelease {
                stack,
                reserved: s.units_reserved,
                requested: reserved,
            });
        }
        Ok(())
    }

    /// Marks a stack closed (settled or expired on the ledger); no new reservations.
    pub async fn close_stack(&self, stack: StackId) -> Result<()> {
        let done = sqlx::query("UPDATE stacks SET state = 'closed' WHERE stack_id = $1")
            .bind(id_to_db(stack.0, "stack_id")?)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::StackNotFound(stack));
        }
        Ok(())
    }

    /// Appends a usage record; returns its id.
    pub async fn record_usage(&self, u: &NewUsage) -> Result<i64> {
        insert_usage(&self.pool, u, u.cost).await
    }

    /// A user's most recent usage, newest first.
    pub async fn usage_for_user(&self, user: UserId, limit: u32) -> Result<Vec<UsageRecord>> {
        let rows = sqlx::query("SELECT * FROM usage WHERE user_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(user.0)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let stack: Option<i64> = row.try_get("stack_id")?;
                let status: String = row.try_get("status")?;
                let hash: String = row.try_get("request_hash")?;
                Ok(UsageRecord {
                    id: row.try_get("id")?,
                    created_ms: row.try_get("created_ms")?,
                    usage: NewUsage {
                        key_id: KeyId(row.try_get("key_id")?),
                        user_id: UserId(row.try_get("user_id")?),
                        model: ModelId(row.try_get("model")?),
                        node_id: NodeId(from_db(row.try_get("node_id")?, "node_id")?),
                        stack_id: stack
                            .map(|s| from_db(s, "stack_id").map(StackId))
                            .transpose()?,
                        prompt_tokens: from_db(row.try_get("prompt_tokens")?, "prompt_tokens")?,
                        completion_tokens: from_db(
                            row.try_get("completion_tokens")?,
                            "completion_tokens",
                        )?,
                        cost: Amount(from_db(row.try_get("cost_micro")?, "cost")?),
                        status: UsageStatus::parse(&status)?,
                        receipt_json: row.try_get("receipt_json")?,
                        request_hash: hash_from_db(&hash)?,
                    },
                })
            })
            .collect()
    }

    /// Keeps a request body (with its receipt and answer) for audit delivery, under the
    /// receipt it belongs to: identical requests on other receipts are kept separately.
    /// Storing the same receipt's payload twice keeps the first.
    pub async fn put_payload(&self, p: &Payload) -> Result<()> {
        let r = insert_payload(&self.pool, p).await;
        self.track(super::faults::Work::Writes, &r);
        r
    }

    /// The payload kept for receipt `seq` of `stack`, if it has not expired at `now_ms`.
    pub async fn payload(&self, stack: StackId, seq: u64, now_ms: i64) -> Result<Option<Payload>> {
        let row = sqlx::query(
            "SELECT * FROM receipt_payloads \
             WHERE stack_id = $1 AND receipt_seq = $2 AND expires_at_ms > $3",
        )
        .bind(id_to_db(stack.0, "stack_id")?)
        .bind(to_db(seq, "receipt_seq")?)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: String = row.try_get("request_hash")?;
        Ok(Some(Payload {
            request_hash: hash_from_db(&hash)?,
            stack_id: StackId(from_db(row.try_get("stack_id")?, "stack_id")?),
            receipt_seq: from_db(row.try_get("receipt_seq")?, "receipt_seq")?,
            body: row.try_get("body")?,
            receipt_json: row.try_get("receipt_json")?,
            answer: row.try_get("answer")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
        }))
    }

    /// The retention sweep: deletes payloads expired at `now_ms`; returns how many.
    pub async fn sweep_payloads(&self, now_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM receipt_payloads WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Appends a usage record through `ex` (the pool, or a transaction), with its cost set to
/// `cost`; returns its id.
pub(super) async fn insert_usage<'e, E>(ex: E, u: &NewUsage, cost: Amount) -> Result<i64>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "INSERT INTO usage (key_id, user_id, model, node_id, stack_id, prompt_tokens, \
         completion_tokens, cost_micro, status, receipt_json, request_hash, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
    )
    .bind(u.key_id.0)
    .bind(u.user_id.0)
    .bind(u.model.as_str())
    .bind(id_to_db(u.node_id.0, "node_id")?)
    .bind(u.stack_id.map(|s| id_to_db(s.0, "stack_id")).transpose()?)
    .bind(to_db(u.prompt_tokens, "prompt_tokens")?)
    .bind(to_db(u.completion_tokens, "completion_tokens")?)
    .bind(to_db(cost.0, "cost")?)
    .bind(u.status.as_str())
    .bind(u.receipt_json.as_deref())
    .bind(u.request_hash.to_hex())
    .bind(now_ms())
    .fetch_one(ex)
    .await?;
    Ok(row.try_get("id")?)
}

/// Keeps a payload through `ex` (the pool, or a transaction); the first one of a receipt wins.
pub(super) async fn insert_payload<'e, E>(ex: E, p: &Payload) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO receipt_payloads \
         (stack_id, receipt_seq, request_hash, body, receipt_json, answer, expires_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (stack_id, receipt_seq) DO NOTHING",
    )
    .bind(id_to_db(p.stack_id.0, "stack_id")?)
    .bind(to_db(p.receipt_seq, "receipt_seq")?)
    .bind(p.request_hash.to_hex())
    .bind(p.body.as_slice())
    .bind(p.receipt_json.as_deref())
    .bind(p.answer.as_deref())
    .bind(p.expires_at_ms)
    .execute(ex)
    .await?;
    Ok(())
}
