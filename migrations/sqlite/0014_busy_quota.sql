-- Quotas of busy time (keep in step with ../postgres/0014_busy_quota.sql).
--
-- busy_ms: the wall time of a tenant's task attempts that ended in the
-- hour (each attempt holds one worker slot, one guest thread, for that
-- long); the last 24 hours of it are held against cpu_seconds_per_day.
ALTER TABLE tenant_hours ADD COLUMN busy_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE quotas ADD COLUMN cpu_seconds_per_day INTEGER CHECK (cpu_seconds_per_day >= 0);
