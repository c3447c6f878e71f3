-- Version 1: the end state of the SQLite schema's versions 1 to 4, in PostgreSQL's
-- types. Text that is sorted is compared byte by byte (COLLATE "C"), as SQLite does,
-- whatever the database's locale. ``added`` keeps the order of registration among
-- rows created in the same instant (SQLite's rowid).
CREATE TABLE partners (
    partner_id   text PRIMARY KEY,
    name         text NOT NULL,
    identity_id  text NOT NULL UNIQUE,
    kind         text NOT NULL,
    sectors      text[] NOT NULL,
    roles        text[] NOT NULL,
    default_tlp  text NOT NULL,
    disabled     boolean NOT NULL,
    created_at   double precision NOT NULL,
    added        bigint GENERATED ALWAYS AS IDENTITY
);
CREATE TABLE communities (
    name        text COLLATE "C" PRIMARY KEY,
    description text NOT NULL,
    created_at  double precision NOT NULL
);
CREATE TABLE memberships (
    community  text COLLATE "C" NOT NULL REFERENCES communities(name),
    partner_id text NOT NULL REFERENCES partners(partner_id),
    PRIMARY KEY (community, partner_id)
);
CREATE INDEX memberships_by_partner ON memberships (partner_id);
CREATE TABLE credentials (
    credential_id text PRIMARY KEY,
    partner_id    text NOT NULL REFERENCES partners(partner_id),
    kind          text NOT NULL CHECK (kind IN ('token', 'certificate')),
    digest        bytea NOT NULL,
    created_at    double precision NOT NULL,
    expires_at    double precision,
    revoked_at    double precision,
    added         bigint GENERATED ALWAYS AS IDENTITY,
    UNIQUE (kind, digest)
);
CREATE INDEX credentials_by_partner ON credentials (partner_id);
-- Moves with every change to partners, communities, memberships or credentials.
CREATE TABLE registry_state (
    id      integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO registry_state VALUES (1, 0);

-- Every accepted object version, with who it is for (Audience.to_json).
CREATE TABLE objects (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object_id      text NOT NULL,
    version        text NOT NULL,
    version_key    text COLLATE "C" NOT NULL,
    object_type    text NOT NULL,
    created_by_ref text NOT NULL,
    submitter      text NOT NULL REFERENCES partners(partner_id),
    tlp            text NOT NULL,
    labels         text[] NOT NULL,
    revoked        boolean NOT NULL,
    spec_version   text NOT NULL,
    accepted_at    double precision NOT NULL,
    body           bytea NOT NULL,
    audience       jsonb NOT NULL,
    UNIQUE (object_id, version_key)
);
-- A row here means: accepted, not yet published to the bus.
CREATE TABLE outbox (
    seq bigint PRIMARY KEY REFERENCES objects(seq)
);
-- Where the relay's last publish landed, per topic-partition: "now" for subscribers.
CREATE TABLE relay_positions (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- The audit log: each entry's canonical bytes (which commit to the previous entry's
-- leaf hash) and leaf hash, with copies of the fields that queries filter on.
CREATE TABLE audit (
    idx       bigint PRIMARY KEY,
    at        double precision NOT NULL,
    action    text NOT NULL,
    actor     text NOT NULL,
    partner   text NOT NULL,
    object_id text NOT NULL,
    owner     text NOT NULL,
    data      bytea NOT NULL,
    leaf_hash bytea NOT NULL
);
CREATE INDEX audit_by_object ON audit (object_id);
CREATE INDEX audit_by_actor ON audit (actor);
CREATE INDEX audit_by_owner ON audit (owner);
-- Most entries concern no other partner: only those that do are indexed.
CREATE INDEX audit_by_partner ON audit (partner) WHERE partner <> '';
CREATE INDEX audit_by_action ON audit (action, at);
-- The head of the chain: how many entries the log holds and the last one's leaf
-- hash. Appenders lock this row first, so that they take turns (see the module).
CREATE TABLE audit_head (
    id        integer PRIMARY KEY CHECK (id = 1),
    size      bigint NOT NULL,
    leaf_hash bytea NOT NULL
);
INSERT INTO audit_head VALUES (1, 0, decode(repeat('00', 32), 'hex'));
CREATE TABLE audit_checkpoints (
    tree_size bigint PRIMARY KEY,
    note      bytea NOT NULL,
    signature bytea NOT NULL
);
-- The next audit index to mirror to the bus.
CREATE TABLE audit_mirror (
    id         integer PRIMARY KEY CHECK (id = 1),
    next_index bigint NOT NULL
);
INSERT INTO audit_mirror VALUES (1, 0);
-- The public key that signs the log's checkpoints, recorded at the first start.
CREATE TABLE audit_key (
    id         integer PRIMARY KEY CHECK (id = 1),
    public_key bytea NOT NULL
);
