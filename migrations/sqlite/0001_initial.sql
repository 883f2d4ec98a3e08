-- Sandmill's schema, SQLite dialect. Keep in step with ../postgres.
-- Times are milliseconds since the Unix epoch; JSON is stored as text.

CREATE TABLE modules (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    exports TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE specs (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    module_hash TEXT NOT NULL REFERENCES modules (hash),
    kind TEXT NOT NULL,
    limits TEXT NOT NULL,
    grants TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    task_kind TEXT NOT NULL,
    module_hash TEXT NOT NULL REFERENCES modules (hash),
    limits TEXT NOT NULL,
    grants TEXT NOT NULL,
    definition TEXT NOT NULL,
    total_tasks INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX jobs_status_updated ON jobs (status, updated_at);
CREATE INDEX jobs_updated ON jobs (updated_at);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    input_hash TEXT,
    input_name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    reason TEXT,
    error TEXT,
    output BLOB,
    output_hash TEXT,
    output_size INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    UNIQUE (job_id, seq)
);
CREATE INDEX tasks_job_state ON tasks (job_id, state);
CREATE INDEX tasks_state ON tasks (state);

CREATE TABLE attempts (
    task_id INTEGER NOT NULL REFERENCES tasks (id),
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    error TEXT,
    worker TEXT NOT NULL,
    elapsed_ms INTEGER NOT NULL,
    fuel_used INTEGER,
    log BLOB NOT NULL,
    log_truncated INTEGER NOT NULL,
    counters TEXT NOT NULL,
    finished_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
