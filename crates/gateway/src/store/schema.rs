//! The schema, created at open. Every statement is idempotent (`IF NOT EXISTS`), and the whole
//! migration runs in one write transaction (plus an advisory lock on PostgreSQL), so gateways
//! that start together do not race.

use sqlx::AssertSqlSafe;

use super::{Backend, GatewayStore, Result};

/// Tables and indexes. `{id}` and `{blob}` are filled in per backend.
const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS users (
        id {id},
        name TEXT NOT NULL,
        credits_micro BIGINT NOT NULL DEFAULT 0 CHECK (credits_micro >= 0),
        created_ms BIGINT NOT NULL,
        held_micro BIGINT NOT NULL DEFAULT 0 CHECK (held_micro >= 0)
    )",
    "CREATE TABLE IF NOT EXISTS api_keys (
        id {id},
        user_id BIGINT NOT NULL REFERENCES users(id),
        prefix TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT,
        rate_limit_rpm BIGINT NOT NULL CHECK (rate_limit_rpm > 0),
        budget_micro BIGINT CHECK (budget_micro IS NULL OR budget_micro >= 0),
        spent_micro BIGINT NOT NULL DEFAULT 0 CHECK (spent_micro >= 0),
        held_micro BIGINT NOT NULL DEFAULT 0 CHECK (held_micro >= 0)
    )",
    "CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys (user_id)",
    "CREATE TABLE IF NOT EXISTS usage (
        id {id},
        key_id BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        model TEXT NOT NULL,
        node_id BIGINT NOT NULL,
        stack_id BIGINT,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost_micro BIGINT NOT NULL,
        status TEXT NOT NULL,
        receipt_json TEXT,
        request_hash TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS usage_user_time ON usage (user_id, created_ms)",
    "CREATE TABLE IF NOT EXISTS stacks (
        stack_id BIGINT PRIMARY KEY,
        model TEXT NOT NULL,
        node_id BIGINT NOT NULL,
        owner TEXT NOT NULL,
        units_total BIGINT NOT NULL CHECK (units_total >= 0),
        units_reserved BIGINT NOT NULL DEFAULT 0 CHECK (units_reserved >= 0),
        units_used BIGINT NOT NULL DEFAULT 0 CHECK (units_used >= 0),
        expires_at_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        CHECK (units_reserved + units_used <= units_total)
    )",
    "CREATE INDEX IF NOT EXISTS stacks_node_model ON stacks (node_id, model)",
    // Request payloads kept for auditors, one per receipt (identical requests on different
    // receipts are different payloads). Replaces the `payloads` table of earlier versions,
    // which was keyed by request hash alone and is no longer read.
    "CREATE TABLE IF NOT EXISTS receipt_payloads (
        stack_id BIGINT NOT NULL,
        receipt_seq BIGINT NOT NULL,
        request_hash TEXT NOT NULL,
        body {blob} NOT NULL,
        receipt_json TEXT,
        answer {blob},
        expires_at_ms BIGINT NOT NULL,
        PRIMARY KEY (stack_id, receipt_seq)
    )",
    "CREATE INDEX IF NOT EXISTS receipt_payloads_expiry ON receipt_payloads (expires_at_ms)",
    // Credit holds: the worst-case cost of a request in flight, taken from its user's credits
    // (into `users.held_micro`) and counted against its key's budget (`api_keys.held_micro`)
    // before any node is asked; settled to the actual cost, or released, exactly once (the
    // row is deleted by whichever comes first). A hold outlives its request only if the
    // gateway died meanwhile: it is released when it expires.
    "CREATE TABLE IF NOT EXISTS credit_holds (
        id {id},
        key_id BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        amount_micro BIGINT NOT NULL CHECK (amount_micro >= 0),
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS credit_holds_expiry ON credit_holds (expires_ms)",
    // Small facts about the store itself (e.g. the write probe that tells a healed store).
    "CREATE TABLE IF NOT EXISTS store_meta (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    )",
];

/// Columns added after their table was first released: `(table, column, definition)`. Added
/// to databases created before them (the `CREATE TABLE`s above already carry them).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    (
        "users",
        "held_micro",
        "BIGINT NOT NULL DEFAULT 0 CHECK (held_micro >= 0)",
    ),
    (
        "api_keys",
        "held_micro",
        "BIGINT NOT NULL DEFAULT 0 CHECK (held_micro >= 0)",
    ),
];

/// A constant key for `pg_advisory_xact_lock`, so concurrent migrations serialize.
const PG_MIGRATION_LOCK: i64 = 0x5052_5449_5449_4f4e; // "SORTITION"-ish

fn render(stmt: &str, backend: Backend) -> String {
    let (id, blob) = match backend {
        Backend::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
        Backend::Postgres => ("BIGSERIAL PRIMARY KEY", "BYTEA"),
    };
    stmt.replace("{id}", id).replace("{blob}", blob)
}

pub(super) async fn migrate(store: &GatewayStore) -> Result<()> {
    if store.backend == Backend::Sqlite {
        // Persistent for the file: readers never block the writer.
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&store.pool)
            .await?;
    }
    let mut tx = store.begin_write().await?;
    if store.backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
    }
    for stmt in DDL {
        // The DDL is constant text with constant substitutions: no input reaches it.
        sqlx::query(AssertSqlSafe(render(stmt, store.backend)))
            .execute(&mut *tx)
            .await?;
    }
    for (table, column, definition) in ADDED_COLUMNS {
        let present = match store.backend {
            Backend::Sqlite => {
                use sqlx::Row;
                let sql = format!(
                    "SELECT COUNT(*) AS n FROM pragma_table_info('{table}') WHERE name = '{column}'"
                );
                // Constant names only: no input reaches this text.
                let row = sqlx::query(AssertSqlSafe(sql)).fetch_one(&mut *tx).await?;
                row.try_get::<i64, _>("n")? > 0
            }
            // PostgreSQL says it itself (`IF NOT EXISTS`).
            Backend::Postgres => false,
        };
        if !present {
            let if_not = match store.backend {
                Backend::Sqlite => "",
                Backend::Postgres => "IF NOT EXISTS ",
            };
            let sql = format!("ALTER TABLE {table} ADD COLUMN {if_not}{column} {definition}");
            sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rendering_fills_every_placeholder() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            for stmt in DDL {
                assert!(!render(stmt, backend).contains('{'), "{stmt}");
            }
        }
    }
}
