-- Version 3: the audit log. Each entry's canonical bytes (``data``, which commit to
-- the previous entry's leaf hash) and leaf hash, with copies of the fields that
-- queries filter on; signed checkpoints; how far the bus mirror of the log got.
CREATE TABLE audit (
    idx       INTEGER PRIMARY KEY,
    at        REAL NOT NULL,
    action    TEXT NOT NULL,
    actor     TEXT NOT NULL,
    partner   TEXT NOT NULL,
    object_id TEXT NOT NULL,
    owner     TEXT NOT NULL,
    data      BLOB NOT NULL,
    leaf_hash BLOB NOT NULL
);
CREATE INDEX audit_by_object ON audit (object_id);
CREATE INDEX audit_by_actor ON audit (actor);
CREATE INDEX audit_by_owner ON audit (owner);
-- Most entries concern no other partner: only those that do are indexed.
CREATE INDEX audit_by_partner ON audit (partner) WHERE partner != '';
CREATE INDEX audit_by_action ON audit (action, at);
CREATE TABLE audit_checkpoints (
    tree_size INTEGER PRIMARY KEY,
    note      BLOB NOT NULL,
    signature BLOB NOT NULL
);
-- The next audit index to mirror to the bus.
CREATE TABLE audit_mirror (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    next_index INTEGER NOT NULL
);
INSERT INTO audit_mirror VALUES (1, 0);
