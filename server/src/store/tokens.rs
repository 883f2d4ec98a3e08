//! API tokens: only their sha256 is kept; `id` names one in lists.

use super::{Store, StoreError, now_ms, on_pool};

const TOKEN_COLUMNS: &str = "id, tenant, role, created_at, revoked_at";

/// A token as stored (without its secret, which is never kept).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TokenRow {
    /// Its public name.
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// `admin`, `user` or `reader`.
    pub role: String,
    /// Creation time.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

impl Store {
    /// Stores a token by the hash of its secret.
    pub async fn put_token(
        &self,
        id: &str,
        hash: &str,
        tenant: &str,
        role: &str,
    ) -> Result<TokenRow, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO tokens (id, hash, tenant, role, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING {TOKEN_COLUMNS}"
        )))
        .bind(id.to_owned())
        .bind(hash.to_owned())
        .bind(tenant.to_owned())
        .bind(role.to_owned())
        .bind(now_ms())
        .fetch_one(pool)
        .await?);
        Ok(row)
    }

    /// The live (not revoked) token whose secret hashes to `hash`.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1 AND revoked_at IS NULL"
        )))
        .bind(hash.to_owned())
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Tokens by id: the first `limit` after `after`.
    pub async fn tokens(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TokenRow>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after.unwrap_or_default().to_owned())
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }

    /// Revokes a token; `None` if there is none of that id.
    pub async fn revoke_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, TokenRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING {TOKEN_COLUMNS}"
        )))
        .bind(id.to_owned())
        .bind(now_ms())
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }
}
