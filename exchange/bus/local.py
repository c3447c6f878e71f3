"""The embedded bus: a SQLite log in the data directory, for the no-dependency default.

One file (WAL mode) holds every topic. Each topic has one partition, ``0``, and
its offsets are dense: the n-th record published to a topic has offset ``n - 1``,
as in a Kafka partition, so "the next offset to read" means the same on both buses.

SQLite calls run on two single-thread executors, one per connection: the writer
(``publish``, ``ensure_topics``) and the reader side (all readers share it). WAL
lets the two run at the same time, so a large publish never stalls live readers,
and the event loop never waits on a disk write.

A tombstone (``BusRecord.tombstone``: an erasure) compacts at once: in the
transaction that appends it, every earlier record with its key on its topic is
deleted (offsets stay: readers skip the holes), and the tombstone stays (it holds
no content). The file runs with ``secure_delete`` (deleted bytes are zeroed, not left
in free pages), and a tombstone publish is followed by a WAL checkpoint that
truncates the WAL (the erased bytes are in its older frames until then); a
checkpoint that readers block is retried until it succeeds.

A publish wakes this process's readers of the touched topics at once. Records
written by another process on the same file (a CLI, a second server) are found
by each reader re-checking every ``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import msgspec

from exchange._tasks import retrieve_failure
from exchange.bus import BusRecord, Placed, ReadRecord, Refused, TopicPartition
from exchange.errors import InvalidArgument, NotFound, Unavailable

__all__ = ["LocalBus", "LocalReader"]

_T = TypeVar("_T")
_Headers = tuple[tuple[str, bytes], ...]

# The only partition of every local topic.
PARTITION = 0

# The characters and length Kafka accepts, so that a topic name that works on the
# embedded bus also works in production.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    next_offset INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
    topic_id   INTEGER NOT NULL REFERENCES topics(id),
    log_offset INTEGER NOT NULL,
    key        BLOB NOT NULL,
    value      BLOB NOT NULL,
    headers    BLOB,
    PRIMARY KEY (topic_id, log_offset)
);
-- For tombstones: the earlier records of a key are found without a scan of the topic.
CREATE INDEX IF NOT EXISTS records_by_key ON records(topic_id, key);
"""

# How often a checkpoint that readers blocked is tried again.
_CHECKPOINT_RETRY_S = 1.0

_headers_decoder = msgspec.msgpack.Decoder(tuple[tuple[str, bytes], ...])


def check_topic_name(topic: str) -> None:
    """Refuse a topic name Kafka would refuse (letters, digits, '.', '_', '-')."""
    if not _TOPIC_NAME.fullmatch(topic) or topic in {".", ".."}:
        raise InvalidArgument(
            f"invalid topic name {topic!r}: use 1-200 letters, digits, '.', '_' or '-'"
        )


def _encode_headers(headers: _Headers) -> bytes | None:
    return msgspec.msgpack.encode(headers) if headers else None


def _decode_headers(blob: bytes | None) -> _Headers:
    return _headers_decoder.decode(blob) if blob else ()


def _connect(path: Path) -> sqlite3.Connection:
    # check_same_thread=False: each connection is only ever used by its own
    # single-thread executor, but it is created and closed from the event loop thread.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a publish is acknowledged to the relay, which then forgets the outbox
    # row, so a committed batch must survive a power cut, not only a crash.
    conn.execute("PRAGMA synchronous=FULL")
    # Another process may hold the write lock for a moment (a CLI on the same file).
    conn.execute("PRAGMA busy_timeout=5000")
    # Erasure: deleted records are overwritten with zeros, not left in free pages.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the file and truncate it (the erased bytes live in its older
    frames until then); False when a reader kept it from completing. Never waits for
    a reader: the writer (every publish) would wait behind it (then: retried later)."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError:  # locked by another process's writer
        return False
    finally:
        conn.execute("PRAGMA busy_timeout=5000")
    return not busy


