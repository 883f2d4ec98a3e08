//! The catalogue: modules (content-addressed) and specs (named, versioned,
//! immutable).

use sandmill_runtime::labels::Labels;
use sandmill_runtime::sandbox::{CallKind, Grants, Limits};

use sqlx::QueryBuilder;

use super::types::{JsonText, Text};
use super::{ModuleRow, SpecRow, Store, StoreError, now_ms, on_pool};

const SPEC_COLUMNS: &str =
    "tenant, name, version, module_hash, kind, limits, grants, labels, created_at";

/// A spec version to register.
#[derive(Clone, Debug)]
pub struct NewSpec {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Module hash.
    pub module_hash: String,
    /// Call kind.
    pub kind: CallKind,
    /// Default limits.
    pub limits: Limits,
    /// Default grants.
    pub grants: Grants,
    /// Default labels.
    pub labels: Labels,
}

impl Store {
    /// Records a module; `false` if it was already known.
    pub async fn put_module(
        &self,
        hash: &str,
        size: i64,
        exports: &[CallKind],
    ) -> Result<bool, StoreError> {
        let exports = exports
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(",");
        let done = on_pool!(self, pool => sqlx::query(
            "INSERT INTO modules (hash, size, exports, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.to_owned())
        .bind(size)
        .bind(exports)
        .bind(now_ms())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Records that `tenant` uploaded the blob `hash` (a module or an
    /// input): what it may name in its jobs and specs.
    pub async fn put_upload(&self, tenant: &str, hash: &str, size: i64) -> Result<(), StoreError> {
        on_pool!(self, pool, db => {
            let mut tx = db::begin(pool).await?;
            let added = sqlx::query(
                "INSERT INTO uploads (tenant, hash, created_at, size) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant, hash) DO NOTHING",
            )
            .bind(tenant.to_owned())
            .bind(hash.to_owned())
            .bind(now_ms())
            .bind(size)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Held against the tenant's storage quota once, while kept.
            if added > 0 && size > 0 {
                sqlx::query(
                    "INSERT INTO tenant_storage (tenant, bytes) VALUES ($1, $2) \
                     ON CONFLICT (tenant) DO UPDATE SET bytes = tenant_storage.bytes + EXCLUDED.bytes",
                )
                .bind(tenant.to_owned())
                .bind(size)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Whether `tenant` uploaded the blob `hash`.
    pub async fn uploaded(&self, tenant: &str, hash: &str) -> Result<bool, StoreError> {
        let found = on_pool!(self, pool => sqlx::query(
            "SELECT 1 FROM uploads WHERE tenant = $1 AND hash = $2",
        )
        .bind(tenant.to_owned())
        .bind(hash.to_owned())
        .fetch_optional(pool)
        .await?
        .is_some());
        Ok(found)
    }

    /// A module by hash.
    pub async fn module(&self, hash: &str) -> Result<Option<ModuleRow>, StoreError> {
        let row = on_pool!(self, pool => sqlx::query_as::<_, ModuleRow>(
            "SELECT hash, size, exports, created_at FROM modules WHERE hash = $1",
        )
        .bind(hash.to_owned())
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Modules `tenant` uploaded (every module for `None`), newest first:
    /// the first `limit` after `after` (the last one's creation time and
    /// hash).
    pub async fn modules(
        &self,
        tenant: Option<&str>,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<ModuleRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            let mut q = QueryBuilder::new("SELECT hash, size, exports, created_at FROM modules m WHERE 1 = 1");
            if let Some(tenant) = tenant {
                q.push(" AND EXISTS (SELECT 1 FROM uploads u WHERE u.hash = m.hash AND u.tenant = ")
                    .push_bind(tenant.to_owned())
                    .push(")");
            }
            if let Some((created_at, hash)) = &after {
                q.push(" AND (created_at < ").push_bind(*created_at)
                    .push(" OR (created_at = ").push_bind(*created_at)
                    .push(" AND hash < ").push_bind(hash.clone())
                    .push("))");
            }
            q.push(" ORDER BY created_at DESC, hash DESC LIMIT ").push_bind(limit);
            q.build_query_as::<ModuleRow>().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Registers a spec version. `Ok(false)` when the same name and version
    /// exist with different content (versions are immutable).
    pub async fn put_spec(&self, spec: &NewSpec) -> Result<bool, StoreError> {
        let inserted = on_pool!(self, pool => sqlx::query(
            "INSERT INTO specs (name, version, module_hash, kind, limits, grants, labels, created_at, tenant) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (tenant, name, version) DO NOTHING",
        )
        .bind(spec.name.clone())
        .bind(spec.version.clone())
        .bind(spec.module_hash.clone())
        .bind(Text(spec.kind))
        .bind(JsonText(spec.limits.clone()))
        .bind(JsonText(spec.grants.clone()))
        .bind(JsonText(spec.labels.clone()))
        .bind(now_ms())
        .bind(spec.tenant.clone())
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 1 {
            return Ok(true);
        }
        let existing = self
            .spec(&spec.tenant, &spec.name, Some(&spec.version))
            .await?;
        Ok(existing.is_some_and(|e| {
            e.module_hash == spec.module_hash
                && e.kind.0 == spec.kind
                && e.limits.0 == spec.limits
                && e.grants.0 == spec.grants
                && e.labels.0 == spec.labels
        }))
    }

    /// Spec versions of a tenant (of every tenant: `None`) by name, then
    /// tenant, then newest first: the first `limit` after the cursor
    /// `(name, tenant, created_at, version)`.
    pub async fn specs(
        &self,
        tenant: Option<&str>,
        name: Option<&str>,
        after: Option<(String, String, i64, String)>,
        limit: i64,
    ) -> Result<Vec<SpecRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {SPEC_COLUMNS} FROM specs WHERE 1 = 1"));
            if let Some(tenant) = tenant {
                q.push(" AND tenant = ").push_bind(tenant.to_owned());
            }
            if let Some(name) = name {
                q.push(" AND name = ").push_bind(name.to_owned());
            }
            if let Some((name, tenant, created_at, version)) = after {
                // (name ASC, tenant ASC, created_at DESC, version DESC)
                // strictly after.
                q.push(" AND (name > ").push_bind(name.clone())
                    .push(" OR (name = ").push_bind(name.clone())
                    .push(" AND (tenant > ").push_bind(tenant.clone())
                    .push(" OR (tenant = ").push_bind(tenant)
                    .push(" AND (created_at < ").push_bind(created_at)
                    .push(" OR (created_at = ").push_bind(created_at)
                    .push(" AND version < ").push_bind(version)
                    .push("))))))");
            }
            q.push(" ORDER BY name, tenant, created_at DESC, version DESC LIMIT ").push_bind(limit);
            q.build_query_as::<SpecRow>().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// A tenant's spec by name: the given version, or the newest.
    pub async fn spec(
        &self,
        tenant: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<SpecRow>, StoreError> {
        let row = on_pool!(self, pool => match version {
            Some(version) => sqlx::query_as::<_, SpecRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {SPEC_COLUMNS} FROM specs WHERE name = $1 AND version = $2 AND tenant = $3"
            )))
            .bind(name.to_owned())
            .bind(version.to_owned())
            .bind(tenant.to_owned())
            .fetch_optional(pool)
            .await?,
            None => sqlx::query_as::<_, SpecRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {SPEC_COLUMNS} FROM specs WHERE name = $1 AND tenant = $2 \
                 ORDER BY created_at DESC, version DESC LIMIT 1"
            )))
            .bind(name.to_owned())
            .bind(tenant.to_owned())
            .fetch_optional(pool)
            .await?,
        });
        Ok(row)
    }
}
