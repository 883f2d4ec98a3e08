//! Values the server makes once and keeps (`settings`).

use super::{Store, StoreError, on_pool};

impl Store {
    /// The value of setting `name`, made by `make` and stored the first
    /// time it is asked for; every process on this database gets the same
    /// one (the first stored wins a race).
    pub async fn setting_or(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<String, StoreError> {
        let made = make();
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.to_owned())
        .bind(made)
        .execute(pool)
        .await?
        .rows_affected());
        let value = on_pool!(self, pool => sqlx::query_scalar::<_, String>(
            "SELECT value FROM settings WHERE name = $1",
        )
        .bind(name.to_owned())
        .fetch_one(pool)
        .await?);
        Ok(value)
    }
}
