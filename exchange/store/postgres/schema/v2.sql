-- Version 2 (SQLite's version 5): several partners may each hold a copy of one
-- observable (an SCO's id is derived from its value and names no creator), so a
-- version is unique per creator; the outbox rows the relay set aside (the bus refused
-- their records); a table the health probe writes to while the database is full.
ALTER TABLE objects DROP CONSTRAINT objects_object_id_version_key_key;
ALTER TABLE objects ADD CONSTRAINT objects_object_id_created_by_ref_version_key_key
    UNIQUE (object_id, created_by_ref, version_key);
CREATE TABLE set_aside (
    seq    bigint PRIMARY KEY REFERENCES objects(seq),
    reason text NOT NULL,
    at     double precision NOT NULL
);
-- Never holds a committed row: the probe inserts and rolls back (see PostgresStore.ping).
CREATE TABLE store_probe (
    id   integer PRIMARY KEY,
    room bytea NOT NULL
);
