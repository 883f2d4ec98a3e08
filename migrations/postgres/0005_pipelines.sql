-- Pipelines (keep in step with ../sqlite/0005_pipelines.sql, which
-- explains them).

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('task', 'sweep', 'mapreduce', 'pipeline', 'step'));
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'blocked'));
ALTER TABLE jobs ADD COLUMN parent_id BIGINT REFERENCES jobs (id);
ALTER TABLE jobs ADD COLUMN step TEXT;
ALTER TABLE jobs ADD COLUMN step_spec TEXT;
ALTER TABLE jobs ADD COLUMN preprocess_hash TEXT;
ALTER TABLE jobs ADD COLUMN cache BIGINT NOT NULL DEFAULT 1 CHECK (cache IN (0, 1));
ALTER TABLE jobs ADD COLUMN cached BIGINT NOT NULL DEFAULT 0 CHECK (cached >= 0);
ALTER TABLE jobs ADD COLUMN retry_backoff_ms BIGINT NOT NULL DEFAULT 0 CHECK (retry_backoff_ms >= 0);
CREATE INDEX jobs_parent ON jobs (parent_id, status) WHERE parent_id IS NOT NULL;
CREATE INDEX jobs_top ON jobs (updated_at, id) WHERE parent_id IS NULL;

ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check CHECK (state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'cached'));
ALTER TABLE tasks ADD COLUMN inputs TEXT;
ALTER TABLE tasks ADD COLUMN cache_key TEXT;
ALTER TABLE tasks ADD COLUMN restart_of BIGINT REFERENCES tasks (id);
CREATE INDEX tasks_cache ON tasks (cache_key) WHERE cache_key IS NOT NULL AND state IN ('succeeded', 'cached');
CREATE INDEX tasks_restarts ON tasks (restart_of) WHERE restart_of IS NOT NULL;

ALTER TABLE job_items ADD COLUMN inputs TEXT;

CREATE TABLE job_deps (
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    needs_id BIGINT NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, needs_id)
);
CREATE INDEX job_deps_needs ON job_deps (needs_id);
