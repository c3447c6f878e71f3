"""The store's pool, the connection that holds leases, its lifecycle, health and room,
and how statements run (time limits, errors without passwords)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import asyncpg

from exchange.config import mask_url
from exchange.errors import AlreadyExists, InvalidArgument, StoreFull, Unavailable
from exchange.store._common import OutboxListeners, unstorable_text
from exchange.store._room import Room

if TYPE_CHECKING:
    from exchange.metrics import Metrics

from exchange.store.postgres._schema import _migrate
from exchange.store.postgres._sql import (
    _KEEPALIVES,
    _OUTBOX_CHANNEL,
    _lost,
    _out_of_space,
    _scrub,
    _secrets,
    _unreachable,
    _unstorable,
)

T = TypeVar("T")


log = logging.getLogger("exchange.store.postgres")

# While the store is full, ping inserts this many random (incompressible) bytes into
# a freshly truncated probe table and rolls back: PostgreSQL must find room on disk
# for them, as it must for a submission.
PROBE_BYTES = 1024 * 1024

# Leases are session advisory locks in the two-int space: (_LEASE_CLASS, key of the
# job). _LEASE_CLASS ("xlse" in ASCII) sets them apart from other applications' locks;
# the key is the first 4 bytes of SHA-256 of the job name, as a signed int, so that
# every process (and every release) derives the same lock from the same job.
_LEASE_CLASS = int.from_bytes(b"xlse", "big")


def lease_key(job: str) -> int:
    """The advisory lock key (with ``_LEASE_CLASS``) of the lease on ``job``."""
    return int.from_bytes(hashlib.sha256(job.encode()).digest()[:4], "big", signed=True)


class _Connections(OutboxListeners):
    """The pool, leases and lifecycle: what every concern of the store runs on."""

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
        super().__init__()
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
        except Exception as exc:  # noqa: BLE001 - _raise maps it (Unavailable, StoreFull) and raises
            self._raise(exc)
        try:
            async with pool.acquire(timeout=self._timeout_s) as conn:
                await self._migrate_on(conn)
        except BaseException as exc:  # noqa: BLE001 - the pool goes, then _raise maps and raises
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
        except Exception as exc:  # noqa: BLE001 - _raise maps it (Unavailable, StoreFull) and raises
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
            except Exception:  # noqa: BLE001 - closing: nothing left to tell the caller
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
        except Exception as exc:  # noqa: BLE001 - _raise maps it (Unavailable, StoreFull) and raises
            self._raise(exc)

    async def _close_connection(self, conn: Any) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn.close()
        except Exception:  # noqa: BLE001 - a lost connection: nothing to close cleanly
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
            except Exception as exc:  # noqa: BLE001 - _raise maps it (Unavailable, StoreFull) and raises
                self._raise(exc)
            if held:
                self._leases.add(job)
                if job == "relay":
                    # Commits of every process NOTIFY; the relay hears them while it
                    # holds the lease (on the lease's connection: lost with it).
                    await self._lease_conn.add_listener(_OUTBOX_CHANNEL, self._outbox_added)
            return bool(held)

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
            except Exception as exc:  # noqa: BLE001 - retried once if lost, else mapped and raised
                if acquired and not committing and not retried_lost and _lost(exc):
                    retried_lost = True
                    continue
                if _unstorable(exc):
                    # The database's words name a byte, not where it was: say where.
                    raise InvalidArgument(
                        unstorable_text(what() or "a text given to this call")
                    ) from None
                self._raise(exc)
