-- Tenants (keep in step with ../sqlite/0011_tenants.sql).
--
-- Jobs (and through them tasks, outputs and logs), specs, schedules and
-- subscriptions belong to a tenant: the tenant of the token that made
-- them. What was made before tenants belongs to `default`, the tenant of
-- an open server.
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX jobs_tenant ON jobs (tenant, updated_at, id) WHERE parent_id IS NULL;
ALTER TABLE schedules ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE subscriptions ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';

-- Spec names are per tenant.
ALTER TABLE specs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE specs DROP CONSTRAINT specs_pkey;
ALTER TABLE specs ADD PRIMARY KEY (tenant, name, version);
ALTER TABLE specs ALTER COLUMN tenant DROP DEFAULT;

-- Who uploaded what: a tenant may name in its jobs and specs only the
-- modules and inputs it uploaded (blobs are shared by content; uploads
-- are not).
CREATE TABLE uploads (
    tenant TEXT NOT NULL,
    hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, hash)
);
INSERT INTO uploads (tenant, hash, created_at) SELECT 'default', hash, created_at FROM modules;

-- Quotas: what a tenant may have open (tasks not ended, of its running
-- jobs) and start per day. A tenant without a row, or a NULL, has the
-- server's default (`--quota-open-tasks`, `--quota-tasks-per-day`).
CREATE TABLE quotas (
    tenant TEXT PRIMARY KEY,
    open_tasks BIGINT CHECK (open_tasks >= 0),
    tasks_per_day BIGINT CHECK (tasks_per_day >= 0),
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_tenant_running ON jobs (tenant) WHERE status = 'running';
-- Tasks each tenant submitted, by hour (ms since the epoch / 3,600,000):
-- the last 24 rows are its day. Older rows are pruned by retention.
CREATE TABLE tenant_hours (
    tenant TEXT NOT NULL,
    hour BIGINT NOT NULL,
    tasks BIGINT NOT NULL,
    PRIMARY KEY (tenant, hour)
);
