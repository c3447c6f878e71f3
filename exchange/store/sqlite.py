"""The embedded store: one SQLite file in the data directory.

All writes go through one connection on one thread, so a bundle's checks
(creator, duplicate, revoked) and its inserts are one serialized transaction.
Reads that must not wait behind a large commit (credential look-ups) use a
second connection. WAL mode lets the ``exchange`` CLI write to the same file
while the server runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import orjson

from exchange.bus import TopicPartition
from exchange.errors import AlreadyExists, Unavailable
from exchange.model import Partner, StoredObject, Tlp, ValidObject, version_key
from exchange.store import CommitOutcome

__all__ = ["SqliteStore"]

T = TypeVar("T")

SCHEMA = """
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

_OBJECT_COLUMNS = (
    "o.seq, o.submitter, o.accepted_at, o.object_id, o.object_type, o.version,"
    " o.created_by_ref, o.tlp, o.body, o.labels, o.revoked, o.spec_version"
)
# SQLite allows 32,766 host parameters per statement; stay well below.
_CHUNK = 500


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the partner gets its answer (invariant 1).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _partner(row: sqlite3.Row | tuple[object, ...]) -> Partner:
    pid, name, sector, identity, tlp, disabled = row
    return Partner(
        partner_id=str(pid),
        name=str(name),
        sector=str(sector),
        identity_id=str(identity),
        default_tlp=Tlp(str(tlp)),
        disabled=bool(disabled),
    )


def _stored(row: tuple[object, ...]) -> StoredObject:
    seq, submitter, accepted_at, oid, otype, version, creator, tlp, body, labels, revoked, spec = (
        row
    )
    assert isinstance(seq, int) and isinstance(accepted_at, float) and isinstance(body, bytes)
    assert isinstance(labels, str)
    return StoredObject(
        seq=seq,
        submitter=str(submitter),
        accepted_at=accepted_at,
        obj=ValidObject(
            object_id=str(oid),
            object_type=str(otype),
            version=str(version),
            created_by_ref=str(creator),
            tlp=Tlp(str(tlp)),
            body=body,
            labels=tuple(orjson.loads(labels)),
            revoked=bool(revoked),
            spec_version=str(spec),
        ),
    )


