-- Version 6: a DELIVER entry lists the object versions one partner received over a short
-- span (one entry per recipient, owner and span instead of one per delivery); this
-- index names, for each object id, the entries that list it, so that look-ups by
-- object find them. Entries naming one object keep it in audit.object_id. Derived from
-- the entries' bytes (no foreign key: `exchange audit verify` checks it).
CREATE TABLE audit_objects (
    object_id TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    PRIMARY KEY (object_id, idx)
) WITHOUT ROWID;
