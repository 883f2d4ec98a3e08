-- The fleet (keep in step with ../sqlite): labels a job's tasks need, how long they may wait for a
-- worker that has them, why they are waiting now, and how often each task
-- was started (a task whose workers keep dying under it is a crash loop).

ALTER TABLE jobs ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN queue_timeout_ms BIGINT NOT NULL DEFAULT 3600000;
ALTER TABLE jobs ADD COLUMN waiting TEXT;
ALTER TABLE jobs ADD COLUMN waiting_since BIGINT;
ALTER TABLE tasks ADD COLUMN starts BIGINT NOT NULL DEFAULT 0;
