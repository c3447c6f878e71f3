-- Version 7: erasure. An erased version keeps its row without its body (erased_at set),
-- so that it is not taken again; each erasure of a copy is kept (versions with their
-- audiences and the SHA-256 of the erased bodies, never the bodies) until the relay
-- has published its tombstones (published = 1), and after, for notices and audits.
ALTER TABLE objects ADD COLUMN erased_at REAL;
CREATE TABLE erasures (
    erasure_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    object_id      TEXT NOT NULL,
    object_type    TEXT NOT NULL,
    submitter      TEXT NOT NULL,
    created_by_ref TEXT NOT NULL,
    versions       TEXT NOT NULL,
    reason         TEXT NOT NULL,
    erased_by      TEXT NOT NULL,
    erased_at      REAL NOT NULL,
    referenced_by  TEXT NOT NULL,
    audit_index    INTEGER NOT NULL,
    published      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX erasures_by_object ON erasures (object_id);
CREATE INDEX erasures_pending ON erasures (erasure_id) WHERE published = 0;
