-- Values the server makes once and keeps: the key that signs the ticket
-- of each task delivery (a result event must carry its delivery's ticket).
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
