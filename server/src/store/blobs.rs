//! Which blobs are referenced: the mark of a blob collection
//! ([`crate::scheduler`]'s `collect_blobs`). A collection clears
//! `blob_marks`, marks every blob a row names (columns that hold a hash,
//! and text that names them: job files, pipeline steps, input slices),
//! then deletes the stored blobs it did not mark. Rows are read a range
//! or a page at a time, so neither the database nor the server holds more
//! than a page.

use std::collections::HashSet;

use sqlx::{QueryBuilder, Row};

use super::{INSERT_CHUNK, NewJob, NewStep, Store, StoreError, on_pool};
use crate::store::DraftInput;

/// Ids per marking statement.
const MARK_RANGE: i64 = 10_000;

/// The columns that hold one blob's hash: (table, id column, hash column).
const HASH_COLUMNS: &[(&str, &str, &str)] = &[
    ("modules", "NULL", "hash"),
    ("jobs", "id", "module_hash"),
    ("jobs", "id", "task_input_hash"),
    ("jobs", "id", "preprocess_hash"),
    ("job_items", "job_id", "input_hash"),
    ("tasks", "id", "input_hash"),
    ("tasks", "id", "output_hash"),
    ("attempts", "task_id", "log_hash"),
];

/// Rows whose text may name blobs, read a page at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobText {
    /// Jobs: their job file, pipeline step and parameters.
    Jobs,
    /// Items with input slices.
    Items,
    /// Tasks with input slices or long parameters.
    Tasks,
    /// Schedules' job files.
    Schedules,
    /// Subscriptions' files.
    Subscriptions,
}

impl BlobText {
    /// Every source.
    pub const ALL: [BlobText; 5] = [
        BlobText::Jobs,
        BlobText::Items,
        BlobText::Tasks,
        BlobText::Schedules,
        BlobText::Subscriptions,
    ];
}

/// Where a page of [`BlobText`] ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextCursor {
    /// Id (or job id).
    pub id: i64,
    /// Seq within the job.
    pub seq: i64,
    /// Name.
    pub name: String,
}

/// A row of [`BlobText`].
#[derive(Clone, Debug)]
pub struct TextRow {
    /// Where it is.
    pub cursor: TextCursor,
    /// Text naming blobs.
    pub texts: Vec<String>,
    /// Parameters that may travel as a blob of their own (long ones;
    /// the caller checks the length).
    pub params: Option<String>,
}

/// The hashes named in `text`: every run of exactly 64 lowercase hex
/// digits (a word of its own). More than the blobs it names is harmless:
/// a marked blob is only kept.
pub fn blob_names(text: &[u8]) -> impl Iterator<Item = String> + '_ {
    let hex = |b: &u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    text.split(move |b| !hex(b))
        .filter(|word| word.len() == 64)
        .map(|word| String::from_utf8_lossy(word).into_owned())
}

impl NewJob {
    /// The blobs it names.
    pub fn blobs(&self) -> Vec<String> {
        let mut names: Vec<String> = blob_names(self.definition.as_bytes()).collect();
        names.push(self.module_hash.clone());
        names.extend(self.task_input.iter().cloned());
        names.push(sandmill_runtime::blob::hash(self.task_params.as_bytes()));
        for item in &self.items {
            names.extend(item.input_hash.iter().cloned());
            names.extend(item.inputs.iter().map(|part| part.hash.clone()));
        }
        names
    }
}

impl NewStep {
    /// The blobs it names.
    pub fn blobs(&self) -> Vec<String> {
        let mut names = self.job.blobs();
        names.extend(self.preprocess.iter().cloned());
        for input in &self.inputs {
            if let DraftInput::Blob { hash, .. } = input {
                names.push(hash.clone());
            }
        }
        names
    }
}

