-- Windowed dispatch, priorities, per-job counters, typed states (keep in
-- step with ../sqlite/0003_windows.sql, which explains them).

ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9);
ALTER TABLE jobs ADD COLUMN task_params TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN task_input_hash TEXT;
ALTER TABLE jobs ADD COLUMN task_input_name TEXT NOT NULL DEFAULT '-';
ALTER TABLE jobs ADD COLUMN has_items BIGINT NOT NULL DEFAULT 0 CHECK (has_items IN (0, 1));
ALTER TABLE jobs ADD COLUMN dispatched BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN succeeded BIGINT NOT NULL DEFAULT 0 CHECK (succeeded >= 0);
ALTER TABLE jobs ADD COLUMN failed BIGINT NOT NULL DEFAULT 0 CHECK (failed >= 0);
ALTER TABLE jobs ADD COLUMN cancelled BIGINT NOT NULL DEFAULT 0 CHECK (cancelled >= 0);

UPDATE jobs SET dispatched = total_tasks,
    succeeded = (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'succeeded'),
    failed = (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'failed'),
    cancelled = (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'cancelled');

ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('task', 'sweep'));
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE jobs ADD CONSTRAINT jobs_task_kind_check CHECK (task_kind IN ('map', 'reduce', 'preprocess', 'task'));
ALTER TABLE jobs ADD CONSTRAINT jobs_total_check CHECK (total_tasks >= 0);
ALTER TABLE jobs ADD CONSTRAINT jobs_dispatched_check CHECK (dispatched BETWEEN 0 AND total_tasks);
ALTER TABLE jobs ADD CONSTRAINT jobs_max_attempts_check CHECK (max_attempts >= 1);

ALTER TABLE tasks ALTER COLUMN params DROP NOT NULL;
ALTER TABLE tasks ADD COLUMN seed BIGINT;
ALTER TABLE tasks ALTER COLUMN input_name DROP NOT NULL;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check CHECK (state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE tasks ADD CONSTRAINT tasks_reason_check CHECK (reason IN ('timeout', 'out-of-fuel', 'out-of-memory',
    'output-too-large', 'guest-panic', 'trap', 'guest-error', 'module-invalid', 'bad-grant', 'host-error',
    'worker-lost', 'crash-loop', 'queue-timeout', 'store-rejected'));

ALTER TABLE attempts ADD COLUMN log_hash TEXT;
ALTER TABLE attempts ADD COLUMN log_size BIGINT NOT NULL DEFAULT 0;
UPDATE attempts SET log_size = length(log);
ALTER TABLE attempts ADD CONSTRAINT attempts_state_check CHECK (state IN ('succeeded', 'failed'));
ALTER TABLE attempts ADD CONSTRAINT attempts_reason_check CHECK (reason IN ('timeout', 'out-of-fuel', 'out-of-memory',
    'output-too-large', 'guest-panic', 'trap', 'guest-error', 'module-invalid', 'bad-grant', 'host-error',
    'worker-lost', 'crash-loop', 'queue-timeout', 'store-rejected'));
ALTER TABLE attempts ADD CONSTRAINT attempts_log_truncated_check CHECK (log_truncated IN (0, 1));

DROP INDEX jobs_status_updated;
DROP INDEX jobs_updated;
CREATE INDEX jobs_updated ON jobs (updated_at, id);
CREATE INDEX jobs_status_updated ON jobs (status, updated_at, id);
CREATE INDEX jobs_backlog ON jobs (priority, id) WHERE status = 'running' AND dispatched < total_tasks;

DROP INDEX tasks_job_state;
DROP INDEX tasks_state;
CREATE INDEX tasks_job_state ON tasks (job_id, state, seq);
CREATE INDEX tasks_live ON tasks (job_id, id) WHERE state IN ('queued', 'running');

CREATE TABLE job_items (
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    params TEXT NOT NULL,
    input_hash TEXT,
    input_name TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
