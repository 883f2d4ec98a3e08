-- no-transaction
-- Subscriptions (keep in step with ../postgres/0008_subscriptions.sql).
--
-- A subscription points a function at a NATS subject: each message
-- becomes a task of the subscription's job (kind `subscription`), which
-- never ends on its own: it ends when the subscription is deleted or
-- replaced by a new version. A message from a durable subscription
-- (`queue` = 1: a JetStream stream captures the subject) is its task's
-- `seq` (the stream sequence), so a redelivered message finds its task
-- instead of making a second one; one from core NATS gets the next seq.
-- Its failed tasks are its dead letters. `keep_ms` / `keep_count` bound
-- how long (or how many) finished tasks are kept.
--
-- SQLite cannot change a CHECK: jobs is rebuilt as in 0005.

PRAGMA foreign_keys = OFF;
BEGIN;

CREATE TABLE subscriptions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL CHECK (version >= 1),
    subject TEXT NOT NULL,
    queue INTEGER NOT NULL CHECK (queue IN (0, 1)),
    max_in_flight INTEGER NOT NULL CHECK (max_in_flight >= 1),
    keep_ms INTEGER CHECK (keep_ms > 0),
    keep_count INTEGER CHECK (keep_count > 0),
    definition TEXT NOT NULL,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE jobs_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('task', 'sweep', 'mapreduce', 'pipeline', 'step', 'subscription')),
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
    retry_backoff_ms INTEGER NOT NULL DEFAULT 0 CHECK (retry_backoff_ms >= 0),
    resubmit_of INTEGER REFERENCES jobs (id),
    reruns INTEGER NOT NULL DEFAULT 0 CHECK (reruns >= 0),
    schedule TEXT
);

INSERT INTO jobs_new (id, name, kind, status, priority, task_kind, module_hash, limits, grants,
    labels, definition, task_params, task_input_hash, task_input_name, has_items, total_tasks,
    dispatched, succeeded, failed, cancelled, max_attempts, queue_timeout_ms, waiting,
    waiting_since, created_at, updated_at, finished_at, maps, reducers, shuffle, planned, counters,
    parent_id, step, step_spec, preprocess_hash, cache, cached, retry_backoff_ms, resubmit_of,
    reruns, schedule)
SELECT id, name, kind, status, priority, task_kind, module_hash, limits, grants,
    labels, definition, task_params, task_input_hash, task_input_name, has_items, total_tasks,
    dispatched, succeeded, failed, cancelled, max_attempts, queue_timeout_ms, waiting,
    waiting_since, created_at, updated_at, finished_at, maps, reducers, shuffle, planned, counters,
    parent_id, step, step_spec, preprocess_hash, cache, cached, retry_backoff_ms, resubmit_of,
    reruns, schedule
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

CREATE INDEX jobs_updated ON jobs (updated_at, id);
CREATE INDEX jobs_status_updated ON jobs (status, updated_at, id);
CREATE INDEX jobs_parent ON jobs (parent_id, status) WHERE parent_id IS NOT NULL;
CREATE INDEX jobs_top ON jobs (updated_at, id) WHERE parent_id IS NULL;
CREATE INDEX jobs_backlog ON jobs (priority, id) WHERE status = 'running' AND (dispatched < total_tasks OR reruns > 0);
CREATE INDEX jobs_schedule ON jobs (schedule, id) WHERE schedule IS NOT NULL;
-- Retention walks a subscription's finished tasks oldest first.
CREATE INDEX tasks_finished ON tasks (job_id, finished_at) WHERE finished_at IS NOT NULL;

PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