impl Store {
    /// Forgets the marks of the last collection.
    pub async fn clear_blob_marks(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM blob_marks").execute(pool).await?;
        });
        Ok(())
    }

    /// Marks `hashes` (names that are not a blob's are left out).
    pub async fn mark_blobs(&self, hashes: &[String]) -> Result<(), StoreError> {
        let names: Vec<&String> = hashes
            .iter()
            .filter(|h| sandmill_runtime::blob::is_name(h))
            .collect();
        for chunk in names.chunks(INSERT_CHUNK) {
            on_pool!(self, pool => {
                let mut insert = QueryBuilder::new("INSERT INTO blob_marks (hash) ");
                insert.push_values(chunk, |mut row, hash| {
                    row.push_bind(hash.as_str());
                });
                insert.push(" ON CONFLICT DO NOTHING");
                insert.build().execute(pool).await?;
            });
        }
        Ok(())
    }

    /// Which of `hashes` are marked.
    pub async fn marked_blobs(&self, hashes: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut marked = HashSet::new();
        for chunk in hashes.chunks(INSERT_CHUNK) {
            let found: Vec<String> = on_pool!(self, pool => {
                let mut select = QueryBuilder::new("SELECT hash FROM blob_marks WHERE hash IN (");
                let mut list = select.separated(", ");
                for hash in chunk {
                    list.push_bind(hash.as_str());
                }
                select.push(")");
                select
                    .build()
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<_, _>>()?
            });
            marked.extend(found);
        }
        Ok(marked)
    }

    /// Forgets who uploaded `hashes` (deleted blobs; modules stay),
    /// giving their bytes back to their tenants' storage.
    pub async fn forget_uploads(&self, hashes: &[String]) -> Result<(), StoreError> {
        const FORGOTTEN: &str = "NOT EXISTS (SELECT 1 FROM modules WHERE modules.hash = uploads.hash) \
                                 AND uploads.hash IN (";
        for chunk in hashes.chunks(INSERT_CHUNK) {
            on_pool!(self, pool, db => {
                let mut tx = db::begin(pool).await?;
                let mut give_back = QueryBuilder::new(
                    "UPDATE tenant_storage SET bytes = bytes - (SELECT COALESCE(SUM(size), 0) \
                     FROM uploads WHERE uploads.tenant = tenant_storage.tenant AND ",
                );
                give_back.push(FORGOTTEN);
                let mut list = give_back.separated(", ");
                for hash in chunk {
                    list.push_bind(hash.as_str());
                }
                give_back.push("))");
                give_back.build().execute(&mut *tx).await?;
                let mut delete = QueryBuilder::new("DELETE FROM uploads WHERE ");
                delete.push(FORGOTTEN);
                let mut list = delete.separated(", ");
                for hash in chunk {
                    list.push_bind(hash.as_str());
                }
                delete.push(")");
                delete.build().execute(&mut *tx).await?;
                tx.commit().await?;
            });
        }
        Ok(())
    }

    /// Marks every blob a hash column names, a range of ids per
    /// statement, up to the rows there are when each range is reached.
    pub async fn mark_blob_columns(&self) -> Result<(), StoreError> {
        for &(table, id, column) in HASH_COLUMNS {
            if id == "NULL" {
                let statement = format!(
                    "INSERT INTO blob_marks (hash) SELECT DISTINCT {column} FROM {table} \
                     WHERE {column} IS NOT NULL ON CONFLICT DO NOTHING"
                );
                on_pool!(self, pool => {
                    sqlx::query(sqlx::AssertSqlSafe(statement)).execute(pool).await?;
                });
                continue;
            }
            let statement = format!(
                "INSERT INTO blob_marks (hash) SELECT DISTINCT {column} FROM {table} \
                 WHERE {id} >= $1 AND {id} < $2 AND {column} IS NOT NULL ON CONFLICT DO NOTHING"
            );
            let last = format!("SELECT COALESCE(MAX({id}), 0) FROM {table}");
            let mut from = 0i64;
            loop {
                let max: i64 = on_pool!(self, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(last.clone()))
                    .fetch_one(pool)
                    .await?);
                if from > max {
                    break;
                }
                on_pool!(self, pool => {
                    sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
                        .bind(from)
                        .bind(from + MARK_RANGE)
                        .execute(pool)
                        .await?;
                });
                from += MARK_RANGE;
            }
        }
        Ok(())
    }

    /// A page of rows of `source` after `cursor` whose text may name
    /// blobs; parameters longer than `inline` bytes may travel as a blob.
    pub async fn blob_texts(
        &self,
        source: BlobText,
        cursor: &TextCursor,
        inline: usize,
        limit: i64,
    ) -> Result<Vec<TextRow>, StoreError> {
        // Characters, not bytes, in SQL: a lower bound that lets every
        // long one through (the caller counts bytes).
        let chars = i64::try_from(inline / 4).unwrap_or(i64::MAX);
        let sql = match source {
            BlobText::Jobs => {
                "SELECT id, CAST(0 AS BIGINT), '', definition, step_spec, \
                 CASE WHEN LENGTH(task_params) > $2 THEN task_params END \
                 FROM jobs WHERE id > $1 ORDER BY id LIMIT $3"
            }
            BlobText::Tasks => {
                "SELECT id, CAST(0 AS BIGINT), '', inputs, NULL, \
                 CASE WHEN LENGTH(params) > $2 THEN params END \
                 FROM tasks WHERE id > $1 AND (inputs IS NOT NULL OR LENGTH(params) > $2) ORDER BY id LIMIT $3"
            }
            BlobText::Items => {
                "SELECT job_id, seq, '', inputs, NULL, NULL FROM job_items \
                 WHERE (job_id > $1 OR (job_id = $1 AND seq > $2)) AND inputs IS NOT NULL \
                 ORDER BY job_id, seq LIMIT $3"
            }
            BlobText::Schedules => {
                "SELECT CAST(0 AS BIGINT), CAST(0 AS BIGINT), name, job, NULL, NULL FROM schedules \
                 WHERE name > $1 ORDER BY name LIMIT $2"
            }
            BlobText::Subscriptions => {
                "SELECT CAST(0 AS BIGINT), CAST(0 AS BIGINT), name, definition, NULL, NULL \
                 FROM subscriptions WHERE name > $1 ORDER BY name LIMIT $2"
            }
        };
        let rows = on_pool!(self, pool => {
            let query = sqlx::query(sql);
            let query = match source {
                BlobText::Jobs | BlobText::Tasks => query.bind(cursor.id).bind(chars).bind(limit),
                BlobText::Items => query.bind(cursor.id).bind(cursor.seq).bind(limit),
                BlobText::Schedules | BlobText::Subscriptions => {
                    query.bind(cursor.name.clone()).bind(limit)
                }
            };
            query
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| {
                    let texts: Vec<String> = [row.try_get::<Option<String>, _>(3)?, row.try_get(4)?]
                        .into_iter()
                        .flatten()
                        .collect();
                    Ok::<_, sqlx::Error>(TextRow {
                        cursor: TextCursor {
                            id: row.try_get(0)?,
                            seq: row.try_get(1)?,
                            name: row.try_get(2)?,
                        },
                        texts,
                        params: row.try_get(5)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// A page of map-reduce jobs (and steps) after `after`: (id, maps).
    pub async fn mapreduce_jobs(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT id, maps FROM jobs WHERE maps IS NOT NULL AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// A page of a map-reduce job's map outputs after seq `after`: (seq,
    /// inline output, output blob).
    #[allow(clippy::type_complexity)]
    pub async fn map_outputs(
        &self,
        job_id: i64,
        maps: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Option<Vec<u8>>, Option<String>)>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query(
            "SELECT seq, output, output_hash FROM tasks WHERE job_id = $1 AND seq > $2 AND seq < $3 \
             AND (output IS NOT NULL OR output_hash IS NOT NULL) ORDER BY seq LIMIT $4",
        )
        .bind(job_id)
        .bind(after)
        .bind(maps)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<_>, _>>()?);
        Ok(rows)
    }

    /// The input blobs of a map-reduce job's reduces (its run lists),
    /// planned or dispatched.
    pub async fn reduce_inputs(&self, job_id: i64, maps: i64) -> Result<Vec<String>, StoreError> {
        let rows = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT input_hash FROM tasks WHERE job_id = $1 AND seq >= $2 AND input_hash IS NOT NULL \
             UNION SELECT input_hash FROM job_items WHERE job_id = $1 AND seq >= $2 AND input_hash IS NOT NULL",
        )
        .bind(job_id)
        .bind(maps)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_words_of_64_lowercase_hex_digits() {
        let a = "a".repeat(64);
        let b = "0123456789abcdef".repeat(4);
        let text = format!(
            r#"[{{"hash":"{a}","offset":3}},"sha256:{b}", "{}", "{}", "{}"]"#,
            "a".repeat(63),
            "a".repeat(65),
            "A".repeat(64)
        );
        let names: Vec<String> = blob_names(text.as_bytes()).collect();
        assert_eq!(names, vec![a, b]);
        assert_eq!(blob_names(b"").count(), 0);
        assert_eq!(blob_names(&[0xff; 200]).count(), 0);
    }
}
