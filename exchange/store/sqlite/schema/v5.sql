-- Version 5: several partners may each hold a copy of one observable (an SCO's id is
-- derived from its value and names no creator), so a version is unique per creator:
-- (object_id, created_by_ref, version_key). SQLite changes a table's constraints only
-- by rebuilding it; sequence numbers, the AUTOINCREMENT counter and the outbox rows
-- that refer to them are carried over (the outbox is moved aside while the old table
-- is dropped: with foreign keys on, the drop would otherwise delete under it).
-- Also: the outbox rows the relay set aside (the bus refused their records), and a
-- row the health probe writes while the disk is full.
CREATE TABLE objects_v5 (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    object_id      TEXT NOT NULL,
    version        TEXT NOT NULL,
    version_key    TEXT NOT NULL,
    object_type    TEXT NOT NULL,
    created_by_ref TEXT NOT NULL,
    submitter      TEXT NOT NULL REFERENCES partners(partner_id),
    tlp            TEXT NOT NULL,
    labels         TEXT NOT NULL,
    revoked        INTEGER NOT NULL,
    spec_version   TEXT NOT NULL,
    accepted_at    REAL NOT NULL,
    body           BLOB NOT NULL,
    audience       TEXT NOT NULL,
    UNIQUE (object_id, created_by_ref, version_key)
);
INSERT INTO objects_v5 (seq, object_id, version, version_key, object_type, created_by_ref,
    submitter, tlp, labels, revoked, spec_version, accepted_at, body, audience)
    SELECT seq, object_id, version, version_key, object_type, created_by_ref, submitter,
        tlp, labels, revoked, spec_version, accepted_at, body, audience
    FROM objects ORDER BY seq;
-- The next seq stays above every seq ever handed out, as AUTOINCREMENT promises.
DELETE FROM sqlite_sequence WHERE name = 'objects_v5';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'objects_v5', seq FROM sqlite_sequence WHERE name = 'objects';
CREATE TEMP TABLE outbox_v4 AS SELECT seq FROM outbox;
DELETE FROM outbox;
DROP TABLE objects;
ALTER TABLE objects_v5 RENAME TO objects;
INSERT INTO outbox (seq) SELECT seq FROM temp.outbox_v4 ORDER BY seq;
DROP TABLE temp.outbox_v4;

-- Accepted object versions the bus refused to take: out of the outbox (the rest
-- flows on), kept for the operator with the bus's reason and when.
CREATE TABLE set_aside (
    seq    INTEGER PRIMARY KEY REFERENCES objects(seq),
    reason TEXT NOT NULL,
    at     REAL NOT NULL
);
-- Written by the health probe while the disk is full (to see that writes work again).
CREATE TABLE store_probe (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    at   REAL NOT NULL,
    room BLOB NOT NULL
);
