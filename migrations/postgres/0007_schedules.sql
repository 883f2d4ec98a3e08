-- Schedules (keep in step with ../sqlite/0007_schedules.sql).
--
-- A schedule is a job file (modules resolved to `sha256:` hashes) that
-- becomes a new job each time it fires: on a cron expression with
-- seconds (`cron`) or every `every_ms`. `next_at` is the next firing;
-- firing advances it, with a compare-and-set on its old value, to the
-- first time after now (so a server that was down fires once on start:
-- no burst). `overlap` says what a firing does while the previous job
-- (`last_job_id`) still runs: skip it (`skipped` counts), queue it
-- (`queued` = 1 until that job ends), or allow it. A schedule whose job
-- file has a `[controller]` calls it instead, and submits what it returns.
-- Each job a schedule submits names it (`jobs.schedule`).
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    cron TEXT,
    every_ms BIGINT CHECK (every_ms > 0),
    overlap TEXT NOT NULL CHECK (overlap IN ('skip', 'queue', 'allow')),
    paused BIGINT NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    next_at BIGINT NOT NULL,
    queued BIGINT NOT NULL DEFAULT 0 CHECK (queued IN (0, 1)),
    fired BIGINT NOT NULL DEFAULT 0 CHECK (fired >= 0),
    skipped BIGINT NOT NULL DEFAULT 0 CHECK (skipped >= 0),
    last_fired_at BIGINT,
    last_job_id BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK ((cron IS NULL) <> (every_ms IS NULL))
);
CREATE INDEX schedules_due ON schedules (next_at) WHERE paused = 0;

ALTER TABLE jobs ADD COLUMN schedule TEXT;
CREATE INDEX jobs_schedule ON jobs (schedule, id) WHERE schedule IS NOT NULL;
