-- Version 4 (SQLite's version 7): erasure. An erased version keeps its row without its
-- body (erased_at set), so that it is not taken again; each erasure of a copy is kept
-- (versions with their audiences and the SHA-256 of the erased bodies, never the
-- bodies) until the relay has published its tombstones, and after, for notices and audits.
ALTER TABLE objects ADD COLUMN erased_at double precision;
CREATE TABLE erasures (
    erasure_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object_id      text NOT NULL,
    object_type    text NOT NULL,
    submitter      text NOT NULL,
    created_by_ref text NOT NULL,
    versions       text NOT NULL,
    reason         text NOT NULL,
    erased_by      text NOT NULL,
    erased_at      double precision NOT NULL,
    referenced_by  text NOT NULL,
    audit_index    bigint NOT NULL,
    published      boolean NOT NULL DEFAULT false
);
CREATE INDEX erasures_by_object ON erasures (object_id);
CREATE INDEX erasures_pending ON erasures (erasure_id) WHERE NOT published;
