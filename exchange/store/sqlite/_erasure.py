"""Erasure in SQLite: bodies removed in one transaction with the outbox rows, the
erasure kept for the relay and an ERASE audit entry; the file itself left without a
copy (secure_delete overwrites freed space; the WAL is truncated after)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Mapping, Sequence

from exchange._tasks import retrieve_failure
from exchange.audit.entries import erased
from exchange.bus import TopicPartition
from exchange.errors import Unavailable
from exchange.model import EraseReason, Erasure
from exchange.store._erasure import (
    ERASURE_COLUMNS,
    ErasableRow,
    ReferrerRow,
    by_copy,
    erasure_of_row,
    erasure_values,
    newest_key,
    referrers,
)
from exchange.store.sqlite._audit import append_audit_rows
from exchange.store.sqlite._connection import _Connections
from exchange.store.sqlite._sql import _RECORD_POSITION, BUSY_TIMEOUT_MS

log = logging.getLogger(__name__)

_TRUNCATE_RETRY_S = 1.0

_INSERT_ERASURE = (
    "INSERT INTO erasures (object_id, object_type, submitter, created_by_ref, versions,"
    " reason, erased_by, erased_at, referenced_by, every_copy, audit_index)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, -1)"
)


def _erase(
    conn: sqlite3.Connection,
    object_id: str,
    copy_of: str | None,
    *,
    by: str,
    reason: EraseReason,
    at: float,
    latest_seq: int | None,
) -> list[Erasure]:
    query = (
        "SELECT seq, object_type, created_by_ref, submitter, version, audience, body"
        " FROM objects WHERE object_id = ? AND erased_at IS NULL"
    )
    params: tuple[str, ...] = (object_id,)
    if copy_of is not None:
        # By its identity, the second column of the (object_id, created_by_ref, ...)
        # index: a partner asking for an id it holds no copy of costs one probe, however
        # many versions others hold (what it may not see must not show in the time).
        query += " AND created_by_ref = (SELECT identity_id FROM partners WHERE partner_id = ?)"
        params += (copy_of,)
    rows = [ErasableRow(*row) for row in conn.execute(query + " ORDER BY version_key, seq", params)]
    if not rows or (latest_seq is not None and max(r.seq for r in rows) != latest_seq):
        return []
    referring = referrers(
        (
            ReferrerRow(*row)
            for row in conn.execute(
                "SELECT o.seq, o.object_id, o.audience FROM object_refs r JOIN objects o"
                " USING (seq) WHERE r.ref_id = ? AND o.erased_at IS NULL ORDER BY o.seq",
                (object_id,),
            )
        ),
        object_id,
    )
    done: list[Erasure] = []
    for copy_rows in by_copy(rows, object_id).values():
        seqs = [(row.seq,) for row in copy_rows]
        conn.executemany(
            "UPDATE objects SET body = X'', erased_at = ? WHERE seq = ?",
            [(at, seq) for (seq,) in seqs],
        )
        # Never published now: the relay only publishes the erasure (its tombstones).
        conn.executemany("DELETE FROM outbox WHERE seq = ?", seqs)
        erasure, values = erasure_values(
            object_id, copy_rows, by=by, reason=reason, at=at, referenced_by=referring
        )
        erasure_id = conn.execute(_INSERT_ERASURE, (*values, copy_of is None)).lastrowid
        assert erasure_id is not None  # an INSERT into a rowid table
        (entry,) = append_audit_rows(conn, [erased(erasure)])
        conn.execute(
            "UPDATE erasures SET audit_index = ? WHERE erasure_id = ?", (entry.index, erasure_id)
        )
        done.append(erasure_of(conn, erasure_id))
    return done


def erasure_of(conn: sqlite3.Connection, erasure_id: int) -> Erasure:
    row = conn.execute(
        f"SELECT {ERASURE_COLUMNS} FROM erasures WHERE erasure_id = ?",  # noqa: S608
        (erasure_id,),
    ).fetchone()
    return erasure_of_row(row)


def _truncate_wal(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database and truncate it to nothing: the frames of the
    transactions that wrote an erased body stay in the WAL file otherwise, until
    overwritten. Never waits: a reader still on an older snapshot (a backup, an
    operator's sqlite3 shell) keeps it from completing, and waiting for it would hold
    every submission up behind the writer. False then: retried later."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError:  # another process holds the write lock
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS:d}")
    return not busy


class _ErasureRows(_Connections):
    """Erasure on SQLite (``ObjectStore.erase_object`` and the relay's side of it)."""

    _truncating: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._truncating is not None:
            self._truncating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._truncating
        await super().close()

    async def erase_object(
        self,
        object_id: str,
        *,
        by: str,
        reason: EraseReason,
        at: float,
        copy_of: str | None,
        latest_seq: int | None = None,
    ) -> list[Erasure]:
        done = await self._write(
            lambda conn: _erase(
                conn, object_id, copy_of, by=by, reason=reason, at=at, latest_seq=latest_seq
            )
        )
        if done:
            self._outbox_added()
            await self._truncate_wal()
        return done

    async def _truncate_wal(self) -> None:
        """Truncate the WAL now, or (a reader holds it) every second until it is done."""
        if await self._on(self._write_thread, lambda: _truncate_wal(self._w())):
            return
        if self._truncating is None or self._truncating.done():
            log.warning(
                "erasure: the store's write-ahead log is held by a reader; erased bodies"
                " stay in it until it lets go (retried every second)"
            )
            self._truncating = asyncio.get_running_loop().create_task(self._truncate_later())
            self._truncating.add_done_callback(retrieve_failure)

    async def _truncate_later(self) -> None:
        while self._writer is not None:
            await asyncio.sleep(_TRUNCATE_RETRY_S)
            with contextlib.suppress(sqlite3.Error, Unavailable):
                if await self._on(self._write_thread, lambda: _truncate_wal(self._w())):
                    log.info("erasure: the store's write-ahead log is truncated")
                    return

    async def erasures_of(self, object_id: str, copy_of: str | None = None) -> list[Erasure]:
        def run(conn: sqlite3.Connection) -> list[Erasure]:
            query = f"SELECT {ERASURE_COLUMNS} FROM erasures WHERE object_id = ?"  # noqa: S608
            params: tuple[str, ...] = (object_id,)
            if copy_of is not None:
                query += " AND submitter = ?"
                params += (copy_of,)
            return [erasure_of_row(r) for r in conn.execute(query + " ORDER BY erasure_id", params)]

        return await self._read(run)

    async def erasure(self, erasure_id: int) -> Erasure | None:
        def run(conn: sqlite3.Connection) -> Erasure | None:
            row = conn.execute(
                f"SELECT {ERASURE_COLUMNS} FROM erasures WHERE erasure_id = ?",  # noqa: S608
                (erasure_id,),
            ).fetchone()
            return None if row is None else erasure_of_row(row)

        return await self._read(run)

    async def pending_erasures(self, limit: int) -> list[Erasure]:
        def run(conn: sqlite3.Connection) -> list[Erasure]:
            rows = conn.execute(
                f"SELECT {ERASURE_COLUMNS} FROM erasures WHERE published = 0"  # noqa: S608
                " ORDER BY erasure_id LIMIT ?",
                (max(limit, 0),),
            )
            return [erasure_of_row(r) for r in rows]

        return await self._read(run)

    async def mark_erasures_published(
        self, erasure_ids: Sequence[int], positions: Mapping[TopicPartition, int]
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE erasures SET published = 1 WHERE erasure_id = ?",
                [(int(i),) for i in erasure_ids],
            )
            conn.executemany(_RECORD_POSITION, [(t, p, o) for (t, p), o in positions.items()])

        await self._write(run)

    async def erased_copies(self, after_id: int) -> list[tuple[int, str, str, str]]:
        def run(conn: sqlite3.Connection) -> list[tuple[int, str, str, str]]:
            out: list[tuple[int, str, str, str]] = []
            for erasure_id, object_id, submitter, versions in conn.execute(
                "SELECT erasure_id, object_id, submitter, versions FROM erasures"
                " WHERE erasure_id > ? ORDER BY erasure_id",
                (after_id,),
            ):
                out.append((int(erasure_id), str(object_id), str(submitter), newest_key(versions)))
            return out

        return await self._read(run)