class LocalBus:
    """The embedded bus over the SQLite file at ``path`` (e.g. ``<data_dir>/bus.sqlite3``)."""

    def __init__(self, path: Path, *, poll_interval_s: float = 0.25) -> None:
        self._path = path
        self._poll_interval_s = poll_interval_s
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="localbus-write")
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="localbus-read")
        # topic -> events of the readers waiting on it; set after each commit.
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._readers: set[LocalReader] = set()
        self._closed = False
        # A checkpoint after tombstones, until it succeeds (readers may block it).
        self._checkpointing: asyncio.Task[None] | None = None

    @property
    def poll_interval_s(self) -> float:
        return self._poll_interval_s

    async def start(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await self._on(self._write_pool, _connect, self._path)
            await self._on(self._write_pool, self._writer.executescript, _SCHEMA)
            self._reader = await self._on(self._read_pool, _connect, self._path)
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise Unavailable(f"cannot open the local bus at {self._path}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpointing is not None:
            self._checkpointing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._checkpointing
        for reader in list(self._readers):
            await reader.close()
        for conn, pool in ((self._writer, self._write_pool), (self._reader, self._read_pool)):
            if conn is not None:
                await self._on(pool, conn.close)
            pool.shutdown(wait=True)
        self._writer = self._reader = None

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        names = sorted(set(topics))
        for name in names:
            check_topic_name(name)
        if names:
            await self._write(self._insert_topics, names)

    async def partitions(self, topic: str) -> list[int]:
        await self._topic_ids([topic])
        return [PARTITION]

    async def publish(self, records: Sequence[BusRecord]) -> list[Placed | Refused]:
        if not records:
            return []
        offsets = await self._write(self._insert_records, records)
        self._wake({r.topic for r in records})
        if any(r.tombstone for r in records):
            await self.checkpoint()
        return [((r.topic, PARTITION), off) for r, off in zip(records, offsets, strict=True)]

    async def checkpoint(self) -> bool:
        """Checkpoint and truncate the WAL now (after tombstones: the erased bytes are
        in it); when readers block it, retried in the background until it succeeds.
        True if it completed now."""
        conn = self._writer
        if conn is None:
            return False
        try:
            done = await self._on(self._write_pool, _checkpoint, conn)
        except sqlite3.Error:
            done = False
        if not done and (self._checkpointing is None or self._checkpointing.done()):
            self._checkpointing = asyncio.get_running_loop().create_task(self._retry_checkpoint())
            self._checkpointing.add_done_callback(retrieve_failure)
        return done

    async def _retry_checkpoint(self) -> None:
        while not self._closed:
            await asyncio.sleep(_CHECKPOINT_RETRY_S)
            conn = self._writer
            if conn is None:
                return
            try:
                if await self._on(self._write_pool, _checkpoint, conn):
                    return
            except sqlite3.Error:
                continue

    async def ping(self) -> None:
        """One read on the file: Unavailable if the bus is closed or the file unreadable."""
        await self._read(_count_topics)

    async def open_reader(
        self, start: Mapping[TopicPartition, int | None], *, prefetch_bytes: int | None = None
    ) -> LocalReader:
        # prefetch_bytes: nothing to bound here; a LocalReader fetches only in read().
        if not start:
            raise InvalidArgument("a bus reader needs at least one topic-partition")
        for topic, partition in start:
            if partition != PARTITION:
                raise NotFound(f"topic {topic!r} has no partition {partition} (only 0)")
        ids = await self._topic_ids([topic for topic, _ in start])
        # None: the earliest record held; offset 0 (tombstones leave holes, skipped).
        positions = {topic: (0 if off is None else off) for (topic, _), off in start.items()}
        reader = LocalReader(self, ids, positions)
        self._readers.add(reader)
        return reader

    # -- used by LocalReader -------------------------------------------------------

    def _register(self, topics: Iterable[str], event: asyncio.Event) -> None:
        for topic in topics:
            self._waiters.setdefault(topic, set()).add(event)

    def _unregister(self, reader: LocalReader, topics: Iterable[str], event: asyncio.Event) -> None:
        self._readers.discard(reader)
        for topic in topics:
            waiting = self._waiters.get(topic)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[topic]

    async def _fetch(
        self, positions: Sequence[tuple[int, str, int]], max_records: int, max_bytes: int | None
    ) -> list[ReadRecord]:
        return await self._read(_select_records, positions, max_records, max_bytes)

    # -- internals -------------------------------------------------------------------

    def _wake(self, topics: Iterable[str]) -> None:
        for topic in topics:
            for event in self._waiters.get(topic, ()):
                event.set()

    async def _topic_ids(self, topics: Iterable[str]) -> dict[str, int]:
        names = sorted(set(topics))
        rows = await self._read(_select_topic_ids, names)
        missing = [n for n in names if n not in rows]
        if missing:
            raise NotFound(f"unknown topic(s) {', '.join(missing)}: call ensure_topics first")
        return rows

    async def _read(self, fn: Callable[..., _T], *args: object) -> _T:
        conn = self._reader
        if conn is None:
            raise Unavailable("the local bus is closed")
        try:
            return await self._on(self._read_pool, fn, conn, *args)
        except sqlite3.Error as exc:
            raise Unavailable(f"local bus read failed ({self._path}): {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection, _T], list[int]], arg: _T) -> list[int]:
        conn = self._writer
        if conn is None:
            raise Unavailable("the local bus is closed")
        try:
            return await self._on(self._write_pool, _in_transaction, conn, fn, arg)
        except sqlite3.Error as exc:
            raise Unavailable(f"local bus write failed ({self._path}): {exc}") from exc

    @staticmethod
    def _insert_topics(conn: sqlite3.Connection, names: list[str]) -> list[int]:
        conn.executemany("INSERT OR IGNORE INTO topics(name) VALUES (?)", [(n,) for n in names])
        return []

    @staticmethod
    def _insert_records(conn: sqlite3.Connection, records: Sequence[BusRecord]) -> list[int]:
        topics: dict[str, tuple[int, int]] = {}  # name -> (id, next offset)
        for name in sorted({r.topic for r in records}):
            row = conn.execute(
                "SELECT id, next_offset FROM topics WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"unknown topic {name}: call ensure_topics first")
            topics[name] = (row[0], row[1])
        next_offset = {name: nxt for name, (_, nxt) in topics.items()}
        offsets: list[int] = []
        rows: list[tuple[int, int, bytes, bytes, bytes | None]] = []
        insert = "INSERT INTO records(topic_id, log_offset, key, value, headers) VALUES (?,?,?,?,?)"
        for r in records:
            off = next_offset[r.topic]
            next_offset[r.topic] = off + 1
            offsets.append(off)
            row = (topics[r.topic][0], off, r.key, b"" if r.tombstone else r.value)
            rows.append((*row, _encode_headers(r.headers)))
            if r.tombstone:
                # Compacted at once: the records before it, then it (in order, so that
                # a record of the key earlier in this batch goes too).
                conn.executemany(insert, rows)
                rows.clear()
                conn.execute(
                    "DELETE FROM records WHERE topic_id = ? AND key = ? AND log_offset < ?",
                    (row[0], r.key, off),
                )
        conn.executemany(insert, rows)
        conn.executemany(
            "UPDATE topics SET next_offset = ? WHERE id = ?",
            [(nxt, topics[name][0]) for name, nxt in next_offset.items()],
        )
        return offsets

    @staticmethod
    async def _on(pool: ThreadPoolExecutor, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def _in_transaction(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection, _T], list[int]], arg: _T
) -> list[int]:
    # IMMEDIATE takes the write lock up front, so reading next_offset and writing
    # the records cannot interleave with another process's publish.
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, arg)
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT too (a full disk): else every later BEGIN fails. After some
        # errors (SQLITE_FULL) SQLite has rolled back already, and a ROLLBACK would
        # fail and hide the error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _count_topics(conn: sqlite3.Connection) -> int:
    (count,) = conn.execute("SELECT count(*) FROM topics").fetchone()
    return int(count)


def _select_topic_ids(conn: sqlite3.Connection, names: list[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for name in names:
        row = conn.execute("SELECT id FROM topics WHERE name = ?", (name,)).fetchone()
        if row is not None:
            ids[name] = row[0]
    return ids


def _select_records(
    conn: sqlite3.Connection,
    positions: Sequence[tuple[int, str, int]],
    max_records: int,
    max_bytes: int | None = None,
) -> list[ReadRecord]:
    """Up to ``max_records`` records (and ``max_bytes``, the first one whatever its
    size), the topics in the order given. Rows are taken one at a time, so a byte
    bound also bounds what this read holds in memory.

    A catch-up reads every row ever published through here, so the work per row is
    kept to building the record: SQLite computes the row's weight, counting the
    headers as stored (their msgpack blob, a few bytes per header more than
    ``record_bytes`` counts: a read never weighs more than its bound)."""
    out: list[ReadRecord] = []
    append, _headers = out.append, _decode_headers
    budget = max_bytes
    # One read transaction: every topic is read from the same snapshot.
    conn.execute("BEGIN")
    try:
        for topic_id, topic, offset in positions:
            if len(out) >= max_records or (budget is not None and budget <= 0):
                break
            rows = conn.execute(
                "SELECT log_offset, key, value, headers,"
                " length(key) + length(value) + coalesce(length(headers), 0)"
                " FROM records WHERE topic_id = ? AND log_offset >= ? ORDER BY log_offset LIMIT ?",
                (topic_id, offset, max_records - len(out)),
            )
            try:
                if budget is None:
                    for off, key, value, headers, _ in rows:
                        append(ReadRecord(topic, PARTITION, off, key, value, _headers(headers)))
                    continue
                for off, key, value, headers, size in rows:
                    if out and size > budget:
                        budget = 0
                        break
                    budget -= size
                    append(ReadRecord(topic, PARTITION, off, key, value, _headers(headers)))
            finally:
                rows.close()
    finally:
        conn.execute("COMMIT")
    return out


class LocalReader:
    """Reads topics of a LocalBus from given offsets. One ``read()`` at a time."""

    def __init__(self, bus: LocalBus, ids: dict[str, int], positions: dict[str, int]) -> None:
        self._bus = bus
        self._ids = ids  # topic -> topic id
        self._next = positions  # topic -> next offset to return
        self._event = asyncio.Event()
        self._turn = 0
        self._closed = False
        # The next read, started as a full one returns: a reader catching up has its
        # next rows read from SQLite (C, off the event loop) while the caller handles
        # these. It holds one more read's worth of records (the same bounds).
        self._ahead: asyncio.Task[list[ReadRecord]] | None = None
        self._ahead_bounds: tuple[int, int | None] = (0, None)
        bus._register(self._next, self._event)

    async def read(
        self, max_records: int, timeout_s: float, max_bytes: int | None = None
    ) -> list[ReadRecord]:
        if max_records <= 0 or (max_bytes is not None and max_bytes <= 0):
            raise ValueError("max_records and max_bytes must be positive")
        if self._closed:
            raise Unavailable("this bus reader is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        ahead, self._ahead = self._ahead, None
        while True:
            if ahead is not None and self._ahead_bounds == (max_records, max_bytes):
                records = await ahead
            else:
                if ahead is not None:
                    ahead.cancel()
                # Clear before querying: a publish that commits after the query has
                # started sets the event again, so no wake-up is lost.
                self._event.clear()
                records = await self._bus._fetch(self._rotation(), max_records, max_bytes)
            ahead = None
            if records:
                for r in records:
                    self._next[r.topic] = r.offset + 1
                if len(records) > 1 or len(records) >= max_records:  # a backlog, likely
                    self._read_ahead(max_records, max_bytes)
                return records
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed:
                return []
            # The interval bounds the wait so that records written by another
            # process, which cannot set our event, are still found.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, self._bus.poll_interval_s)):
                    await self._event.wait()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._ahead is not None:
                self._ahead.cancel()
                self._ahead = None
            self._bus._unregister(self, self._next, self._event)
            self._event.set()

    def _read_ahead(self, max_records: int, max_bytes: int | None) -> None:
        """Start the read that follows (from the positions just returned)."""
        # Cleared before the query, as in read(): a publish after it sets it again.
        self._event.clear()
        ahead = asyncio.get_running_loop().create_task(
            self._bus._fetch(self._rotation(), max_records, max_bytes)
        )
        # A failure is raised by the read that awaits it; one never awaited (the
        # reader closed, or read with other bounds) is dropped without a complaint.
        ahead.add_done_callback(retrieve_failure)
        self._ahead, self._ahead_bounds = ahead, (max_records, max_bytes)

    def _rotation(self) -> list[tuple[int, str, int]]:
        # Start each read at the next topic, so one busy topic cannot starve the others.
        items = [(self._ids[topic], topic, off) for topic, off in self._next.items()]
        self._turn = (self._turn + 1) % len(items) if items else 0
        return items[self._turn :] + items[: self._turn]
