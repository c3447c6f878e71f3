"""The embedded store: one SQLite file in the data directory.

All writes go through one connection on one thread, so a bundle's checks
(creator, duplicate, revoked) and its inserts are one serialized transaction.
Reads that must not wait behind a large commit (credential look-ups) use a
second connection. WAL mode lets the ``exchange`` CLI write to the same file
while the server runs.

The schema is versioned with ``PRAGMA user_version``: ``MIGRATIONS`` lists the
steps from an empty file to ``SCHEMA_VERSION``, and ``open`` applies the missing
ones in one transaction. To change the schema, append a step; never edit one
that has shipped.

A write that fails because the file system is full raises ``StoreFull`` and marks
the store full (``_room.Room``): ``ping`` then fails until the data directory has
``resume_free_bytes`` free again and a probe write succeeds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import orjson

from exchange.audit.entries import AuditEntry, AuditQuery, Event
from exchange.bus import TopicPartition
from exchange.errors import AlreadyExists, InvalidArgument, NotFound, StoreFull, Unavailable
from exchange.model import (
    Audience,
    Community,
    Credential,
    CredentialKind,
    Partner,
    Rejection,
    StoredObject,
    ValidObject,
    version_key,
)
from exchange.store import AuditRow, CommitOutcome, Committed, SetAsideRow, SignedCheckpoint
from exchange.store._common import (
    NO_PREVIOUS,
    CopyKey,
    Held,
    audit_row,
    bundle_submits,
    chain,
    checkpoint_of,
    community_missing,
    copy_key,
    credential_bound,
    credential_id_taken,
    credential_of,
    newer_schema,
    not_a_member,
    nul_in_bundle,
    partner_of,
    set_aside_of,
    set_aside_reason,
    stored_of,
    unknown_partner,
    unstorable_text,
    with_receipts,
)
from exchange.store._room import Room

if TYPE_CHECKING:
    from exchange.metrics import Metrics

__all__ = [
    "MIGRATIONS",
    "PROBE_BYTES",
    "RESUME_FREE_BYTES",
    "SCHEMA_VERSION",
    "Migration",
    "SqliteStore",
    "migrate",
]

T = TypeVar("T")

# -- schema migrations -------------------------------------------------------------------

# Version 1: the schema of the first release (which did not set user_version).
SCHEMA_V1 = """
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
"""

# Version 2: partner kinds, sectors and roles; communities and memberships;
# credentials of several kinds (tokens, client certificates) with ids and expiry;
# each object version's audience; the registry version.
#
# SQLite adds a NOT NULL column only with a default: the defaults below are what
# existing rows get, and every write names these columns explicitly.
SCHEMA_V2 = """
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
"""

# Version 3: the audit log. Each entry's canonical bytes (``data``, which commit to
# the previous entry's leaf hash) and leaf hash, with copies of the fields that
# queries filter on; signed checkpoints; how far the bus mirror of the log got.
SCHEMA_V3 = """
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
"""

# Version 4: the public key that signs the log's checkpoints, recorded at the first
# start, so that a process with another key refuses to sign for this log.
SCHEMA_V4 = """
CREATE TABLE audit_key (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    public_key BLOB NOT NULL
);
"""


# Version 5: several partners may each hold a copy of one observable (an SCO's id is
# derived from its value and names no creator), so a version is unique per creator:
# (object_id, created_by_ref, version_key). SQLite changes a table's constraints only
# by rebuilding it; sequence numbers, the AUTOINCREMENT counter and the outbox rows
# that refer to them are carried over (the outbox is moved aside while the old table
# is dropped: with foreign keys on, the drop would otherwise delete under it).
# Also: the outbox rows the relay set aside (the bus refused their records), and a
# row the health probe writes while the disk is full.
SCHEMA_V5 = """
CREATE TABLE objects_v5 (
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
    audience       TEXT NOT NULL,
    UNIQUE (object_id, created_by_ref, version_key)
);
INSERT INTO objects_v5 (seq, object_id, version, version_key, object_type, created_by_ref,
    submitter, tlp, labels, revoked, spec_version, accepted_at, body, audience)
    SELECT seq, object_id, version, version_key, object_type, created_by_ref, submitter,
        tlp, labels, revoked, spec_version, accepted_at, body, audience
    FROM objects ORDER BY seq;
-- The next seq stays above every seq ever handed out, as AUTOINCREMENT promises.
DELETE FROM sqlite_sequence WHERE name = 'objects_v5';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'objects_v5', seq FROM sqlite_sequence WHERE name = 'objects';
CREATE TEMP TABLE outbox_v4 AS SELECT seq FROM outbox;
DELETE FROM outbox;
DROP TABLE objects;
ALTER TABLE objects_v5 RENAME TO objects;
INSERT INTO outbox (seq) SELECT seq FROM temp.outbox_v4 ORDER BY seq;
DROP TABLE temp.outbox_v4;

