-- Map-reduce jobs (keep in step with ../sqlite/0004_mapreduce.sql, which
-- explains them).

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('task', 'sweep', 'mapreduce'));
ALTER TABLE jobs ADD COLUMN maps BIGINT CHECK (maps >= 0);
ALTER TABLE jobs ADD COLUMN reducers BIGINT NOT NULL DEFAULT 0 CHECK (reducers >= 0);
ALTER TABLE jobs ADD COLUMN shuffle TEXT;
ALTER TABLE jobs ADD COLUMN planned BIGINT NOT NULL DEFAULT 1 CHECK (planned IN (0, 1));
ALTER TABLE jobs ADD COLUMN counters TEXT NOT NULL DEFAULT '{}';

ALTER TABLE attempts ADD COLUMN started_at BIGINT;
ALTER TABLE tasks ADD COLUMN prior BIGINT;
