-- Version 4 (SQLite's version 7): erasure. An erased version keeps its row without its
-- body (erased_at set), so that it is not taken again; each erasure of a copy is kept
-- (versions with their audiences and the SHA-256 of the erased bodies, never the
-- bodies) until the relay has published its tombstones, and after, for notices and audits.
-- object_refs: which stored versions refer to which ids (sighting_of_ref, source_ref,
-- target_ref, object_refs), so that an erasure finds what refers to the erased object
-- without reading every body (filled at commit: exchange/store/postgres/_sql.py).
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
    published      boolean NOT NULL DEFAULT false,
    -- The operator erased every copy: no partner's copy takes these versions again.
    every_copy     boolean NOT NULL DEFAULT false
);
CREATE INDEX erasures_by_object ON erasures (object_id);
CREATE INDEX erasures_pending ON erasures (erasure_id) WHERE NOT published;
CREATE TABLE object_refs (
    ref_id text NOT NULL,
    seq    bigint NOT NULL,
    PRIMARY KEY (ref_id, seq)
);
-- The ids a stored body refers to.
CREATE FUNCTION object_refs_of(body bytea) RETURNS SETOF text LANGUAGE sql IMMUTABLE AS $$
    SELECT DISTINCT e #>> '{}'
    FROM (SELECT convert_from(body, 'UTF8')::jsonb AS j) b,
        jsonb_array_elements(
            jsonb_build_array(b.j -> 'sighting_of_ref', b.j -> 'source_ref', b.j -> 'target_ref')
            || CASE WHEN jsonb_typeof(b.j -> 'object_refs') = 'array'
                THEN b.j -> 'object_refs' ELSE '[]'::jsonb END
        ) e
    WHERE jsonb_typeof(e) = 'string'
$$;
INSERT INTO object_refs (ref_id, seq)
    SELECT r, o.seq FROM objects o, object_refs_of(o.body) r
    WHERE o.object_type IN ('sighting', 'relationship', 'report', 'note', 'opinion', 'grouping');