-- Accepted object versions the bus refused to take: out of the outbox (the rest
-- flows on), kept for the operator with the bus's reason and when.
CREATE TABLE set_aside (
    seq    INTEGER PRIMARY KEY REFERENCES objects(seq),
    reason TEXT NOT NULL,
    at     REAL NOT NULL
);
-- Written by the health probe while the disk is full (to see that writes work again).
CREATE TABLE store_probe (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    at   REAL NOT NULL,
    room BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: it brings a database at ``version - 1`` to ``version``."""

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    """A step that runs ``sql`` statement by statement (``executescript`` would
    commit the migration's transaction)."""

    def apply(conn: sqlite3.Connection) -> None:
        statement = ""
        for line in sql.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                conn.execute(statement)
                statement = ""
        if statement.strip():
            raise ValueError(f"a migration ends in an incomplete statement: {statement!r}")

    return apply


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "partners, token credentials, objects, outbox, relay positions", _script(SCHEMA_V1)
    ),
    Migration(
        2,
        "partner kinds, sectors and roles; communities; token and certificate credentials;"
        " object audiences; registry version",
        _script(SCHEMA_V2),
    ),
    Migration(3, "the audit log, its checkpoints and its bus mirror position", _script(SCHEMA_V3)),
    Migration(4, "the public key that signs the audit log's checkpoints", _script(SCHEMA_V4)),
    Migration(
        5,
        "observables held per submitter (a version is unique per creator); set-aside"
        " outbox rows; the disk-full probe",
        _script(SCHEMA_V5),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def _schema_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if (
        version == 0
        and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'partners'"
        ).fetchone()
    ):
        # A data directory of the first release: it has the version 1 tables but
        # did not record a version.
        return 1
    return int(version)


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the database on ``conn`` to ``SCHEMA_VERSION`` in one transaction.

    Returns (version found, version now). Unavailable if the file was written by a
    newer release (whose schema this one does not know)."""
    found = _schema_version(conn)
    if found == SCHEMA_VERSION:
        return found, found
    with _transaction(conn):
        # Read again under the write lock: another process may have migrated meanwhile.
        found = _schema_version(conn)
        if found > SCHEMA_VERSION:
            raise Unavailable(newer_schema(found, SCHEMA_VERSION))
        for step in MIGRATIONS[found:]:
            step.apply(conn)
        # PRAGMA takes no parameters; SCHEMA_VERSION is an int of this module.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    return found, SCHEMA_VERSION


# -- rows <-> domain types -------------------------------------------------------------

_PARTNER_COLUMNS = (
    "p.partner_id, p.name, p.identity_id, p.kind, p.sectors, p.roles, p.default_tlp,"
    " p.disabled, (SELECT json_group_array(m.community) FROM memberships m"
    " WHERE m.partner_id = p.partner_id)"
)
_CREDENTIAL_COLUMNS = (
    "c.credential_id, c.partner_id, c.kind, c.digest, c.created_at, c.expires_at, c.revoked_at"
)
_OBJECT_COLUMNS = (
    "o.seq, o.submitter, o.accepted_at, o.object_id, o.object_type, o.version,"
    " o.created_by_ref, o.tlp, o.body, o.labels, o.revoked, o.spec_version, o.audience"
)
# Bytes as bytes, even where someone stored them as text (verification reads what is there).
_AUDIT_BYTES = "CAST(data AS BLOB), CAST(leaf_hash AS BLOB)"
_CHECKPOINT_COLUMNS = "tree_size, CAST(note AS BLOB), CAST(signature AS BLOB)"
# The oldest outbox rows, up to ?1 of them and ?2 bytes of bodies (at least one).
_PENDING_WITHIN = (
    "WITH head AS (SELECT b.seq, length(o.body) AS size FROM outbox b JOIN objects o"
    " USING (seq) ORDER BY b.seq LIMIT ?1),"
    " upto AS (SELECT seq, sum(size) OVER (ORDER BY seq) AS total FROM head)"
    " SELECT {columns} FROM outbox b JOIN objects o USING (seq)"
    " WHERE b.seq IN (SELECT seq FROM upto WHERE total <= ?2"
    " OR seq = (SELECT min(seq) FROM upto)) ORDER BY b.seq"
)
# SQLite allows 32,766 host parameters per statement; stay well below.
_CHUNK = 500

# While the store is full, ping resumes writes once the data directory's file system
# has this much free (room for one bundle of the default largest size,
# limits.max_bundle_bytes: no flapping on the last few pages) and a probe write of
# PROBE_BYTES succeeds.
RESUME_FREE_BYTES = 16 * 1024 * 1024
PROBE_BYTES = 256 * 1024
# An I/O error (rather than SQLITE_FULL) counts as a full disk below this much free.
_NEARLY_FULL_BYTES = 1024 * 1024


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the partner gets its answer (invariant 1).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _json_list(items: Iterable[str]) -> str:
    return orjson.dumps(list(items)).decode()


def _free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still write on ``directory``'s file system."""
    found = os.statvfs(directory)
    return found.f_bavail * found.f_frsize


def _out_of_space(exc: BaseException, directory: Path) -> bool:
    """Whether ``exc`` says the file system (or the database file) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None:
        return False
    if code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    # SQLite reports some writes that fail on a full disk (growing the WAL index) as
    # I/O errors: one on a file system with (nearly) no room left is the full disk.
    if code & 0xFF == sqlite3.SQLITE_IOERR:
        try:
            return _free_bytes(directory) < _NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


class SqliteStore:
    """``Store`` on a SQLite file (created, or migrated to the current schema, on open).
    ``metrics``: where to show that the disk is full (``exchange_store_full``)."""

    def __init__(
        self,
        path: Path,
        *,
        metrics: Metrics | None = None,
        resume_free_bytes: int = RESUME_FREE_BYTES,
    ) -> None:
        self.path = path
        self._room = Room(f"the data directory {path.parent}", metrics)
        self._resume_free_bytes = resume_free_bytes
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="store-read")

    # -- lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        await self._on(self._write_thread, self._open_sync)

    def _open_sync(self) -> None:
        writer: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = _connect(self.path)
            migrate(writer)
            self._reader = _connect(self.path)
        except BaseException as exc:
            if writer is not None:
                writer.close()
            if isinstance(exc, OSError | sqlite3.Error):
                raise Unavailable(f"cannot open the database {self.path}: {exc}") from exc
            raise
        self._writer = writer

    async def migrate(self) -> tuple[int, int]:
        def run() -> tuple[int, int]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path)
            try:
                return migrate(conn)
            finally:
                conn.close()

        try:
            return await self._on(self._write_thread, run)
        except (OSError, sqlite3.Error) as exc:
            raise Unavailable(f"cannot open the database {self.path}: {exc}") from exc

    async def ping(self) -> None:
        if self._room.full:
            await self._probe_room()
            return

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1").fetchone()

        try:
            await self._read(run)
        except sqlite3.Error as exc:
            raise Unavailable(f"the database {self.path} does not answer: {exc}") from exc

    async def _probe_room(self) -> None:
        """While the store is full: StoreFull unless the file system has room again
        and a write of ``PROBE_BYTES`` commits (then the store is no longer full)."""
        try:
            free = _free_bytes(self.path.parent)
        except OSError as exc:
            raise self._room.still_full(f"cannot tell its free space: {exc.strerror}") from exc
        if free < self._resume_free_bytes:
            raise self._room.still_full(
                f"{free:,} bytes free, {self._resume_free_bytes:,} needed to resume"
            )

        def grow(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO store_probe (id, at, room) VALUES (1, ?, zeroblob(?))"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at, room = excluded.room",
                (time.time(), PROBE_BYTES),
            )

        def shrink(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE store_probe SET room = x'' WHERE id = 1")

        try:
            # Two commits: the first has to find room for the probe's pages on disk.
            await self._write(grow)
            await self._write(shrink)
        except StoreFull as exc:
            raise self._room.still_full("a probe write failed") from exc
        self._room.emptied()

    async def hold_lease(self, job: str) -> bool:
        # One server process per data directory: it always runs every job.
        return True

    def on_outbox(self, callback: Callable[[], None]) -> None:
        # The server is the only process that writes objects to this file.
        return

    async def audit_public_key(self, public_key: bytes) -> bytes:
        def run(conn: sqlite3.Connection) -> bytes:
            conn.execute(
                "INSERT INTO audit_key (id, public_key) VALUES (1, ?) ON CONFLICT DO NOTHING",
                (public_key,),
            )
            (recorded,) = conn.execute("SELECT public_key FROM audit_key WHERE id = 1").fetchone()
            return bytes(recorded)

        return await self._write(run)

    async def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None
        self._write_thread.shutdown(wait=True)
        self._read_thread.shutdown(wait=True)

    async def _on(self, thread: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(thread, fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one write transaction on the writer thread; StoreFull (and the
        store marked full) if the disk has no room for it."""

        def run() -> T:
            conn = self._w()
            with _transaction(conn):
                return fn(conn)

        try:
            return await self._on(self._write_thread, run)
        except (sqlite3.Error, OSError) as exc:
            if _out_of_space(exc, self.path.parent):
                raise self._room.refused(exc) from exc
            raise

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._on(self._read_thread, lambda: fn(self._r()))

    def _w(self) -> sqlite3.Connection:
        if self._writer is None:
            raise Unavailable("the store is not open")
        return self._writer

    def _r(self) -> sqlite3.Connection:
        if self._reader is None:
            raise Unavailable("the store is not open")
        return self._reader

    # -- partners -----------------------------------------------------------------
    async def add_partner(self, partner: Partner, credential: Credential) -> None:
        if credential.partner_id != partner.partner_id:
            raise InvalidArgument(
                f"the first credential of partner {partner.partner_id} names partner"
                f" {credential.partner_id}; it must name the new partner"
            )

        def run(conn: sqlite3.Connection) -> None:
            taken = conn.execute(
                "SELECT partner_id, identity_id FROM partners"
                " WHERE partner_id = ? OR identity_id = ?",
                (partner.partner_id, partner.identity_id),
            ).fetchone()
            if taken is not None:
                what = "partner id" if taken[0] == partner.partner_id else "STIX identity"
                raise AlreadyExists(
                    f"{what} already registered (partner {taken[0]}, identity {taken[1]})"
                )
            _require_communities(conn, partner.communities)
            conn.execute(
                "INSERT INTO partners (partner_id, name, identity_id, kind, sectors, roles,"
                " default_tlp, disabled, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    partner.partner_id,
                    partner.name,
                    partner.identity_id,
                    partner.kind.value,
                    _json_list(partner.sectors),
                    _json_list(sorted(partner.roles)),
                    partner.default_tlp.value,
                    int(partner.disabled),
                    time.time(),
                ),
            )
            conn.executemany(
                "INSERT INTO memberships (community, partner_id) VALUES (?, ?)",
                [(c, partner.partner_id) for c in sorted(partner.communities)],
            )
            _insert_credential(conn, credential)
            _bump(conn)

        await self._write(run)

    async def get_partner(self, partner_id: str) -> Partner | None:
        def run(conn: sqlite3.Connection) -> Partner | None:
            row = conn.execute(
                f"SELECT {_PARTNER_COLUMNS} FROM partners p WHERE p.partner_id = ?",  # noqa: S608
                (partner_id,),
            ).fetchone()
            return None if row is None else partner_of(row, orjson.loads)

        return await self._read(run)

    async def list_partners(self) -> list[Partner]:
        def run(conn: sqlite3.Connection) -> list[Partner]:
            rows = conn.execute(
                f"SELECT {_PARTNER_COLUMNS} FROM partners p"  # noqa: S608
                " ORDER BY p.created_at, p.rowid"
            ).fetchall()
            return [partner_of(r, orjson.loads) for r in rows]

        return await self._read(run)

    async def update_partner(self, partner: Partner) -> None:
        def run(conn: sqlite3.Connection) -> None:
            updated = conn.execute(
                "UPDATE partners SET name = ?, kind = ?, sectors = ?, roles = ?,"
                " default_tlp = ?, disabled = ? WHERE partner_id = ?",
                (
                    partner.name,
                    partner.kind.value,
                    _json_list(partner.sectors),
                    _json_list(sorted(partner.roles)),
                    partner.default_tlp.value,
                    int(partner.disabled),
                    partner.partner_id,
                ),
            ).rowcount
            if updated == 0:
                raise NotFound(unknown_partner(partner.partner_id))
            _bump(conn)

        await self._write(run)

    # -- communities ----------------------------------------------------------------
    async def add_community(self, community: Community) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if conn.execute(
                "SELECT 1 FROM communities WHERE name = ?", (community.name,)
            ).fetchone():
                raise AlreadyExists(
                    f"community {community.name} already exists; choose another name, or"
                    " add partners to the existing one"
                )
            conn.execute(
                "INSERT INTO communities (name, description, created_at) VALUES (?, ?, ?)",
                (community.name, community.description, time.time()),
            )
            # Members named with the new community join it at once.
            for partner_id in sorted(set(community.members)):
                _require_partner(conn, partner_id)
                conn.execute(
                    "INSERT INTO memberships (community, partner_id) VALUES (?, ?)",
                    (community.name, partner_id),
                )
            _bump(conn)

        await self._write(run)

    async def list_communities(self) -> list[Community]:
        def run(conn: sqlite3.Connection) -> list[Community]:
            rows = conn.execute(
                "SELECT c.name, c.description, (SELECT json_group_array(m.partner_id)"
                " FROM memberships m WHERE m.community = c.name)"
                " FROM communities c ORDER BY c.name"
            ).fetchall()
            return [
                Community(str(name), str(description), tuple(sorted(orjson.loads(members))))
                for name, description, members in rows
            ]

        return await self._read(run)

    async def join_community(self, name: str, partner_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            _require_communities(conn, [name])
            _require_partner(conn, partner_id)
            joined = conn.execute(
                "INSERT OR IGNORE INTO memberships (community, partner_id) VALUES (?, ?)",
                (name, partner_id),
            ).rowcount
            if joined:
                _bump(conn)

        await self._write(run)

    async def leave_community(self, name: str, partner_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            _require_communities(conn, [name])
            _require_partner(conn, partner_id)
            left = conn.execute(
                "DELETE FROM memberships WHERE community = ? AND partner_id = ?",
                (name, partner_id),
            ).rowcount
            if not left:
                raise NotFound(not_a_member(name, partner_id))
            _bump(conn)

        await self._write(run)

    # -- credentials ----------------------------------------------------------------
    async def add_credential(self, credential: Credential) -> None:
        def run(conn: sqlite3.Connection) -> None:
            _require_partner(conn, credential.partner_id)
            _insert_credential(conn, credential)
            _bump(conn)

        await self._write(run)

    async def list_credentials(self, partner_id: str) -> list[Credential]:
        def run(conn: sqlite3.Connection) -> list[Credential]:
            rows = conn.execute(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c"  # noqa: S608
                " WHERE c.partner_id = ? ORDER BY c.created_at, c.rowid",
                (partner_id,),
            ).fetchall()
            return [credential_of(r) for r in rows]

        return await self._read(run)

    async def revoke_credential(self, partner_id: str, credential_id: str, at: float) -> Credential:
        def run(conn: sqlite3.Connection) -> Credential:
            _require_partner(conn, partner_id)
            row = conn.execute(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c"  # noqa: S608
                " WHERE c.credential_id = ? AND c.partner_id = ?",
                (credential_id, partner_id),
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"partner {partner_id} has no credential {credential_id}; list the"
                    " partner's credentials to see their ids"
                )
            credential = credential_of(row)
            if credential.revoked_at is not None:
                # Revoking twice keeps the first time, and changes nothing.
                return credential
            conn.execute(
                "UPDATE credentials SET revoked_at = ? WHERE credential_id = ?",
                (at, credential_id),
            )
            _bump(conn)
            return replace(credential, revoked_at=at)

        return await self._write(run)

    async def credential(
        self, kind: CredentialKind, digest: bytes
    ) -> tuple[Credential, Partner] | None:
        # Runs on every RPC: one query on the read connection.
        def run(conn: sqlite3.Connection) -> tuple[Credential, Partner] | None:
            row = conn.execute(
                f"SELECT {_CREDENTIAL_COLUMNS}, {_PARTNER_COLUMNS}"  # noqa: S608
                " FROM credentials c JOIN partners p ON p.partner_id = c.partner_id"
                " WHERE c.kind = ? AND c.digest = ?",
                (kind.value, digest),
            ).fetchone()
            if row is None:
                return None
            return credential_of(row[:7]), partner_of(row[7:], orjson.loads)

        return await self._read(run)

    async def registry_version(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            (version,) = conn.execute("SELECT version FROM registry_state WHERE id = 1").fetchone()
            return int(version)

        return await self._read(run)

    # -- objects ----------------------------------------------------------------
    async def commit_objects(
        self,
        submitter: Partner,
        objects: Sequence[tuple[ValidObject, Audience]],
        accepted_at: float,
        widen: Callable[[Audience, Audience], Audience],
        rejected: Sequence[Rejection] = (),
    ) -> list[Committed]:
        if not objects and not rejected:
            return []
        # Validation refuses NUL characters in objects; should one get here all the
        # same, both stores refuse the bundle alike (PostgreSQL cannot store it).
        if nul := nul_in_bundle(objects, rejected):
            raise InvalidArgument(unstorable_text(nul))
        return await self._write(
            lambda conn: _commit(conn, submitter, objects, accepted_at, widen, rejected=rejected)
        )

    # -- audit log ------------------------------------------------------------------
    async def append_audit(self, events: Sequence[Event]) -> list[AuditEntry]:
        if not events:
            return []
        return await self._write(lambda conn: _append_audit(conn, events))

    async def audit_size(self) -> int:
        return await self._read(_audit_size)

    async def audit_entries(self, query: AuditQuery, *, only_of: str = "") -> list[AuditEntry]:
        where = ["idx > ?"]
        args: list[object] = [query.after_index]
        if query.partner:
            # "partner != ''" lets SQLite use the partial index on partner.
            where.append("(actor = ? OR (partner = ? AND partner != ''))")
            args += [query.partner, query.partner]
        if query.object_id:
            where.append("object_id = ?")
            args.append(query.object_id)
        if query.action:
            where.append("action = ?")
            args.append(query.action)
        if query.since is not None:
            where.append("at >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("at < ?")
            args.append(query.until)
        if only_of:
            where.append("(actor = ? OR owner = ?)")
            args += [only_of, only_of]
        args.append(max(query.limit, 0))
        # Only fixed clauses above; every value is a parameter.
        sql = f"SELECT idx, {_AUDIT_BYTES} FROM audit WHERE {' AND '.join(where)}"  # noqa: S608
        sql += " ORDER BY idx LIMIT ?"

        def run(conn: sqlite3.Connection) -> list[AuditEntry]:
            out: list[AuditEntry] = []
            for idx, data, leaf in conn.execute(sql, args):
                try:
                    _, _, event = Event.decode(data)
                except (ValueError, KeyError, TypeError):
                    raise Unavailable(
                        f"audit entry {idx} is damaged (its bytes are not an entry); run"
                        " `exchange audit verify` on the data directory"
                    ) from None
                out.append(AuditEntry(int(idx), event, data, leaf))
            return out

        return await self._read(run)

    async def audit_rows(self, start: int, limit: int) -> list[AuditRow]:
        def run(conn: sqlite3.Connection) -> list[AuditRow]:
            cur = conn.execute(
                f"SELECT idx, {_AUDIT_BYTES}, at, action, actor, partner, object_id, owner"  # noqa: S608
                " FROM audit WHERE idx >= ? ORDER BY idx LIMIT ?",
                (start, limit),
            )
            return list(map(AuditRow._make, cur))

        return await self._read(run)

    async def audit_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        def run(conn: sqlite3.Connection) -> list[bytes]:
            cur = conn.execute(
                "SELECT CAST(leaf_hash AS BLOB) FROM audit WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            )
            return [leaf for (leaf,) in cur]

        return await self._read(run)

    async def add_checkpoint(self, checkpoint: SignedCheckpoint) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO audit_checkpoints (tree_size, note, signature)"
                " VALUES (?, ?, ?)",
                (checkpoint.tree_size, checkpoint.note, checkpoint.signature),
            )

        await self._write(run)

    async def checkpoints(self) -> list[SignedCheckpoint]:
        def run(conn: sqlite3.Connection) -> list[SignedCheckpoint]:
            cur = conn.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints"  # noqa: S608
                " ORDER BY tree_size"
            )
            return [checkpoint_of(row) for row in cur]

        return await self._read(run)

    async def latest_checkpoint(self) -> SignedCheckpoint | None:
        def run(conn: sqlite3.Connection) -> SignedCheckpoint | None:
            row = conn.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints"  # noqa: S608
                " ORDER BY tree_size DESC LIMIT 1"
            ).fetchone()
            return None if row is None else checkpoint_of(row)

        return await self._read(run)

    async def audit_mirror_position(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            (position,) = conn.execute(
                "SELECT next_index FROM audit_mirror WHERE id = 1"
            ).fetchone()
            return int(position)

        return await self._read(run)

    async def set_audit_mirror_position(self, index: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE audit_mirror SET next_index = ? WHERE id = 1", (index,))

        await self._write(run)

    async def submitters_of(self, object_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        wanted = sorted(set(object_ids))

        def run(conn: sqlite3.Connection) -> dict[str, frozenset[str]]:
            out: dict[str, set[str]] = {}
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                # Every version of an SDO or SRO comes from its creator; an observable's
                # copies from each partner that submitted one.
                for oid, submitter in conn.execute(
                    "SELECT DISTINCT object_id, submitter FROM objects"  # noqa: S608
                    f" WHERE object_id IN ({marks})",
                    chunk,
                ):
                    out.setdefault(str(oid), set()).add(str(submitter))
            return {oid: frozenset(submitters) for oid, submitters in out.items()}

        return await self._read(run)

    async def object_copies(self, object_id: str, version: str | None = None) -> list[StoredObject]:
        def run(conn: sqlite3.Connection) -> list[StoredObject]:
            if version is None:
                # The latest version of each copy (one copy per creator).
                rows = conn.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects o WHERE o.object_id = ?"  # noqa: S608
                    " AND o.seq = (SELECT l.seq FROM objects l WHERE l.object_id = o.object_id"
                    " AND l.created_by_ref = o.created_by_ref"
                    " ORDER BY l.version_key DESC, l.seq DESC LIMIT 1)"
                    " ORDER BY o.seq",
                    (object_id,),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects o"  # noqa: S608
                    " WHERE o.object_id = ? AND o.version_key = ? ORDER BY o.seq",
                    (object_id, version_key(version)),
                ).fetchall()
            # Each version under the audience it was stored (and delivered) with.
            return [stored_of(row, orjson.loads) for row in rows]

        return await self._read(run)

    # -- relay --------------------------------------------------------------------
    async def pending_outbox(self, limit: int, max_bytes: int | None = None) -> list[StoredObject]:
        def run(conn: sqlite3.Connection) -> list[StoredObject]:
            if max_bytes is None:
                rows = conn.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM outbox b JOIN objects o USING (seq)"  # noqa: S608
                    " ORDER BY b.seq LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                query = _PENDING_WITHIN.format(columns=_OBJECT_COLUMNS)
                rows = conn.execute(query, (limit, max_bytes)).fetchall()
            return [stored_of(r, orjson.loads) for r in rows]

        return await self._read(run)

    async def mark_published(
        self,
        seqs: Sequence[int],
        positions: Mapping[TopicPartition, int],
        set_aside: Mapping[int, str] | None = None,
    ) -> None:
        aside = {int(seq): set_aside_reason(reason) for seq, reason in (set_aside or {}).items()}
        published = [(s,) for s in seqs if s not in aside]
        at = time.time()

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM outbox WHERE seq = ?", published)
            for seq, reason in sorted(aside.items()):
                # Only a row still in the outbox: one another relay published is not
                # set aside after the fact.
                if conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount:
                    conn.execute(
                        "INSERT INTO set_aside (seq, reason, at) VALUES (?, ?, ?)"
                        " ON CONFLICT (seq) DO UPDATE SET reason = excluded.reason,"
                        " at = excluded.at",
                        (seq, reason, at),
                    )
            conn.executemany(
                "INSERT INTO relay_positions VALUES (?, ?, ?)"
                " ON CONFLICT (topic, partition) DO UPDATE"
                " SET next_offset = max(next_offset, excluded.next_offset)",
                [(t, p, o) for (t, p), o in positions.items()],
            )

        await self._write(run)

    async def set_aside_rows(self, limit: int = 1000) -> list[SetAsideRow]:
        def run(conn: sqlite3.Connection) -> list[SetAsideRow]:
            rows = conn.execute(
                "SELECT s.seq, o.object_id, o.version, o.submitter, s.reason, s.at"
                " FROM set_aside s JOIN objects o USING (seq) ORDER BY s.seq LIMIT ?",
                (max(limit, 0),),
            ).fetchall()
            return [set_aside_of(r) for r in rows]

        return await self._read(run)

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        wanted = sorted(set(topics))

        def run(conn: sqlite3.Connection) -> dict[TopicPartition, int]:
            out: dict[TopicPartition, int] = {}
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                for topic, partition, offset in conn.execute(
                    "SELECT topic, partition, next_offset FROM relay_positions"  # noqa: S608
                    f" WHERE topic IN ({marks})",
                    chunk,
                ):
                    out[(str(topic), int(partition))] = int(offset)
            return out

        return await self._read(run)


# -- registry helpers (inside a write transaction) ----------------------------------------


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE registry_state SET version = version + 1 WHERE id = 1")


def _require_partner(conn: sqlite3.Connection, partner_id: str) -> None:
    if not conn.execute("SELECT 1 FROM partners WHERE partner_id = ?", (partner_id,)).fetchone():
        raise NotFound(unknown_partner(partner_id))


def _require_communities(conn: sqlite3.Connection, names: Iterable[str]) -> None:
    wanted = sorted(set(names))
    known: set[str] = set()
    for chunk in _chunks(wanted):
        marks = ",".join("?" * len(chunk))
        known.update(
            str(n)
            for (n,) in conn.execute(
                f"SELECT name FROM communities WHERE name IN ({marks})",  # noqa: S608
                chunk,
            )
        )
    missing = [n for n in wanted if n not in known]
    if missing:
        raise NotFound(community_missing(missing))


def _insert_credential(conn: sqlite3.Connection, credential: Credential) -> None:
    bound = conn.execute(
        "SELECT credential_id, partner_id FROM credentials"
        " WHERE credential_id = ? OR (kind = ? AND digest = ?)",
        (credential.credential_id, credential.kind.value, credential.digest),
    ).fetchone()
    if bound is not None:
        if bound[0] == credential.credential_id:
            raise AlreadyExists(credential_id_taken(credential.credential_id, bound[1]))
        raise AlreadyExists(credential_bound(credential.kind, bound[1], bound[0]))
    conn.execute(
        "INSERT INTO credentials (credential_id, partner_id, kind, digest, created_at,"
        " expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            credential.credential_id,
            credential.partner_id,
            credential.kind.value,
            credential.digest,
            credential.created_at,
            credential.expires_at,
            credential.revoked_at,
        ),
    )


# -- objects (inside a write transaction) -------------------------------------------------


def _commit(
    conn: sqlite3.Connection,
    submitter: Partner,
    objects: Sequence[tuple[ValidObject, Audience]],
    accepted_at: float,
    widen: Callable[[Audience, Audience], Audience],
    *,
    rejected: Sequence[Rejection],
) -> list[Committed]:
    results = _insert_objects(conn, submitter, objects, accepted_at, widen)
    # One SUBMIT entry per object of the bundle, in bundle order.
    submits = bundle_submits(submitter.partner_id, objects, results, rejected, accepted_at)
    entries = _append_audit(conn, [event for _, event in submits])
    return with_receipts(results, submits, entries)


# -- audit log (inside a write transaction) -----------------------------------------------


def _audit_size(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT idx FROM audit ORDER BY idx DESC LIMIT 1").fetchone()
    return 0 if row is None else int(row[0]) + 1


def _append_audit(conn: sqlite3.Connection, events: Sequence[Event]) -> list[AuditEntry]:
    """Append ``events`` after the last stored entry (read here, under the write lock:
    another process may have appended), hashing them in this transaction."""
    last = conn.execute(
        "SELECT idx, CAST(leaf_hash AS BLOB) FROM audit ORDER BY idx DESC LIMIT 1"
    ).fetchone()
    index, previous = (0, NO_PREVIOUS) if last is None else (int(last[0]) + 1, bytes(last[1]))
    entries = chain(events, index, previous)
    conn.executemany(
        "INSERT INTO audit (idx, at, action, actor, partner, object_id, owner, data, leaf_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [audit_row(entry) for entry in entries],
    )
    return entries


def _insert_objects(
    conn: sqlite3.Connection,
    submitter: Partner,
    objects: Sequence[tuple[ValidObject, Audience]],
    accepted_at: float,
    widen: Callable[[Audience, Audience], Audience],
) -> list[Committed]:
    held = _held_versions(conn, {o.object_id for o, _ in objects})
    results: list[Committed] = []
    for obj, asked in objects:
        key = version_key(obj.version)
        versions = held.setdefault(
            copy_key(obj.object_id, obj.object_type, obj.created_by_ref), Held()
        )
        refused = versions.refuses(obj, key)
        if refused is not None:
            results.append(Committed(refused))
        else:
            # The latest version holds the cumulative audience: an audience never narrows.
            audience = asked if versions.audience is None else widen(versions.audience, asked)
            cur = conn.execute(
                "INSERT INTO objects (object_id, version, version_key, object_type,"
                " created_by_ref, submitter, tlp, labels, revoked, spec_version,"
                " accepted_at, body, audience)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    obj.object_id,
                    obj.version,
                    key,
                    obj.object_type,
                    obj.created_by_ref,
                    submitter.partner_id,
                    obj.tlp.value,
                    orjson.dumps(obj.labels).decode(),
                    int(obj.revoked),
                    obj.spec_version,
                    accepted_at,
                    obj.body,
                    audience.to_json().decode(),
                ),
            )
            conn.execute("INSERT INTO outbox (seq) VALUES (?)", (cur.lastrowid,))
            versions.add(obj, key, audience)
            results.append(Committed(CommitOutcome.INSERTED, audience))
    return results


def _held_versions(conn: sqlite3.Connection, ids: set[str]) -> dict[CopyKey, Held]:
    """What is held of ``ids``, per copy (``copy_key``)."""
    held: dict[CopyKey, Held] = {}
    latest: dict[CopyKey, str] = {}
    for chunk in _chunks(sorted(ids)):
        marks = ",".join("?" * len(chunk))
        # A registered partner's identity object (an SDO) belongs to that partner,
        # even before it submitted it: nobody else may publish it.
        for (identity,) in conn.execute(
            f"SELECT identity_id FROM partners WHERE identity_id IN ({marks})",  # noqa: S608
            chunk,
        ):
            held.setdefault((str(identity), ""), Held()).creator = str(identity)
        for oid, otype, key, creator, revoked, audience in conn.execute(
            "SELECT object_id, object_type, version_key, created_by_ref, revoked,"  # noqa: S608
            f" audience FROM objects WHERE object_id IN ({marks}) ORDER BY seq",
            chunk,
        ):
            copy = copy_key(str(oid), str(otype), str(creator))
            entry = held.setdefault(copy, Held())
            entry.creator = str(creator)
            entry.keys.add(str(key))
            entry.revoked = entry.revoked or bool(revoked)
            latest[copy] = audience
    for copy, audience in latest.items():
        held[copy].audience = Audience.from_json(audience)
    return held


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (a failed COMMIT too)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._rollback()
            return
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            # Else the connection would stay inside the failed transaction, and every
            # later BEGIN would fail.
            self._rollback()
            raise

    def _rollback(self) -> None:
        # After some errors (SQLITE_FULL) SQLite has rolled back already: a ROLLBACK
        # would then fail, and hide the error that matters.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
