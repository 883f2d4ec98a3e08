-- no-transaction
-- Pipelines (keep in step with ../postgres/0005_pipelines.sql).
--
-- A `[[step]]` job is a `pipeline` job with one `step` job per step
-- (`parent_id`, `step` its name, `step_spec` JSON: its inputs, fan-out and
-- preprocessor). `job_deps` lists the steps each step reads. A step is
-- accepted with nothing planned (`planned` = 0); when every step it reads
-- has succeeded, the planner gives it its tasks in one transaction
-- (guarded by `planned` = 0, so exactly once); when one of them failed
-- or was blocked, it ends `blocked`. The pipeline ends when every step has.
--
-- Tasks may read several inputs (`inputs`, JSON: blob, offset, length),
-- and carry their cache key (`cache_key`: the hash of what they compute);
-- a task whose key already has a successful output takes it (`cached`,
-- counted in the job's `cached`). A step's retries wait
-- `retry_backoff_ms` before they are published. `restart_of` links a task run again by
-- hand to the one it replaces.
--
-- SQLite cannot change a CHECK: jobs and tasks are rebuilt as in 0004.

PRAGMA foreign_keys = OFF;
BEGIN;

CREATE TABLE jobs_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('task', 'sweep', 'mapreduce', 'pipeline', 'step')),
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'blocked')),
    priority INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 9),
    task_kind TEXT NOT NULL CHECK (task_kind IN ('map', 'reduce', 'preprocess', 'task')),
    module_hash TEXT NOT NULL REFERENCES modules (hash),
    limits TEXT NOT NULL,
    grants TEXT NOT NULL,
    labels TEXT NOT NULL,
    definition TEXT NOT NULL,
    task_params TEXT NOT NULL,
    task_input_hash TEXT,
    task_input_name TEXT NOT NULL,
    has_items INTEGER NOT NULL CHECK (has_items IN (0, 1)),
    total_tasks INTEGER NOT NULL CHECK (total_tasks >= 0),
    dispatched INTEGER NOT NULL CHECK (dispatched BETWEEN 0 AND total_tasks),
    succeeded INTEGER NOT NULL CHECK (succeeded >= 0),
    failed INTEGER NOT NULL CHECK (failed >= 0),
    cancelled INTEGER NOT NULL CHECK (cancelled >= 0),
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    queue_timeout_ms INTEGER NOT NULL,
    waiting TEXT,
    waiting_since INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER,
    maps INTEGER CHECK (maps >= 0),
    reducers INTEGER NOT NULL DEFAULT 0 CHECK (reducers >= 0),
    shuffle TEXT,
    planned INTEGER NOT NULL DEFAULT 1 CHECK (planned IN (0, 1)),
    counters TEXT NOT NULL DEFAULT '{}',
    parent_id INTEGER REFERENCES jobs (id),
    step TEXT,
    step_spec TEXT,
    preprocess_hash TEXT,
    cache INTEGER NOT NULL DEFAULT 1 CHECK (cache IN (0, 1)),
    cached INTEGER NOT NULL DEFAULT 0 CHECK (cached >= 0),
    retry_backoff_ms INTEGER NOT NULL DEFAULT 0 CHECK (retry_backoff_ms >= 0)
);

INSERT INTO jobs_new (id, name, kind, status, priority, task_kind, module_hash, limits, grants,
    labels, definition, task_params, task_input_hash, task_input_name, has_items, total_tasks,
    dispatched, succeeded, failed, cancelled, max_attempts, queue_timeout_ms, waiting,
    waiting_since, created_at, updated_at, finished_at, maps, reducers, shuffle, planned, counters)
SELECT id, name, kind, status, priority, task_kind, module_hash, limits, grants,
    labels, definition, task_params, task_input_hash, task_input_name, has_items, total_tasks,
    dispatched, succeeded, failed, cancelled, max_attempts, queue_timeout_ms, waiting,
    waiting_since, created_at, updated_at, finished_at, maps, reducers, shuffle, planned, counters
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

CREATE INDEX jobs_updated ON jobs (updated_at, id);
CREATE INDEX jobs_status_updated ON jobs (status, updated_at, id);
CREATE INDEX jobs_backlog ON jobs (priority, id) WHERE status = 'running' AND dispatched < total_tasks;
CREATE INDEX jobs_parent ON jobs (parent_id, status) WHERE parent_id IS NOT NULL;
CREATE INDEX jobs_top ON jobs (updated_at, id) WHERE parent_id IS NULL;

CREATE TABLE tasks_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    seq INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'cached')),
    params TEXT,
    input_hash TEXT,
    input_name TEXT,
    attempt INTEGER NOT NULL,
    reason TEXT CHECK (reason IN ('timeout', 'out-of-fuel', 'out-of-memory', 'output-too-large',
        'guest-panic', 'trap', 'guest-error', 'module-invalid', 'bad-grant', 'host-error',
        'worker-lost', 'crash-loop', 'queue-timeout', 'store-rejected')),
    error TEXT,
    output BLOB,
    output_hash TEXT,
    output_size INTEGER,
    starts INTEGER NOT NULL,
    seed INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    prior INTEGER,
    inputs TEXT,
    cache_key TEXT,
    restart_of INTEGER REFERENCES tasks (id),
    UNIQUE (job_id, seq)
);

INSERT INTO tasks_new (id, job_id, seq, state, params, input_hash, input_name, attempt, reason,
    error, output, output_hash, output_size, starts, seed, created_at, started_at, finished_at, prior)
SELECT id, job_id, seq, state, params, input_hash, input_name, attempt, reason,
    error, output, output_hash, output_size, starts, seed, created_at, started_at, finished_at, prior
FROM tasks;

DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;

CREATE INDEX tasks_job_state ON tasks (job_id, state, seq);
CREATE INDEX tasks_live ON tasks (job_id, id) WHERE state IN ('queued', 'running');
CREATE INDEX tasks_cache ON tasks (cache_key) WHERE cache_key IS NOT NULL AND state IN ('succeeded', 'cached');
CREATE INDEX tasks_restarts ON tasks (restart_of) WHERE restart_of IS NOT NULL;

ALTER TABLE job_items ADD COLUMN inputs TEXT;

CREATE TABLE job_deps (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    needs_id INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, needs_id)
);
CREATE INDEX job_deps_needs ON job_deps (needs_id);

PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
