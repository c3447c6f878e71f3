"""The audit log in SQLite: entries, checkpoints, the bus mirror's position."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from exchange.audit.entries import AuditEntry, AuditQuery, Event
from exchange.errors import Unavailable
from exchange.model import Audience, Rejection, ValidObject
from exchange.store import AuditRow, Committed, SignedCheckpoint
from exchange.store._common import (
    NO_PREVIOUS,
    AuditValues,
    audit_row,
    chain,
    checkpoint_of,
    listed_rows,
    submit_entries,
)
from exchange.store.sqlite._connection import _Connections
from exchange.store.sqlite._sql import _AUDIT_BYTES, _CHECKPOINT_COLUMNS

# -- audit log (inside a write transaction) -----------------------------------------------


def _audit_size(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT idx FROM audit ORDER BY idx DESC LIMIT 1").fetchone()
    return 0 if row is None else int(row[0]) + 1


_INSERT_AUDIT = (
    "INSERT INTO audit (idx, at, action, actor, partner, object_id, owner, data, leaf_hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _audit_head(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """(entries held, last leaf hash), read under the write lock: another process may
    have appended."""
    last = conn.execute(
        "SELECT idx, CAST(leaf_hash AS BLOB) FROM audit ORDER BY idx DESC LIMIT 1"
    ).fetchone()
    return (0, NO_PREVIOUS) if last is None else (int(last[0]) + 1, bytes(last[1]))


def append_audit_rows(conn: sqlite3.Connection, events: Sequence[Event]) -> list[AuditEntry]:
    """Append ``events`` after the last stored entry, hashing them in this transaction."""
    entries = chain(events, *_audit_head(conn))
    conn.executemany(_INSERT_AUDIT, [audit_row(entry) for entry in entries])
    if listed := listed_rows(entries):
        conn.executemany("INSERT INTO audit_objects (object_id, idx) VALUES (?, ?)", listed)
    return entries


def append_submits(
    conn: sqlite3.Connection,
    submitter_id: str,
    objects: Sequence[tuple[ValidObject, Audience]],
    results: Sequence[Committed],
    rejected: Sequence[Rejection],
    *,
    at: float,
) -> list[Committed]:
    """Append a bundle's SUBMIT entries (``submit_entries``) after the last stored
    entry; ``results`` with their receipts."""
    committed, rows = submit_entries(
        submitter_id, objects, results, rejected, at, head=_audit_head(conn)
    )
    insert_audit(conn, rows)
    return committed


def insert_audit(conn: sqlite3.Connection, rows: Sequence[AuditValues]) -> None:
    conn.executemany(_INSERT_AUDIT, rows)


class _AuditRows(_Connections):
    """``AuditStore`` on SQLite."""

    async def audit_public_key(self, public_key: bytes) -> bytes:
        def run(conn: sqlite3.Connection) -> bytes:
            conn.execute(
                "INSERT INTO audit_key (id, public_key) VALUES (1, ?) ON CONFLICT DO NOTHING",
                (public_key,),
            )
            (recorded,) = conn.execute("SELECT public_key FROM audit_key WHERE id = 1").fetchone()
            return bytes(recorded)

        return await self._write(run)

    async def append_audit(self, events: Sequence[Event]) -> list[AuditEntry]:
        if not events:
            return []
        return await self._write(lambda conn: append_audit_rows(conn, events))

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
            # Entries naming the object, and entries listing it (DELIVER).
            where.append(
                "(object_id = ? OR idx IN (SELECT idx FROM audit_objects WHERE object_id = ?))"
            )
            args += [query.object_id, query.object_id]
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

    async def audit_unindexed(self, listed: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        if not listed:
            return []
        pairs = orjson.dumps(listed)

        def run(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            rows = conn.execute(
                "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')"
                " FROM json_each(?) WHERE NOT EXISTS (SELECT 1 FROM audit_objects"
                " WHERE object_id = json_extract(value, '$[0]')"
                " AND idx = json_extract(value, '$[1]'))",
                (pairs,),
            )
            return [(str(object_id), int(idx)) for object_id, idx in rows]

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
