"""The PostgreSQL store: one database shared by every server process (replicas)
and the ``exchange`` CLI, through a pool of asyncpg connections per process.

It behaves as ``sqlite.SqliteStore`` does (same errors, same messages, same
orders); what differs is how writers that run in several processes at once are
kept from stepping on each other:

- The audit log is one hash chain. Every transaction that appends entries
  (``commit_objects``, ``append_audit``) first locks the chain head, the one row
  of ``audit_head`` (``SELECT ... FOR UPDATE``), reads the last index and leaf
  hash there, hashes its entries after them and moves the head, all before it
  commits. Appenders therefore take turns, whichever process they run in: no
  fork and no gap in the chain.
- ``commit_objects`` takes that lock at the start of its transaction, before its
  checks and inserts: see ``_lock_audit_head`` for why object sequence numbers
  depend on it.
- A lease (``hold_lease``) is a session advisory lock, held by a connection kept
  outside the pool for that purpose: PostgreSQL releases it when the process
  exits or the connection is lost, and another process can then take it.
- Schema migrations run in one transaction under a transaction advisory lock, so
  that replicas starting together migrate once.

Every call waits at most ``timeout_s`` to connect, to get a connection from the
pool and for each statement, and reports an unreachable database as
``Unavailable`` (without the password of the URL); the pool reconnects when the
database is back, with no need to open the store again. A database out of space
(53100) answers ``StoreFull`` and marks the store full (``_room.Room``) until a
probe write in ``ping`` succeeds; text PostgreSQL cannot store (a NUL character)
answers ``InvalidArgument`` naming what held it, never an internal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import asyncpg
import orjson

from exchange.audit.entries import AuditEntry, AuditQuery, Event
from exchange.bus import TopicPartition
from exchange.config import mask_url
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

__all__ = ["MIGRATIONS", "PROBE_BYTES", "SCHEMA_VERSION", "Migration", "PostgresStore"]

# On the connection that holds the leases: if its process's host vanishes (no FIN, no
# RST), the database drops the connection, and with it the leases, after about 25 s
# instead of the operating system's default of hours; another replica then relays.
# NOTIFY'd by every commit that adds outbox rows; delivered when it commits.
_OUTBOX_CHANNEL = "exchange_outbox"
_KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}

log = logging.getLogger(__name__)

T = TypeVar("T")

# -- schema migrations -------------------------------------------------------------------

# Version 1: the end state of the SQLite schema's versions 1 to 4, in PostgreSQL's
# types. Text that is sorted is compared byte by byte (COLLATE "C"), as SQLite does,
# whatever the database's locale. ``added`` keeps the order of registration among
# rows created in the same instant (SQLite's rowid).
SCHEMA_V1 = """
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
"""


# Version 2 (SQLite's version 5): several partners may each hold a copy of one
# observable (an SCO's id is derived from its value and names no creator), so a
# version is unique per creator; the outbox rows the relay set aside (the bus refused
# their records); a table the health probe writes to while the database is full.
SCHEMA_V2 = """
ALTER TABLE objects DROP CONSTRAINT objects_object_id_version_key_key;
ALTER TABLE objects ADD CONSTRAINT objects_object_id_created_by_ref_version_key_key
    UNIQUE (object_id, created_by_ref, version_key);
CREATE TABLE set_aside (
    seq    bigint PRIMARY KEY REFERENCES objects(seq),
    reason text NOT NULL,
    at     double precision NOT NULL
);
-- Never holds a committed row: the probe inserts and rolls back (see PostgresStore.ping).
CREATE TABLE store_probe (
    id   integer PRIMARY KEY,
    room bytea NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: it brings a database at ``version - 1`` to ``version``.
    To change the schema, append a step; never edit one that has shipped."""

    version: int
    summary: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "partners, communities, credentials, objects with their audiences, outbox, relay"
        " positions, registry version; the audit log, its head, checkpoints, bus mirror"
        " position and signing key",
        SCHEMA_V1,
    ),
    Migration(
        2,
        "observables held per submitter (a version is unique per creator); set-aside"
        " outbox rows; the disk-full probe",
        SCHEMA_V2,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))

# Which steps a database has, one row per step applied.
_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    summary    text NOT NULL,
    applied_at double precision NOT NULL
)
"""

# While the store is full, ping inserts this many random (incompressible) bytes into
# a freshly truncated probe table and rolls back: PostgreSQL must find room on disk
# for them, as it must for a submission.
PROBE_BYTES = 1024 * 1024

# The transaction advisory lock that migrations hold: "exchange" in ASCII, as a bigint.
_MIGRATION_LOCK = int.from_bytes(b"exchange", "big")
# Leases are session advisory locks in the two-int space: (_LEASE_CLASS, key of the
# job). _LEASE_CLASS ("xlse" in ASCII) sets them apart from other applications' locks;
# the key is the first 4 bytes of SHA-256 of the job name, as a signed int, so that
# every process (and every release) derives the same lock from the same job.
_LEASE_CLASS = int.from_bytes(b"xlse", "big")


def lease_key(job: str) -> int:
    """The advisory lock key (with ``_LEASE_CLASS``) of the lease on ``job``."""
    return int.from_bytes(hashlib.sha256(job.encode()).digest()[:4], "big", signed=True)


async def _migrate(conn: Any) -> tuple[int, int]:
    """Bring the database on ``conn`` to ``SCHEMA_VERSION`` in one transaction.
    Returns (version found, version now); Unavailable if a newer release wrote it."""
    async with conn.transaction():
        # Replicas that start together queue here: the first migrates, the others
        # then find the current version. Held until this transaction ends.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(_VERSION_TABLE)
        found = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if found > SCHEMA_VERSION:
            raise Unavailable(newer_schema(found, SCHEMA_VERSION))
        for step in MIGRATIONS[found:]:
            await conn.execute(step.sql)
            await conn.execute(
                "INSERT INTO schema_version (version, summary, applied_at) VALUES ($1, $2, $3)",
                step.version,
                step.summary,
                time.time(),
            )
    return found, SCHEMA_VERSION


# -- errors ---------------------------------------------------------------------------------

# What an unreachable, restarting or overloaded database (or a wrong URL) raises.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,  # connect, acquire or statement took longer than timeout_s
    asyncpg.PostgresConnectionError,  # class 08, and a connection lost mid-call
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # 28: user, password
    asyncpg.exceptions.InvalidCatalogNameError,  # 3D000: no such database
    asyncpg.InterfaceError,  # the connection or pool is closed
    asyncpg.exceptions.InternalClientError,  # a connection the database closed under it
)


