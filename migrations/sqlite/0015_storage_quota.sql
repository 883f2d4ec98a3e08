-- Quotas of storage (keep in step with ../postgres/0015_storage_quota.sql).
--
-- stored_bytes: the outputs and logs a job's attempts left in the
-- database or the blob store, added as they are recorded; a tenant's
-- stored_bytes is the sum over its kept jobs, kept as a running count
-- (added as attempts are recorded, taken away as jobs are deleted) and
-- held against quotas.storage_bytes.
ALTER TABLE jobs ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE quotas ADD COLUMN storage_bytes INTEGER CHECK (storage_bytes >= 0);
CREATE TABLE tenant_storage (
    tenant TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
);
