-- Restarts (keep in step with ../sqlite/0006_restarts.sql, which
-- explains them).

ALTER TABLE jobs ADD COLUMN resubmit_of BIGINT REFERENCES jobs (id);
ALTER TABLE job_items ADD COLUMN seed BIGINT;
ALTER TABLE jobs ADD COLUMN reruns BIGINT NOT NULL DEFAULT 0 CHECK (reruns >= 0);
DROP INDEX jobs_backlog;
CREATE INDEX jobs_backlog ON jobs (priority, id) WHERE status = 'running' AND (dispatched < total_tasks OR reruns > 0);

ALTER TABLE tasks DROP CONSTRAINT tasks_job_id_seq_key;
ALTER TABLE tasks ADD COLUMN replaced_by BIGINT;
CREATE UNIQUE INDEX tasks_current ON tasks (job_id, seq) WHERE replaced_by IS NULL;
CREATE INDEX tasks_reruns ON tasks (job_id, seq) WHERE state = 'pending';
