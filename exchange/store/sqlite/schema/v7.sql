-- Version 7: erasure. An erased version keeps its row without its body (erased_at set),
-- so that it is not taken again; each erasure of a copy is kept (versions with their
-- audiences and the SHA-256 of the erased bodies, never the bodies) until the relay
-- has published its tombstones (published = 1), and after, for notices and audits.
-- object_refs: which stored versions refer to which ids (sighting_of_ref, source_ref,
-- target_ref, object_refs), so that an erasure finds what refers to the erased object
-- without reading every body (filled at commit: exchange/store/sqlite/_sql.py).
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
    published      INTEGER NOT NULL DEFAULT 0,
    -- The operator erased every copy: no partner's copy takes these versions again.
    every_copy     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX erasures_by_object ON erasures (object_id);
CREATE INDEX erasures_pending ON erasures (erasure_id) WHERE published = 0;
CREATE TABLE object_refs (
    ref_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (ref_id, seq)
) WITHOUT ROWID;
INSERT OR IGNORE INTO object_refs (ref_id, seq)
    SELECT r.value, o.seq FROM objects o, json_each(CAST(o.body AS TEXT)) r
    WHERE o.object_type IN ('sighting', 'relationship', 'report', 'note', 'opinion', 'grouping')
        AND r.key IN ('sighting_of_ref', 'source_ref', 'target_ref') AND r.type = 'text'
    UNION
    SELECT e.value, o.seq FROM objects o, json_each(CAST(o.body AS TEXT), '$.object_refs') e
    WHERE o.object_type IN ('sighting', 'relationship', 'report', 'note', 'opinion', 'grouping')
        AND e.type = 'text';