def _unreachable(exc: BaseException) -> bool:
    # DataError is an InterfaceError too, but it means a bad argument: a bug.
    return (
        isinstance(exc, _UNREACHABLE)
        and not isinstance(exc, asyncpg.DataError)
        and not _out_of_space(exc)
    )


def _out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the database has no room left (its disk is full)."""
    if isinstance(exc, asyncpg.exceptions.DiskFullError):  # 53100
        return True
    # Files PostgreSQL writes outside a relation (temporary files, say) can fail
    # with an I/O error that names the cause.
    if isinstance(exc, asyncpg.exceptions.PostgresIOError):
        return "No space left on device" in str(exc)
    return False


# A NUL character (U+0000) in text: PostgreSQL's text, and jsonb's strings, cannot
# hold it (SQLite can; validation refuses it in objects before either store sees it).
_UNSTORABLE_TEXT = (
    asyncpg.exceptions.CharacterNotInRepertoireError,  # 22021: 0x00 in text
    asyncpg.exceptions.UntranslatableCharacterError,  # 22P05: \u0000 in jsonb
)


def _unstorable(exc: BaseException) -> bool:
    if isinstance(exc, _UNSTORABLE_TEXT):
        return True
    # asyncpg's own refusal to encode an argument (a lone surrogate, say).
    return isinstance(exc, asyncpg.DataError) and isinstance(exc.__cause__, UnicodeError)


def _has_nul(*texts: str) -> bool:
    return any("\x00" in text for text in texts)


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection was closed under the call (by a database
    restart, say), rather than that the database is slow or refuses."""
    if isinstance(exc, asyncpg.DataError):
        return False
    return isinstance(
        exc,
        asyncpg.ConnectionDoesNotExistError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.InternalClientError
        | ConnectionError,
    )


def _secrets(url: str) -> list[str]:
    """The passwords ``url`` holds, as written and decoded (to scrub from messages)."""
    found: list[str] = []
    with contextlib.suppress(ValueError):
        parts = urllib.parse.urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
        found += [
            v
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if k.lower() in {"password", "sslpassword"}
        ]
    found += [urllib.parse.unquote(s) for s in found]
    # Longest first, so that a decoded password inside the written one goes too.
    return sorted({s for s in found if s}, key=len, reverse=True)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _count(status: str) -> int:
    """The row count of a command status ("UPDATE 1", "INSERT 0 1", "DELETE 0")."""
    return int(status.rsplit(" ", 1)[-1])


# -- rows <-> domain types -------------------------------------------------------------

_PARTNER_COLUMNS = (
    "p.partner_id, p.name, p.identity_id, p.kind, p.sectors, p.roles, p.default_tlp,"
    " p.disabled, ARRAY(SELECT m.community FROM memberships m"
    " WHERE m.partner_id = p.partner_id)"
)
_CREDENTIAL_COLUMNS = (
    "c.credential_id, c.partner_id, c.kind, c.digest, c.created_at, c.expires_at, c.revoked_at"
)
_OBJECT_COLUMNS = (
    "o.seq, o.submitter, o.accepted_at, o.object_id, o.object_type, o.version,"
    " o.created_by_ref, o.tlp, o.body, o.labels, o.revoked, o.spec_version, o.audience::text"
)
_AUDIT_COLUMNS = "idx, data, leaf_hash, at, action, actor, partner, object_id, owner"
# The oldest outbox rows, up to $1 of them and $2 bytes of bodies (at least one).
_PENDING_WITHIN = (
    "WITH head AS (SELECT b.seq, {length}(o.body) AS size FROM outbox b JOIN objects o"
    " USING (seq) ORDER BY b.seq LIMIT $1),"
    " upto AS (SELECT seq, sum(size) OVER (ORDER BY seq) AS total FROM head)"
    " SELECT {columns} FROM outbox b JOIN objects o USING (seq)"
    " WHERE b.seq IN (SELECT seq FROM upto WHERE total <= $2"
    " OR seq = (SELECT min(seq) FROM upto)) ORDER BY b.seq"
)
_CHECKPOINT_COLUMNS = "tree_size, note, signature"
# Each stored version with its outbox row; executemany runs it once per version, in
# bundle order, so that sequence numbers follow the bundle.
# Objects and their outbox rows in one statement, one array per column (a round trip
# per bundle, not per object); seqs are assigned in bundle order.
_INSERT_OBJECTS = """
WITH stored AS (
    INSERT INTO objects (object_id, version, version_key, object_type, created_by_ref,
        submitter, tlp, labels, revoked, spec_version, accepted_at, body, audience)
    SELECT o.object_id, o.version, o.version_key, o.object_type, o.created_by_ref, $12,
        o.tlp, ARRAY(SELECT jsonb_array_elements_text(o.labels::jsonb)), o.revoked,
        o.spec_version, $13, o.body, o.audience::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::boolean[], $9::text[], $10::bytea[], $11::text[])
        WITH ORDINALITY AS o(object_id, version, version_key, object_type, created_by_ref,
                             tlp, labels, revoked, spec_version, body, audience, n)
    ORDER BY o.n
    RETURNING seq
)
INSERT INTO outbox (seq) SELECT seq FROM stored
"""
_INSERT_AUDIT = """
INSERT INTO audit (idx, at, action, actor, partner, object_id, owner, data, leaf_hash)
SELECT * FROM unnest($1::bigint[], $2::float8[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::bytea[], $9::bytea[])
"""


