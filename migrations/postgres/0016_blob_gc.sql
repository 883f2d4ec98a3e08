-- Collecting unreferenced blobs (keep in step with ../sqlite/0016_blob_gc.sql).
--
-- blob_marks: the blobs a collection found referenced (by a module, a
-- job, an item, a task, an attempt, a schedule or a map-reduce's run
-- lists), filled anew by each collection; a blob stored before the
-- collection began and not marked is deleted.
CREATE TABLE blob_marks (
    hash TEXT PRIMARY KEY
);
