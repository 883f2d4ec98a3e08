-- Windowed dispatch, priorities, per-job counters, typed states (keep in
-- step with ../postgres/0003_windows.sql).
--
-- A job's tasks are created as they are dispatched, a window at a time:
-- `dispatched` counts the tasks taken from the job's backlog so far (rows
-- exist only for those). A `count` sweep's backlog is just a number; a
-- sweep over rows or inputs keeps each task's parameters in `job_items`
-- until its turn. Finished tasks are counted in the job row, so a job's
-- counts cost one read however many tasks it has.
--
-- States, statuses, kinds and failure reasons are CHECKed: the names are
-- the Rust enums' (server/src/model.rs, runtime/src/reason.rs); a test
-- keeps them in step. SQLite cannot add a CHECK to a table, so the three
-- tables are rebuilt (children first, so no foreign key ever dangles).

CREATE TABLE jobs_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('task', 'sweep')),
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
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
    finished_at INTEGER
);

CREATE TABLE tasks_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs_new (id),
    seq INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled')),
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
    UNIQUE (job_id, seq)
);

CREATE TABLE attempts_new (
    task_id INTEGER NOT NULL REFERENCES tasks_new (id),
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('succeeded', 'failed')),
    reason TEXT CHECK (reason IN ('timeout', 'out-of-fuel', 'out-of-memory', 'output-too-large',
        'guest-panic', 'trap', 'guest-error', 'module-invalid', 'bad-grant', 'host-error',
        'worker-lost', 'crash-loop', 'queue-timeout', 'store-rejected')),
    error TEXT,
    worker TEXT NOT NULL,
    elapsed_ms INTEGER NOT NULL,
    fuel_used INTEGER,
    log BLOB NOT NULL,
    log_hash TEXT,
    log_size INTEGER NOT NULL,
    log_truncated INTEGER NOT NULL CHECK (log_truncated IN (0, 1)),
    counters TEXT NOT NULL,
    finished_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, attempt)
);

INSERT INTO jobs_new (id, name, kind, status, priority, task_kind, module_hash, limits, grants,
    labels, definition, task_params, task_input_hash, task_input_name, has_items, total_tasks,
    dispatched, succeeded, failed, cancelled, max_attempts, queue_timeout_ms, waiting,
    waiting_since, created_at, updated_at, finished_at)
SELECT id, name, kind, status, 0, task_kind, module_hash, limits, grants,
    labels, definition, '{}', NULL, '-', 0, total_tasks,
    total_tasks,
    (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'succeeded'),
    (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'failed'),
    (SELECT COUNT(*) FROM tasks t WHERE t.job_id = jobs.id AND t.state = 'cancelled'),
    max_attempts, queue_timeout_ms, waiting, waiting_since, created_at, updated_at, finished_at
FROM jobs;

INSERT INTO tasks_new (id, job_id, seq, state, params, input_hash, input_name, attempt, reason,
    error, output, output_hash, output_size, starts, created_at, started_at, finished_at)
SELECT id, job_id, seq, state, params, input_hash, input_name, attempt, reason,
    error, output, output_hash, output_size, starts, created_at, started_at, finished_at
FROM tasks;

INSERT INTO attempts_new (task_id, attempt, state, reason, error, worker, elapsed_ms, fuel_used,
    log, log_hash, log_size, log_truncated, counters, finished_at)
SELECT task_id, attempt, state, reason, error, worker, elapsed_ms, fuel_used,
    log, NULL, length(log), log_truncated, counters, finished_at
FROM attempts;

DROP TABLE attempts;
DROP TABLE tasks;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
ALTER TABLE tasks_new RENAME TO tasks;
ALTER TABLE attempts_new RENAME TO attempts;

-- Job lists page by (updated_at, id); the dispatcher looks at running jobs
-- with a backlog, by priority.
CREATE INDEX jobs_updated ON jobs (updated_at, id);
CREATE INDEX jobs_status_updated ON jobs (status, updated_at, id);
CREATE INDEX jobs_backlog ON jobs (priority, id) WHERE status = 'running' AND dispatched < total_tasks;
-- Task lists page by seq, optionally in one state; live tasks (at most a
-- dispatch window of them) have a small index of their own.
CREATE INDEX tasks_job_state ON tasks (job_id, state, seq);
CREATE INDEX tasks_live ON tasks (job_id, id) WHERE state IN ('queued', 'running');

CREATE TABLE job_items (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    seq INTEGER NOT NULL,
    params TEXT NOT NULL,
    input_hash TEXT,
    input_name TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