class SqliteStore:
    """``Store`` on a SQLite file (created with its schema on first open)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="store-read")

    # -- lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        await self._on(self._write_thread, self._open_sync)

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer = _connect(self.path)
            writer.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise Unavailable(f"cannot open the database {self.path}: {exc}") from exc
        self._writer = writer
        self._reader = _connect(self.path)

    async def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                conn.close()
        self._writer = self._reader = None
        self._write_thread.shutdown(wait=True)
        self._read_thread.shutdown(wait=True)

    async def _on(self, thread: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(thread, fn)

    def _w(self) -> sqlite3.Connection:
        if self._writer is None:
            raise Unavailable("the store is not open")
        return self._writer

    def _r(self) -> sqlite3.Connection:
        if self._reader is None:
            raise Unavailable("the store is not open")
        return self._reader

    # -- partners and credentials -------------------------------------------------
    async def add_partner(self, partner: Partner, token_hash: bytes) -> None:
        def run() -> None:
            conn = self._w()
            with _transaction(conn):
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
                now = time.time()
                conn.execute(
                    "INSERT INTO partners VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        partner.partner_id,
                        partner.name,
                        partner.sector,
                        partner.identity_id,
                        partner.default_tlp.value,
                        int(partner.disabled),
                        now,
                    ),
                )
                conn.execute(
                    "INSERT INTO credentials VALUES (?, ?, ?, NULL)",
                    (token_hash, partner.partner_id, now),
                )

        await self._on(self._write_thread, run)

    async def partner_for_token(self, token_hash: bytes) -> Partner | None:
        def run() -> Partner | None:
            row = (
                self._r()
                .execute(
                    "SELECT p.partner_id, p.name, p.sector, p.identity_id, p.default_tlp,"
                    " p.disabled FROM credentials c JOIN partners p USING (partner_id)"
                    " WHERE c.token_hash = ? AND c.revoked_at IS NULL",
                    (token_hash,),
                )
                .fetchone()
            )
            return None if row is None else _partner(row)

        return await self._on(self._read_thread, run)

    async def list_partners(self) -> list[Partner]:
        def run() -> list[Partner]:
            rows = (
                self._r()
                .execute(
                    "SELECT partner_id, name, sector, identity_id, default_tlp, disabled"
                    " FROM partners ORDER BY created_at"
                )
                .fetchall()
            )
            return [_partner(r) for r in rows]

        return await self._on(self._read_thread, run)

    # -- objects ----------------------------------------------------------------
    async def commit_objects(
        self, submitter: Partner, objects: Sequence[ValidObject], accepted_at: float
    ) -> list[CommitOutcome]:
        if not objects:
            return []
        return await self._on(
            self._write_thread, lambda: self._commit_sync(submitter, objects, accepted_at)
        )

    def _commit_sync(
        self, submitter: Partner, objects: Sequence[ValidObject], accepted_at: float
    ) -> list[CommitOutcome]:
        conn = self._w()
        with _transaction(conn):
            held = _held_versions(conn, {o.object_id for o in objects})
            outcomes: list[CommitOutcome] = []
            for obj in objects:
                key = version_key(obj.version)
                versions = held.setdefault(obj.object_id, _Held())
                if versions.creator is not None and versions.creator != obj.created_by_ref:
                    outcomes.append(CommitOutcome.NOT_CREATOR)
                elif key in versions.keys:
                    outcomes.append(CommitOutcome.DUPLICATE)
                elif versions.revoked:
                    outcomes.append(CommitOutcome.REVOKED)
                else:
                    cur = conn.execute(
                        "INSERT INTO objects (object_id, version, version_key, object_type,"
                        " created_by_ref, submitter, tlp, labels, revoked, spec_version,"
                        " accepted_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                        ),
                    )
                    conn.execute("INSERT INTO outbox (seq) VALUES (?)", (cur.lastrowid,))
                    versions.creator = obj.created_by_ref
                    versions.keys.add(key)
                    versions.revoked = versions.revoked or obj.revoked
                    outcomes.append(CommitOutcome.INSERTED)
        return outcomes

    # -- relay --------------------------------------------------------------------
    async def pending_outbox(self, limit: int) -> list[StoredObject]:
        def run() -> list[StoredObject]:
            rows = (
                self._r()
                .execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM outbox b JOIN objects o USING (seq)"  # noqa: S608
                    " ORDER BY b.seq LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
            return [_stored(r) for r in rows]

        return await self._on(self._read_thread, run)

    async def mark_published(
        self, seqs: Sequence[int], positions: Mapping[TopicPartition, int]
    ) -> None:
        def run() -> None:
            conn = self._w()
            with _transaction(conn):
                conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                conn.executemany(
                    "INSERT INTO relay_positions VALUES (?, ?, ?)"
                    " ON CONFLICT (topic, partition) DO UPDATE"
                    " SET next_offset = max(next_offset, excluded.next_offset)",
                    [(t, p, o) for (t, p), o in positions.items()],
                )

        await self._on(self._write_thread, run)

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        wanted = sorted(set(topics))

        def run() -> dict[TopicPartition, int]:
            out: dict[TopicPartition, int] = {}
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                for topic, partition, offset in self._r().execute(
                    "SELECT topic, partition, next_offset FROM relay_positions"  # noqa: S608
                    f" WHERE topic IN ({marks})",
                    chunk,
                ):
                    out[(str(topic), int(partition))] = int(offset)
            return out

        return await self._on(self._read_thread, run)


class _Held:
    __slots__ = ("creator", "keys", "revoked")

    def __init__(self) -> None:
        self.creator: str | None = None
        self.keys: set[str] = set()
        self.revoked = False


def _held_versions(conn: sqlite3.Connection, ids: set[str]) -> dict[str, _Held]:
    held: dict[str, _Held] = {}
    for chunk in _chunks(sorted(ids)):
        marks = ",".join("?" * len(chunk))
        # A registered partner's identity object belongs to that partner, even
        # before it submitted it: nobody else may publish it.
        for (identity,) in conn.execute(
            f"SELECT identity_id FROM partners WHERE identity_id IN ({marks})",  # noqa: S608
            chunk,
        ):
            held.setdefault(identity, _Held()).creator = identity
        for oid, key, creator, revoked in conn.execute(
            "SELECT object_id, version_key, created_by_ref, revoked FROM objects"  # noqa: S608
            f" WHERE object_id IN ({marks})",
            chunk,
        ):
            entry = held.setdefault(oid, _Held())
            entry.creator = creator
            entry.keys.add(key)
            entry.revoked = entry.revoked or bool(revoked)
    return held


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
