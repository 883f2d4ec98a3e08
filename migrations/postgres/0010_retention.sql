-- Retention (keep in step with ../sqlite/0010_retention.sql).
--
-- Ended top-level jobs by the time they ended, oldest first: what
-- `--retain` removes.
CREATE INDEX jobs_ended ON jobs (finished_at, id) WHERE parent_id IS NULL AND status <> 'running';
