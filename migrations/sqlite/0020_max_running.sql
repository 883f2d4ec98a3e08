-- A job's cap on its tasks queued or running at once (keep in step with
-- ../postgres/0020_max_running.sql); NULL: no cap but the window's.
ALTER TABLE jobs ADD COLUMN max_running INTEGER;
