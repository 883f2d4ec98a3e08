-- Utilization over time (keep in step with ../sqlite/0018_utilization.sql).
--
-- One row per live worker per sample (every --utilization-every), and one
-- with worker '*' holding the fleet's totals at that sample (so a sample
-- with no worker still counts). slots: the worker's capacity; busy: its
-- slots running a task, on average between its last two heartbeats;
-- started and finished: tasks it began and ended since its previous
-- sample. Rows older than --retain are deleted.
CREATE TABLE utilization (
    at BIGINT NOT NULL,
    worker TEXT NOT NULL,
    slots BIGINT NOT NULL CHECK (slots >= 0),
    busy DOUBLE PRECISION NOT NULL CHECK (busy >= 0 AND busy <= slots),
    started BIGINT NOT NULL CHECK (started >= 0),
    finished BIGINT NOT NULL CHECK (finished >= 0),
    PRIMARY KEY (at, worker)
);
CREATE INDEX utilization_worker_at ON utilization (worker, at);
