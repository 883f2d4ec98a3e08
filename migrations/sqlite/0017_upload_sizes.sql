-- Uploaded inputs count toward storage quotas (keep in step with
-- ../postgres/0017_upload_sizes.sql).
--
-- size: the bytes of an uploaded input, added to its tenant's
-- tenant_storage.bytes when the upload is first recorded and taken away
-- when the blob collector forgets it; 0 for modules, which are not
-- counted (they are never collected).
ALTER TABLE uploads ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
