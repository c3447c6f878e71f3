"""One Subscribe stream's source of records: the process's shared live tail while
the stream's position is inside its window, a private bus reader otherwise. The
switch rule, and why switching neither repeats nor skips a record, are in the
docstring of exchange._tail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from exchange._tail import Entry, LiveTail
from exchange.bus import Bus, BusReader, TopicPartition

__all__ = ["Feed"]


class Feed:
    """One stream's records, from the tail or a private reader (exchange._tail).

    ``start`` is the stream's next offset per tp (-1: the earliest record held).
    ``max_bytes`` bounds what one read returns (the first record whatever its size)
    and what its private reader fetches ahead: all a stalled stream holds.
    One ``read()`` at a time.
    """

    def __init__(
        self,
        tail: LiveTail,
        bus: Bus,
        start: Mapping[TopicPartition, int],
        max_bytes: int | None = None,
    ) -> None:
        self._tail = tail
        self._bus = bus
        self._max_bytes = max_bytes
        self._next = dict(start)
        self._tps = sorted(start)
        self._turn = 0
        self._event = asyncio.Event()
        self._woken = False  # wake() was called since the last read
        self._reader: BusReader | None = None
        tail.watch(self._tps, self._event)

    @property
    def private(self) -> bool:
        """Reading with a private reader (catching up), not from the tail."""
        return self._reader is not None

    async def read(self, max_records: int, timeout_s: float) -> list[Entry]:
        """Up to ``max_records`` entries past the previous ones, waiting at most about
        ``timeout_s`` for the first; ``[]`` when none arrived."""
        if self._reader is not None and self._tail.covers(self._next):
            await self._close_reader()
        if self._reader is None:
            entries = await self._from_tail(max_records, timeout_s)
            if entries is not None:
                return entries
            self._reader = await self._bus.open_reader(
                {tp: (None if off < 0 else off) for tp, off in self._next.items()},
                prefetch_bytes=self._max_bytes,
            )
            self._tail.decoded.opened()
        records = await self._reader.read(max_records, timeout_s, self._max_bytes)
        # Decoded once for every stream reading this history at about the same time.
        return self._advance(self._tail.decoded.decode(records))

    def wake(self) -> None:
        """End a wait for records from the tail now (it returns what it has: maybe
        none); woken between two reads, the next one does not wait."""
        self._woken = True
        self._event.set()

    async def close(self) -> None:
        self._tail.unwatch(self._tps, self._event)
        await self._close_reader()

    async def _from_tail(self, max_records: int, timeout_s: float) -> list[Entry] | None:
        self._tail.check()
        # Clear before looking: records appended after the look set it again.
        self._event.clear()
        entries = self._take(max_records)
        if entries == [] and not self._woken:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._event.wait()
            self._tail.check()
            entries = self._take(max_records)
        self._woken = False
        return entries

    def _take(self, max_records: int) -> list[Entry] | None:
        # Moves self._next past what it returns.
        return self._tail.take(self._next, self._rotation(), max_records, self._max_bytes)

    def _rotation(self) -> list[TopicPartition]:
        # Start each take at the next tp, so one busy tp cannot starve the others.
        tps = self._tps
        self._turn += 1
        k = self._turn % len(tps) if tps else 0
        return tps[k:] + tps[:k]

    def _advance(self, entries: list[Entry]) -> list[Entry]:
        for tp, offset, _ in entries:
            self._next[tp] = offset + 1
        return entries

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            self._tail.decoded.closed()
            await reader.close()
