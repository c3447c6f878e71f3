-- Version 1: the schema of the first release (which did not set user_version).
CREATE TABLE IF NOT EXISTS partners (
    partner_id   TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    sector       TEXT NOT NULL,
    identity_id  TEXT NOT NULL UNIQUE,
    default_tlp  TEXT NOT NULL,
    disabled     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    token_hash   BLOB PRIMARY KEY,
    partner_id   TEXT NOT NULL REFERENCES partners(partner_id),
    created_at   REAL NOT NULL,
    revoked_at   REAL
);
CREATE TABLE IF NOT EXISTS objects (
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
    UNIQUE (object_id, version_key)
);
-- A row here means: accepted, not yet published to the bus.
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY REFERENCES objects(seq)
);
-- Where the relay's last publish landed, per topic-partition: "now" for subscribers.
CREATE TABLE IF NOT EXISTS relay_positions (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
