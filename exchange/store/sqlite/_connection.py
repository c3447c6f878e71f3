"""The store's two connections and their threads, its lifecycle, health and room."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from exchange.errors import StoreFull, Unavailable
from exchange.store._common import OutboxListeners
from exchange.store._room import Room

if TYPE_CHECKING:
    from exchange.metrics import Metrics


from exchange.store.sqlite._schema import migrate
from exchange.store.sqlite._sql import (
    PROBE_BYTES,
    RESUME_FREE_BYTES,
    _connect,
    _free_bytes,
    _out_of_space,
    _transaction,
    _tune_writer,
)

T = TypeVar("T")


class _Connections(OutboxListeners):
    """Connections, threads and lifecycle: what every concern of the store runs on."""

    def __init__(
        self,
        path: Path,
        *,
        metrics: Metrics | None = None,
        resume_free_bytes: int = RESUME_FREE_BYTES,
    ) -> None:
        super().__init__()
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
            _tune_writer(writer)
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
            mapped = self._mapped(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def _mapped(self, exc: BaseException) -> BaseException:
        """What a write's caller gets for ``exc``: StoreFull (and the store marked
        full) if the disk has no room, else ``exc``."""
        if isinstance(exc, sqlite3.Error | OSError) and _out_of_space(exc, self.path.parent):
            full = self._room.refused(exc)
            full.__cause__ = exc
            return full
        return exc

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
