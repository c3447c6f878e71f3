-- Version 4: the public key that signs the log's checkpoints, recorded at the first
-- start, so that a process with another key refuses to sign for this log.
CREATE TABLE audit_key (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    public_key BLOB NOT NULL
);
