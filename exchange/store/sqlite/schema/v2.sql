-- Version 2: partner kinds, sectors and roles; communities and memberships;
-- credentials of several kinds (tokens, client certificates) with ids and expiry;
-- each object version's audience; the registry version.
--
-- SQLite adds a NOT NULL column only with a default: the defaults below are what
-- existing rows get, and every write names these columns explicitly.
ALTER TABLE partners ADD COLUMN kind TEXT NOT NULL DEFAULT 'other';
ALTER TABLE partners ADD COLUMN sectors TEXT NOT NULL DEFAULT '[]';
ALTER TABLE partners ADD COLUMN roles TEXT NOT NULL DEFAULT '["submit","subscribe"]';
UPDATE partners SET sectors = json_array(sector);
ALTER TABLE partners DROP COLUMN sector;

CREATE TABLE communities (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE memberships (
    community  TEXT NOT NULL REFERENCES communities(name),
    partner_id TEXT NOT NULL REFERENCES partners(partner_id),
    PRIMARY KEY (community, partner_id)
);
CREATE INDEX memberships_by_partner ON memberships (partner_id);

ALTER TABLE credentials RENAME TO credentials_v1;
CREATE TABLE credentials (
    credential_id TEXT PRIMARY KEY,
    partner_id    TEXT NOT NULL REFERENCES partners(partner_id),
    kind          TEXT NOT NULL CHECK (kind IN ('token', 'certificate')),
    digest        BLOB NOT NULL,
    created_at    REAL NOT NULL,
    expires_at    REAL,
    revoked_at    REAL,
    UNIQUE (kind, digest)
);
CREATE INDEX credentials_by_partner ON credentials (partner_id);
INSERT INTO credentials
    SELECT 'tok_' || lower(hex(substr(token_hash, 1, 5))), partner_id, 'token', token_hash,
           created_at, NULL, revoked_at
    FROM credentials_v1;
DROP TABLE credentials_v1;

-- Who each version is for (Audience.to_json); versions accepted before audiences
-- existed are for what their TLP allows.
ALTER TABLE objects ADD COLUMN audience TEXT NOT NULL DEFAULT '';
UPDATE objects SET audience = json_object(
    'tlp', tlp, 'submitter', submitter, 'communities', json('[]'),
    'recipients', json('[]'), 'excluded_kinds', json('[]'));

-- Moves with every change to partners, communities, memberships or credentials.
CREATE TABLE registry_state (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO registry_state VALUES (1, 0);
