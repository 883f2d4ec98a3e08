-- no-transaction
-- Restarts (keep in step with ../postgres/0006_restarts.sql).
--
-- A task run again (`sandmill restart`, `sandmill retry`) gets a new row
-- at the same place in its job (`seq`), linked to the one it replaces by
-- `restart_of`; the old row stays, readable, with `replaced_by` set to the
-- new run (or, for the tasks of a step re-planned after a restart
-- upstream, to the restarted run that caused it). Only rows with no
-- `replaced_by` count: one per place (`tasks_current`). A new run waits
-- as `pending` until the dispatcher has room for it (`jobs.reruns` counts
-- them), so that re-running a million tasks stays within the window.
--
-- `sandmill resubmit` makes a new job of an old one's tasks, with other
-- limits: `resubmit_of` links it to the old, and each of its items keeps
-- the seed its task had (`job_items.seed`), so it computes the same.
--
-- SQLite cannot drop a UNIQUE constraint: tasks is rebuilt as in 0005.

PRAGMA foreign_keys = OFF;
BEGIN;

ALTER TABLE jobs ADD COLUMN resubmit_of INTEGER REFERENCES jobs (id);
ALTER TABLE job_items ADD COLUMN seed INTEGER;
ALTER TABLE jobs ADD COLUMN reruns INTEGER NOT NULL DEFAULT 0 CHECK (reruns >= 0);
DROP INDEX jobs_backlog;
CREATE INDEX jobs_backlog ON jobs (priority, id) WHERE status = 'running' AND (dispatched < total_tasks OR reruns > 0);

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
    replaced_by INTEGER
);

INSERT INTO tasks_new (id, job_id, seq, state, params, input_hash, input_name, attempt, reason,
    error, output, output_hash, output_size, starts, seed, created_at, started_at, finished_at, prior,
    inputs, cache_key, restart_of)
SELECT id, job_id, seq, state, params, input_hash, input_name, attempt, reason,
    error, output, output_hash, output_size, starts, seed, created_at, started_at, finished_at, prior,
    inputs, cache_key, restart_of
FROM tasks;

DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;

CREATE INDEX tasks_job_state ON tasks (job_id, state, seq);
CREATE INDEX tasks_live ON tasks (job_id, id) WHERE state IN ('queued', 'running');
CREATE INDEX tasks_cache ON tasks (cache_key) WHERE cache_key IS NOT NULL AND state IN ('succeeded', 'cached');
CREATE INDEX tasks_restarts ON tasks (restart_of) WHERE restart_of IS NOT NULL;
CREATE UNIQUE INDEX tasks_current ON tasks (job_id, seq) WHERE replaced_by IS NULL;
CREATE INDEX tasks_reruns ON tasks (job_id, seq) WHERE state = 'pending';

PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