def _as_is(value: Any) -> Any:
    """A PostgreSQL array column, already a list."""
    return value


def _audit_row(row: Sequence[Any]) -> AuditRow:
    idx, data, leaf, at, action, actor, partner, object_id, owner = row
    return AuditRow(
        int(idx),
        bytes(data),
        bytes(leaf),
        float(at),
        str(action),
        str(actor),
        str(partner),
        str(object_id),
        str(owner),
    )


class PostgresStore:
    """``Store`` on a PostgreSQL database (its schema created, or migrated to the
    current version, on open). ``url``: postgresql://USER@HOST:PORT/DATABASE (the
    password is best given as PGPASSWORD). Each process opens ``pool_size``
    connections at most, plus one while it holds leases. ``metrics``: where to show
    that the database is full (``exchange_store_full``)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        timeout_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        if pool_size < 1:
            raise InvalidArgument("the PostgreSQL pool needs one connection or more")
        self._url = url
        self._where = mask_url(url)
        self._room = Room(f"the PostgreSQL database {self._where}", metrics)
        self._secrets = _secrets(url)
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._pool: Any = None
        # Leases: the connection holding their advisory locks, the jobs held on it,
        # and the jobs held on a connection since lost (each told once).
        self._lease_conn: Any = None
        self._outbox_callbacks: list[Callable[[], None]] = []
        self._leases: set[str] = set()
        self._lost: set[str] = set()
        self._lease_guard = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    # -- lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            # No connection floor: connections open when calls need them (a floor
            # would have asyncpg retry, and log, in the background while the
            # database is down). The migration below opens the first one.
            pool = await asyncpg.create_pool(
                self._url,
                min_size=0,
                max_size=self._pool_size,
                timeout=self._timeout_s,
                command_timeout=self._timeout_s,
                server_settings={"application_name": "exchange"},
            )
        except Exception as exc:
            self._raise(exc)
        try:
            async with pool.acquire(timeout=self._timeout_s) as conn:
                await self._migrate_on(conn)
        except BaseException as exc:
            pool.terminate()
            self._raise(exc)
        self._pool = pool

    async def migrate(self) -> tuple[int, int]:
        conn = await self._connect("exchange-migrate")
        try:
            return await self._migrate_on(conn)
        finally:
            await self._close_connection(conn)

    async def _migrate_on(self, conn: Any) -> tuple[int, int]:
        try:
            return await _migrate(conn)
        except asyncpg.PostgresError as exc:
            if _unreachable(exc):
                self._raise(exc)
            error = self._error(f"cannot migrate the database {self._where}: {exc}", exc)
            raise error from error.__cause__
        except Exception as exc:
            self._raise(exc)

    async def ping(self) -> None:
        if not self._room.full:
            await self._read(lambda conn: conn.fetchval("SELECT 1"))
            return

        async def probe(conn: Any) -> None:
            transaction = conn.transaction()
            await transaction.start()
            try:
                # A new, empty file: the insert has to extend it, whatever free space
                # earlier rows left in the table.
                await conn.execute("TRUNCATE store_probe")
                await conn.execute(
                    "INSERT INTO store_probe (id, room) VALUES (1, $1)", os.urandom(PROBE_BYTES)
                )
            finally:
                await transaction.rollback()

        try:
            await self._read(probe)
        except StoreFull as exc:
            raise self._room.still_full("a probe write failed") from exc
        self._room.emptied()

    async def close(self) -> None:
        async with self._lease_guard:
            lease, self._lease_conn = self._lease_conn, None
            self._leases.clear()
            self._lost.clear()
        if lease is not None:
            await self._close_connection(lease)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                # Waits for connections in use to come back, then closes them.
                async with asyncio.timeout(self._timeout_s):
                    await pool.close()
            except Exception:  # closing: nothing left to tell the caller
                pool.terminate()

    async def _connect(self, application: str) -> Any:
        """One connection outside the pool (migrations, leases)."""
        try:
            return await asyncpg.connect(
                self._url,
                timeout=self._timeout_s,
                command_timeout=self._timeout_s,
                server_settings={"application_name": application, **_KEEPALIVES},
            )
        except Exception as exc:
            self._raise(exc)

    async def _close_connection(self, conn: Any) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn.close()
        except Exception:  # a lost connection: nothing to close cleanly
            conn.terminate()

    # -- leases -------------------------------------------------------------------
    async def hold_lease(self, job: str) -> bool:
        """True while this store holds the session advisory lock of ``job`` (see
        ``lease_key``) on its lease connection. When that connection was lost (a
        database restart), the leases held on it are lost: the next call for each of
        them returns False, and later calls try again on a new connection
        (Unavailable while the database cannot be reached)."""
        self._require_pool()
        async with self._lease_guard:
            conn = self._lease_conn
            if conn is not None and not await self._alive(conn):
                if self._leases:
                    log.warning(
                        "lost the lease on %s: the connection to the database closed",
                        ", ".join(sorted(self._leases)),
                    )
                self._lost |= self._leases
                self._leases.clear()
                self._lease_conn = None
                conn.terminate()
            if job in self._lost:
                self._lost.discard(job)
                return False
            if job in self._leases:
                return True
            if self._lease_conn is None:
                self._lease_conn = await self._connect("exchange-leases")
            try:
                held = await self._lease_conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, $2)", _LEASE_CLASS, lease_key(job)
                )
            except Exception as exc:
                self._raise(exc)
            if held:
                self._leases.add(job)
                if job == "relay":
                    # Commits of every process NOTIFY; the relay hears them while it
                    # holds the lease (on the lease's connection: lost with it).
                    await self._lease_conn.add_listener(_OUTBOX_CHANNEL, self._outbox_added)
            return bool(held)

    def on_outbox(self, callback: Callable[[], None]) -> None:
        self._outbox_callbacks.append(callback)

    def _outbox_added(self, *_: object) -> None:
        for callback in self._outbox_callbacks:
            callback()

    async def _alive(self, conn: Any) -> bool:
        if conn.is_closed():
            return False
        try:
            await conn.fetchval("SELECT 1")
        except Exception as exc:
            if _unreachable(exc):
                return False
            raise
        return True

    # -- running statements -------------------------------------------------------
    def _error(self, message: str, cause: BaseException) -> Unavailable:
        """Unavailable with ``message``, chained to ``cause`` unless that would show a
        password in a traceback."""
        error = Unavailable(_scrub(message, self._secrets))
        leaks = any(s in repr(cause) or s in str(cause) for s in self._secrets)
        error.__cause__ = None if leaks else cause
        error.__suppress_context__ = True
        return error

    def _failure(self, exc: BaseException) -> BaseException:
        """What to raise for ``exc``: StoreFull if the database has no room left (the
        store is then full), Unavailable if it cannot be reached."""
        if _out_of_space(exc):
            full = self._room.refused(exc)
            full.__cause__ = exc
            return full
        if not _unreachable(exc):
            return exc
        if isinstance(exc, TimeoutError):
            why = f"no answer within {self._timeout_s:g} s"
        else:
            why = str(exc) or type(exc).__name__
        return self._error(f"cannot reach the PostgreSQL database {self._where}: {why}", exc)

    def _raise(self, exc: BaseException) -> NoReturn:
        """Raise what ``exc`` means for the caller: Unavailable if the database cannot
        be reached (chained to ``exc`` unless that would show a password), else
        ``exc`` itself."""
        failure = self._failure(exc)
        if failure is exc:
            raise exc
        raise failure from failure.__cause__

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise Unavailable("the store is not open")
        return self._pool

    async def _read(self, fn: Callable[[Any], Awaitable[T]], what: str = "") -> T:
        """``fn`` on a connection of the pool."""
        return await self._run(fn, write=False, what=lambda: what)

    async def _write(
        self, fn: Callable[[Any], Awaitable[T]], what: str | Callable[[], str] = ""
    ) -> T:
        """``fn`` in one transaction (read committed) on a connection of the pool.
        ``what``: the call's text, in words, should the database refuse some of it
        (a NUL character)."""
        return await self._run(fn, write=True, what=what if callable(what) else lambda: what)

    async def _run(
        self, fn: Callable[[Any], Awaitable[T]], *, write: bool, what: Callable[[], str]
    ) -> T:
        """``fn`` on a connection of the pool (in a transaction if ``write``), run
        once more in two cases, where nothing of the first run was committed:

        - The pool handed out a connection that the database had closed (it
          restarted since): the second run gets a new connection.
        - ``write``: ``fn`` checks what must be unique before it inserts; when
          another process inserted the same thing between the check and the insert,
          the unique violation rolls everything back, and ``fn``'s check now reports
          the conflict in its own words."""
        pool = self._require_pool()
        retried_lost = retried_unique = False
        while True:
            acquired = committing = False
            try:
                async with pool.acquire(timeout=self._timeout_s) as conn:
                    acquired = True
                    try:
                        if not write:
                            return await fn(conn)
                        async with conn.transaction():
                            result = await fn(conn)
                            # From here on the transaction may have committed: no second run.
                            committing = True
                        return result
                    except asyncpg.exceptions.InternalClientError:
                        # A connection asyncpg can no longer use (the database closed
                        # it while it was idle, and a call came first): drop it.
                        conn.terminate()
                        raise
            except asyncpg.UniqueViolationError as exc:
                if not write or committing or retried_unique:
                    raise AlreadyExists(f"already registered: {exc.detail or exc}") from exc
                retried_unique = True
            except Exception as exc:
                if acquired and not committing and not retried_lost and _lost(exc):
                    retried_lost = True
                    continue
                if _unstorable(exc):
                    # The database's words name a byte, not where it was: say where.
                    raise InvalidArgument(
                        unstorable_text(what() or "a text given to this call")
                    ) from None
                self._raise(exc)

    # -- audit key ----------------------------------------------------------------
    async def audit_public_key(self, public_key: bytes) -> bytes:
        async def run(conn: Any) -> bytes:
            await conn.execute(
                "INSERT INTO audit_key (id, public_key) VALUES (1, $1) ON CONFLICT DO NOTHING",
                public_key,
            )
            return bytes(await conn.fetchval("SELECT public_key FROM audit_key WHERE id = 1"))

        return await self._write(run)

    # -- partners -----------------------------------------------------------------
    async def add_partner(self, partner: Partner, credential: Credential) -> None:
        if credential.partner_id != partner.partner_id:
            raise InvalidArgument(
                f"the first credential of partner {partner.partner_id} names partner"
                f" {credential.partner_id}; it must name the new partner"
            )

        async def run(conn: Any) -> None:
            # Taken in turn with submissions: an object whose id is this partner's
            # identity cannot be committed between the check below and the insert.
            await _lock_audit_head(conn)
            taken = await conn.fetchrow(
                "SELECT partner_id, identity_id FROM partners"
                " WHERE partner_id = $1 OR identity_id = $2",
                partner.partner_id,
                partner.identity_id,
            )
            if taken is not None:
                what = "partner id" if taken[0] == partner.partner_id else "STIX identity"
                raise AlreadyExists(
                    f"{what} already registered (partner {taken[0]}, identity {taken[1]})"
                )
            await _require_communities(conn, partner.communities)
            await conn.execute(
                "INSERT INTO partners (partner_id, name, identity_id, kind, sectors, roles,"
                " default_tlp, disabled, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                partner.partner_id,
                partner.name,
                partner.identity_id,
                partner.kind.value,
                list(partner.sectors),
                sorted(r.value for r in partner.roles),
                partner.default_tlp.value,
                partner.disabled,
                time.time(),
            )
            members = [(c, partner.partner_id) for c in sorted(partner.communities)]
            if members:
                await conn.executemany(
                    "INSERT INTO memberships (community, partner_id) VALUES ($1, $2)", members
                )
            await _insert_credential(conn, credential)
            await _bump(conn)

        await self._write(
            run,
            "the new partner's id, name, identity, sectors or communities, or its first"
            f" {credential.kind}'s id",
        )

    async def get_partner(self, partner_id: str) -> Partner | None:
        if _has_nul(partner_id):
            return None  # nothing the database holds has one
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {_PARTNER_COLUMNS} FROM partners p WHERE p.partner_id = $1",  # noqa: S608
                partner_id,
            )
        )
        return None if row is None else partner_of(row, _as_is)

    async def list_partners(self) -> list[Partner]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_PARTNER_COLUMNS} FROM partners p"  # noqa: S608
                " ORDER BY p.created_at, p.added"
            )
        )
        return [partner_of(r, _as_is) for r in rows]

    async def update_partner(self, partner: Partner) -> None:
        async def run(conn: Any) -> None:
            status = await conn.execute(
                "UPDATE partners SET name = $1, kind = $2, sectors = $3, roles = $4,"
                " default_tlp = $5, disabled = $6 WHERE partner_id = $7",
                partner.name,
                partner.kind.value,
                list(partner.sectors),
                sorted(r.value for r in partner.roles),
                partner.default_tlp.value,
                partner.disabled,
                partner.partner_id,
            )
            if _count(status) == 0:
                raise NotFound(unknown_partner(partner.partner_id))
            await _bump(conn)

        await self._write(run, "the partner's name or sectors")

    # -- communities ----------------------------------------------------------------
    async def add_community(self, community: Community) -> None:
        async def run(conn: Any) -> None:
            if await conn.fetchval("SELECT 1 FROM communities WHERE name = $1", community.name):
                raise AlreadyExists(
                    f"community {community.name} already exists; choose another name, or"
                    " add partners to the existing one"
                )
            await conn.execute(
                "INSERT INTO communities (name, description, created_at) VALUES ($1, $2, $3)",
                community.name,
                community.description,
                time.time(),
            )
            # Members named with the new community join it at once.
            for partner_id in sorted(set(community.members)):
                await _require_partner(conn, partner_id)
                await conn.execute(
                    "INSERT INTO memberships (community, partner_id) VALUES ($1, $2)",
                    community.name,
                    partner_id,
                )
            await _bump(conn)

        await self._write(run, "the community's name, description or members")

    async def list_communities(self) -> list[Community]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT c.name, c.description, ARRAY(SELECT m.partner_id FROM memberships m"
                " WHERE m.community = c.name) FROM communities c ORDER BY c.name"
            )
        )
        return [
            Community(str(name), str(description), tuple(sorted(map(str, members))))
            for name, description, members in rows
        ]

    async def join_community(self, name: str, partner_id: str) -> None:
        async def run(conn: Any) -> None:
            await _require_communities(conn, [name])
            await _require_partner(conn, partner_id)
            status = await conn.execute(
                "INSERT INTO memberships (community, partner_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING",
                name,
                partner_id,
            )
            if _count(status):
                await _bump(conn)

        await self._write(run, "the community name or the partner id")

    async def leave_community(self, name: str, partner_id: str) -> None:
        async def run(conn: Any) -> None:
            await _require_communities(conn, [name])
            await _require_partner(conn, partner_id)
            status = await conn.execute(
                "DELETE FROM memberships WHERE community = $1 AND partner_id = $2",
                name,
                partner_id,
            )
            if not _count(status):
                raise NotFound(not_a_member(name, partner_id))
            await _bump(conn)

        await self._write(run, "the community name or the partner id")

    # -- credentials ----------------------------------------------------------------
    async def add_credential(self, credential: Credential) -> None:
        async def run(conn: Any) -> None:
            await _require_partner(conn, credential.partner_id)
            await _insert_credential(conn, credential)
            await _bump(conn)

        await self._write(run, f"the {credential.kind}'s id or partner id")

    async def list_credentials(self, partner_id: str) -> list[Credential]:
        if _has_nul(partner_id):
            return []  # nothing the database holds has one
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c"  # noqa: S608
                " WHERE c.partner_id = $1 ORDER BY c.created_at, c.added",
                partner_id,
            )
        )
        return [credential_of(r) for r in rows]

    async def revoke_credential(self, partner_id: str, credential_id: str, at: float) -> Credential:
        async def run(conn: Any) -> Credential:
            await _require_partner(conn, partner_id)
            row = await conn.fetchrow(
                f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials c"  # noqa: S608
                " WHERE c.credential_id = $1 AND c.partner_id = $2 FOR UPDATE",
                credential_id,
                partner_id,
            )
            if row is None:
                raise NotFound(
                    f"partner {partner_id} has no credential {credential_id}; list the"
                    " partner's credentials to see their ids"
                )
            credential = credential_of(row)
            if credential.revoked_at is not None:
                # Revoking twice keeps the first time, and changes nothing.
                return credential
            await conn.execute(
                "UPDATE credentials SET revoked_at = $1 WHERE credential_id = $2",
                at,
                credential_id,
            )
            await _bump(conn)
            return replace(credential, revoked_at=at)

        return await self._write(run, "the partner id or the credential id")

    async def credential(
        self, kind: CredentialKind, digest: bytes
    ) -> tuple[Credential, Partner] | None:
        # Runs on every RPC: one query.
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {_CREDENTIAL_COLUMNS}, {_PARTNER_COLUMNS}"  # noqa: S608
                " FROM credentials c JOIN partners p ON p.partner_id = c.partner_id"
                " WHERE c.kind = $1 AND c.digest = $2",
                kind.value,
                digest,
            )
        )
        if row is None:
            return None
        values = tuple(row)
        return credential_of(values[:7]), partner_of(values[7:], _as_is)

    async def registry_version(self) -> int:
        version = await self._read(
            lambda conn: conn.fetchval("SELECT version FROM registry_state WHERE id = 1")
        )
        return int(version)

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

        async def run(conn: Any) -> list[Committed]:
            size, previous = await _lock_audit_head(conn)
            results = await _insert_objects(conn, submitter, objects, accepted_at, widen)
            # One SUBMIT entry per object of the bundle, in bundle order.
            submits = bundle_submits(submitter.partner_id, objects, results, rejected, accepted_at)
            entries = await _append_audit(conn, size, previous, [e for _, e in submits])
            return with_receipts(results, submits, entries)

        return await self._write(run, lambda: nul_in_bundle(objects, rejected) or "the bundle")

    # -- audit log ------------------------------------------------------------------
    async def append_audit(self, events: Sequence[Event]) -> list[AuditEntry]:
        if not events:
            return []

        async def run(conn: Any) -> list[AuditEntry]:
            size, previous = await _lock_audit_head(conn)
            return await _append_audit(conn, size, previous, events)

        return await self._write(run, lambda: _nul_in_events(events))

    async def audit_size(self) -> int:
        size = await self._read(
            lambda conn: conn.fetchval("SELECT coalesce(max(idx) + 1, 0) FROM audit")
        )
        return int(size)

    async def audit_entries(self, query: AuditQuery, *, only_of: str = "") -> list[AuditEntry]:
        args: list[object] = [query.after_index]
        where = ["idx > $1"]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.partner:
            # "partner <> ''" lets PostgreSQL use the partial index on partner.
            p = arg(query.partner)
            where.append(f"(actor = {p} OR (partner = {p} AND partner <> ''))")
        if query.object_id:
            where.append(f"object_id = {arg(query.object_id)}")
        if query.action:
            where.append(f"action = {arg(query.action)}")
        if query.since is not None:
            where.append(f"at >= {arg(float(query.since))}")
        if query.until is not None:
            where.append(f"at < {arg(float(query.until))}")
        if only_of:
            o = arg(only_of)
            where.append(f"(actor = {o} OR owner = {o})")
        limit = arg(max(query.limit, 0))
        # Only fixed clauses above; every value is a parameter.
        sql = f"SELECT idx, data, leaf_hash FROM audit WHERE {' AND '.join(where)}"  # noqa: S608
        sql += f" ORDER BY idx LIMIT {limit}"

        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        out: list[AuditEntry] = []
        for idx, data, leaf in rows:
            try:
                _, _, event = Event.decode(data)
            except (ValueError, KeyError, TypeError):
                raise Unavailable(
                    f"audit entry {idx} is damaged (its bytes are not an entry); run"
                    " `exchange audit verify` on the database"
                ) from None
            out.append(AuditEntry(int(idx), event, bytes(data), bytes(leaf)))
        return out

    async def audit_rows(self, start: int, limit: int) -> list[AuditRow]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_AUDIT_COLUMNS} FROM audit"  # noqa: S608
                " WHERE idx >= $1 ORDER BY idx LIMIT $2",
                start,
                max(limit, 0),
            )
        )
        return [_audit_row(r) for r in rows]

    async def audit_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT leaf_hash FROM audit WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                start,
                end,
            )
        )
        return [bytes(leaf) for (leaf,) in rows]

    async def add_checkpoint(self, checkpoint: SignedCheckpoint) -> None:
        async def run(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO audit_checkpoints (tree_size, note, signature)"
                " VALUES ($1, $2, $3) ON CONFLICT (tree_size) DO NOTHING",
                checkpoint.tree_size,
                checkpoint.note,
                checkpoint.signature,
            )

        await self._write(run)

    async def checkpoints(self) -> list[SignedCheckpoint]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints"  # noqa: S608
                " ORDER BY tree_size"
            )
        )
        return [checkpoint_of(r) for r in rows]

    async def latest_checkpoint(self) -> SignedCheckpoint | None:
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints"  # noqa: S608
                " ORDER BY tree_size DESC LIMIT 1"
            )
        )
        return None if row is None else checkpoint_of(row)

    async def audit_mirror_position(self) -> int:
        position = await self._read(
            lambda conn: conn.fetchval("SELECT next_index FROM audit_mirror WHERE id = 1")
        )
        return int(position)

    async def set_audit_mirror_position(self, index: int) -> None:
        async def run(conn: Any) -> None:
            await conn.execute("UPDATE audit_mirror SET next_index = $1 WHERE id = 1", index)

        await self._write(run)

    async def submitters_of(self, object_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        # An id with a NUL character is held by nobody (the database cannot hold one).
        wanted = sorted({oid for oid in object_ids if not _has_nul(oid)})
        if not wanted:
            return {}
        # Every version of an SDO or SRO comes from its creator; an observable's copies
        # from each partner that submitted one.
        rows = await self._read(
            lambda conn: conn.fetch(
                # Joined with the ids, as in _held_versions: index probes per id.
                "SELECT DISTINCT o.object_id, o.submitter"
                " FROM unnest($1::text[]) AS w(id) JOIN objects o ON o.object_id = w.id",
                wanted,
            )
        )
        out: dict[str, set[str]] = {}
        for oid, submitter in rows:
            out.setdefault(str(oid), set()).add(str(submitter))
        return {oid: frozenset(submitters) for oid, submitters in out.items()}

    async def object_copies(self, object_id: str, version: str | None = None) -> list[StoredObject]:
        if _has_nul(object_id):
            return []  # nothing the database holds has one
        if version is None:
            # The latest version of each copy (one copy per creator).
            rows = await self._read(
                lambda conn: conn.fetch(
                    f"SELECT DISTINCT ON (o.created_by_ref) {_OBJECT_COLUMNS}"  # noqa: S608
                    " FROM objects o WHERE o.object_id = $1"
                    " ORDER BY o.created_by_ref, o.version_key DESC, o.seq DESC",
                    object_id,
                )
            )
        else:
            key = version_key(version)
            rows = await self._read(
                lambda conn: conn.fetch(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects o"  # noqa: S608
                    " WHERE o.object_id = $1 AND o.version_key = $2",
                    object_id,
                    key,
                )
            )
        # Each version under the audience it was stored (and delivered) with; copies in
        # the order they were accepted, as the SQLite store returns them.
        return sorted((stored_of(row, _as_is) for row in rows), key=lambda s: s.seq)

    # -- relay --------------------------------------------------------------------
    async def pending_outbox(self, limit: int, max_bytes: int | None = None) -> list[StoredObject]:
        if max_bytes is None:
            query = (
                f"SELECT {_OBJECT_COLUMNS} FROM outbox b JOIN objects o USING (seq)"  # noqa: S608
                " ORDER BY b.seq LIMIT $1"
            )
            args: tuple[int, ...] = (max(limit, 0),)
        else:
            query = _PENDING_WITHIN.format(columns=_OBJECT_COLUMNS, length="octet_length")
            args = (max(limit, 0), max_bytes)
        rows = await self._read(lambda conn: conn.fetch(query, *args))
        return [stored_of(r, _as_is) for r in rows]

    async def mark_published(
        self,
        seqs: Sequence[int],
        positions: Mapping[TopicPartition, int],
        set_aside: Mapping[int, str] | None = None,
    ) -> None:
        aside = {int(seq): set_aside_reason(reason) for seq, reason in (set_aside or {}).items()}
        published = [s for s in seqs if s not in aside]
        at = time.time()

        async def run(conn: Any) -> None:
            # Rows another process deleted already are simply not there any more.
            if published:
                await conn.execute(
                    "DELETE FROM outbox o USING unnest($1::bigint[]) AS d(seq) WHERE o.seq = d.seq",
                    published,
                )
            if aside:
                # Only rows still in the outbox: one another relay published is not set
                # aside after the fact.
                ordered = sorted(aside.items())
                await conn.execute(
                    "WITH gone AS (DELETE FROM outbox o USING unnest($1::bigint[]) AS d(seq)"
                    " WHERE o.seq = d.seq RETURNING o.seq)"
                    " INSERT INTO set_aside (seq, reason, at)"
                    " SELECT a.seq, a.reason, $3"
                    " FROM unnest($1::bigint[], $2::text[]) AS a(seq, reason)"
                    " JOIN gone USING (seq)"
                    " ON CONFLICT (seq) DO UPDATE SET reason = excluded.reason, at = excluded.at",
                    [seq for seq, _ in ordered],
                    [reason for _, reason in ordered],
                    at,
                )
            # In one order in every process, so that two writers cannot deadlock.
            rows = sorted((t, p, o) for (t, p), o in positions.items())
            if rows:
                await conn.executemany(
                    "INSERT INTO relay_positions (topic, partition, next_offset)"
                    " VALUES ($1, $2, $3) ON CONFLICT (topic, partition) DO UPDATE"
                    " SET next_offset = GREATEST(relay_positions.next_offset,"
                    " excluded.next_offset)",
                    rows,
                )

        await self._write(run)

    async def set_aside_rows(self, limit: int = 1000) -> list[SetAsideRow]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT s.seq, o.object_id, o.version, o.submitter, s.reason, s.at"
                " FROM set_aside s JOIN objects o USING (seq) ORDER BY s.seq LIMIT $1",
                max(limit, 0),
            )
        )
        return [set_aside_of(r) for r in rows]

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        wanted = sorted(set(topics))
        if not wanted:
            return {}
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT topic, partition, next_offset FROM relay_positions"
                " WHERE topic = ANY($1::text[])",
                wanted,
            )
        )
        return {(str(topic), int(partition)): int(offset) for topic, partition, offset in rows}


# -- registry helpers (inside a write transaction) ----------------------------------------


async def _bump(conn: Any) -> None:
    await conn.execute("UPDATE registry_state SET version = version + 1 WHERE id = 1")


async def _require_partner(conn: Any, partner_id: str) -> None:
    if not await conn.fetchval("SELECT 1 FROM partners WHERE partner_id = $1", partner_id):
        raise NotFound(unknown_partner(partner_id))


async def _require_communities(conn: Any, names: Iterable[str]) -> None:
    wanted = sorted(set(names))
    if not wanted:
        return
    rows = await conn.fetch(
        "SELECT name FROM communities WHERE name = ANY($1::text[])",
        wanted,
    )
    known = {str(name) for (name,) in rows}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise NotFound(community_missing(missing))


async def _insert_credential(conn: Any, credential: Credential) -> None:
    bound = await conn.fetchrow(
        "SELECT credential_id, partner_id FROM credentials"
        " WHERE credential_id = $1 OR (kind = $2 AND digest = $3)",
        credential.credential_id,
        credential.kind.value,
        credential.digest,
    )
    if bound is not None:
        if bound[0] == credential.credential_id:
            raise AlreadyExists(credential_id_taken(credential.credential_id, bound[1]))
        raise AlreadyExists(credential_bound(credential.kind, bound[1], bound[0]))
    await conn.execute(
        "INSERT INTO credentials (credential_id, partner_id, kind, digest, created_at,"
        " expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        credential.credential_id,
        credential.partner_id,
        credential.kind.value,
        credential.digest,
        credential.created_at,
        credential.expires_at,
        credential.revoked_at,
    )


# -- the audit chain and objects (inside a write transaction) -----------------------------


async def _lock_audit_head(conn: Any) -> tuple[int, bytes]:
    """Lock the head of the audit chain until this transaction ends (other appenders,
    in any process, wait here) and return it: (entries held, last leaf hash).

    ``commit_objects`` calls this first, before it inserts any object, and this is
    what keeps sequence numbers in commit order: a sequence hands out numbers when
    rows are inserted, not when they commit, so a transaction that took seq 10 could
    commit after one that took 11, and a subscriber that already saw 11 would drop
    10 as a repeat (a lost delivery). Under this lock, the transaction that takes the
    next numbers starts only once the previous one has committed (and is visible).
    Its checks (creator, duplicate, revoked) then also see every version committed
    before, whichever process wrote it."""
    row = await conn.fetchrow("SELECT size, leaf_hash FROM audit_head WHERE id = 1 FOR UPDATE")
    if row is None:
        return 0, NO_PREVIOUS
    return int(row[0]), bytes(row[1])


async def _append_audit(
    conn: Any, size: int, previous: bytes, events: Sequence[Event]
) -> list[AuditEntry]:
    """Append ``events`` after the head ``_lock_audit_head`` returned, hashing them in
    this transaction, and move the head."""
    entries = chain(events, size, previous)
    if not entries:
        return entries
    rows = [audit_row(entry) for entry in entries]
    await conn.execute(_INSERT_AUDIT, *(list(column) for column in zip(*rows, strict=True)))
    last = entries[-1]
    await conn.execute(
        "UPDATE audit_head SET size = $1, leaf_hash = $2 WHERE id = 1",
        last.index + 1,
        last.leaf_hash,
    )
    return entries


async def _insert_objects(
    conn: Any,
    submitter: Partner,
    objects: Sequence[tuple[ValidObject, Audience]],
    accepted_at: float,
    widen: Callable[[Audience, Audience], Audience],
) -> list[Committed]:
    held = await _held_versions(conn, {o.object_id for o, _ in objects})
    results: list[Committed] = []
    rows: list[tuple[object, ...]] = []
    for obj, asked in objects:
        key = version_key(obj.version)
        versions = held.setdefault(
            copy_key(obj.object_id, obj.object_type, obj.created_by_ref), Held()
        )
        refused = versions.refuses(obj, key)
        if refused is not None:
            results.append(Committed(refused))
            continue
        # The latest version holds the cumulative audience: an audience never narrows.
        audience = asked if versions.audience is None else widen(versions.audience, asked)
        rows.append(
            (
                obj.object_id,
                obj.version,
                key,
                obj.object_type,
                obj.created_by_ref,
                obj.tlp.value,
                orjson.dumps(obj.labels).decode(),
                obj.revoked,
                obj.spec_version,
                obj.body,
                audience.to_json().decode(),
            )
        )
        versions.add(obj, key, audience)
        results.append(Committed(CommitOutcome.INSERTED, audience))
    if rows:
        columns = [list(column) for column in zip(*rows, strict=True)]
        await conn.execute(_INSERT_OBJECTS, *columns, submitter.partner_id, accepted_at)
        # Wakes the relay of whichever replica holds its lease, at commit.
        await conn.execute(f"NOTIFY {_OUTBOX_CHANNEL}")
    return results


async def _held_versions(conn: Any, ids: set[str]) -> dict[CopyKey, Held]:
    """What is held of ``ids``, per copy (``copy_key``)."""
    wanted = sorted(ids)
    held: dict[CopyKey, Held] = {}
    # A registered partner's identity object (an SDO) belongs to that partner, even
    # before it submitted it: nobody else may publish it.
    for (identity,) in await conn.fetch(
        "SELECT identity_id FROM partners WHERE identity_id = ANY($1::text[])", wanted
    ):
        held.setdefault((str(identity), ""), Held()).creator = str(identity)
    latest: dict[CopyKey, str] = {}
    # A join with the ids, not "object_id = ANY($1)": the planner then probes the
    # (object_id, created_by_ref, version_key) index per id instead of scanning the
    # table, whatever its statistics say (a bundle of 1,000 was 3x slower on a freshly
    # filled table).
    for oid, otype, key, creator, revoked, audience in await conn.fetch(
        "SELECT o.object_id, o.object_type, o.version_key, o.created_by_ref, o.revoked,"
        " o.audience::text FROM unnest($1::text[]) AS w(id)"
        " JOIN objects o ON o.object_id = w.id ORDER BY o.seq",
        wanted,
    ):
        copy = copy_key(str(oid), str(otype), str(creator))
        entry = held.setdefault(copy, Held())
        entry.creator = str(creator)
        entry.keys.add(str(key))
        entry.revoked = entry.revoked or bool(revoked)
        latest[copy] = str(audience)
    for copy, audience in latest.items():
        held[copy].audience = Audience.from_json(audience)
    return held


def _nul_in_events(events: Sequence[Event]) -> str:
    """Which column of which entry holds a NUL character, in words."""
    for n, event in enumerate(events):
        for column in ("actor", "partner", "object_id", "owner"):
            if _has_nul(getattr(event, column)):
                return f"audit entry {n + 1} of {len(events)} ({event.action.value}): its {column}"
    return "an audit entry"
