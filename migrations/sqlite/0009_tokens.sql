-- API tokens (keep in step with ../postgres/0009_tokens.sql).
--
-- A token is shown once, when created; only its sha256 is stored. `id` is
-- its public name (the secret's first characters), for listing and
-- revoking. A revoked token stays, so an audit can name it.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user', 'reader')),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX tokens_tenant ON tokens (tenant, id);
