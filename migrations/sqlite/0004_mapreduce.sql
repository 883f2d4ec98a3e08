-- no-transaction
-- Map-reduce jobs (keep in step with ../postgres/0004_mapreduce.sql).
--
-- A map-reduce job's backlog starts as its maps (one job_item per split);
-- `maps` and `reducers` say how many of each it has, `shuffle` its
-- settings (JSON: buffer, combine, speculation). When the last map
-- succeeds, the scheduler writes each reducer's run list and appends the
-- reduces to the backlog (`planned` = 1, `total_tasks` grows by
-- `reducers`): until then the job cannot end (every other job is planned
-- whole when it is accepted). `counters` sums the guests'
-- counters of every task's successful attempt. An attempt keeps when its
-- worker began it (`started_at`, the worker's clock).
--
-- SQLite cannot change a CHECK: the jobs table is rebuilt, as SQLite's
-- documentation says to (foreign keys off, one transaction, a check before
-- the commit), so the tasks' and job_items' references to `jobs` name the
-- new table.

PRAGMA foreign_keys = OFF;
BEGIN;

CREATE TABLE jobs_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('task', 'sweep', 'mapreduce')),
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
    finished_at INTEGER,
    maps INTEGER CHECK (maps >= 0),
    reducers INTEGER NOT NULL DEFAULT 0 CHECK (reducers >= 0),
    shuffle TEXT,
    planned INTEGER NOT NULL DEFAULT 1 CHECK (planned IN (0, 1)),
    counters TEXT NOT NULL DEFAULT '{}'
);

INSERT INTO jobs_new (id, name, kind, status, priority, task_kind, module_hash, limits, grants,
    labels, definition, task_params, task_input_hash, task_input_name, has_items, total_tasks,
    dispatched, succeeded, failed, cancelled, max_attempts, queue_timeout_ms, waiting,
    waiting_since, created_at, updated_at, finished_at)
SELECT id, name, kind, status, priority, task_kind, module_hash, limits, grants,
    labels, definition, task_params, task_input_hash, task_input_name, has_items, total_tasks,
    dispatched, succeeded, failed, cancelled, max_attempts, queue_timeout_ms, waiting,
    waiting_since, created_at, updated_at, finished_at
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

CREATE INDEX jobs_updated ON jobs (updated_at, id);
CREATE INDEX jobs_status_updated ON jobs (status, updated_at, id);
CREATE INDEX jobs_backlog ON jobs (priority, id) WHERE status = 'running' AND dispatched < total_tasks;

ALTER TABLE attempts ADD COLUMN started_at INTEGER;
-- A running task with a backup attempt (speculative execution): its
-- `attempt` is the backup's, `prior` the attempt backed up; a result of
-- either counts, whichever ends first.
ALTER TABLE tasks ADD COLUMN prior INTEGER;

PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
