-- Reservations (keep in step with ../postgres/0013_reservations.sql).
--
-- A tenant's booking of worker slots for a time window: while it holds,
-- up to `slots` of the tenant's tasks go before everyone else's (others
-- use the slots while the tenant leaves them idle). Times are ms since the
-- epoch; the window is [starts_at, ends_at). Retention removes ended ones.
CREATE TABLE reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    slots INTEGER NOT NULL CHECK (slots > 0),
    starts_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL CHECK (ends_at > starts_at),
    created_at INTEGER NOT NULL
);
CREATE INDEX reservations_ends ON reservations (ends_at);
CREATE INDEX reservations_tenant ON reservations (tenant, id);
