-- Subscriptions (keep in step with ../sqlite/0008_subscriptions.sql, which
-- says what they are).
CREATE TABLE subscriptions (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL CHECK (version >= 1),
    subject TEXT NOT NULL,
    queue BIGINT NOT NULL CHECK (queue IN (0, 1)),
    max_in_flight BIGINT NOT NULL CHECK (max_in_flight >= 1),
    keep_ms BIGINT CHECK (keep_ms > 0),
    keep_count BIGINT CHECK (keep_count > 0),
    definition TEXT NOT NULL,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('task', 'sweep', 'mapreduce', 'pipeline', 'step', 'subscription'));
CREATE INDEX tasks_finished ON tasks (job_id, finished_at) WHERE finished_at IS NOT NULL;
