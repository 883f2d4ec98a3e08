-- The peak linear memory of an attempt's guest (keep in step with
-- ../sqlite/0019_attempt_memory.sql), in bytes; NULL where the worker
-- did not say (older workers, attempts that never ran a guest).
ALTER TABLE attempts ADD COLUMN memory_peak BIGINT;
