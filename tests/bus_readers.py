"""What the live tail and the streams read, seen at the bus: every reader opened on
a bus, on which topic-partitions, and whether it is still open. Tests observe the
tail's choices (one shared reader, on-demand reads, private readers that close once
their stream follows the tail) here instead of through counters kept for them."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import pytest

from exchange.bus import Bus, BusReader, ReadRecord, TopicPartition


@dataclass(eq=False)
class Opened:
    """One reader, as the bus handed it out."""

    tps: frozenset[TopicPartition]
    reader: BusReader
    closed: bool = False

    async def read(
        self, max_records: int, timeout_s: float, max_bytes: int | None = None
    ) -> list[ReadRecord]:
        return await self.reader.read(max_records, timeout_s, max_bytes)

    async def close(self) -> None:
        self.closed = True
        await self.reader.close()

    def topics(self) -> set[str]:
        return {topic for topic, _ in self.tps}


@dataclass
class ReaderLog:
    """Records every reader ``bus`` opens from now on (the server's bus, too)."""

    opened: list[Opened] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def on(cls, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> ReaderLog:
        log = cls()
        original = bus.open_reader

        async def open_reader(
            start: Mapping[TopicPartition, int | None], *, prefetch_bytes: int | None = None
        ) -> Opened:
            reader = await original(start, prefetch_bytes=prefetch_bytes)
            opened = Opened(frozenset(start), reader)
            with log._lock:
                log.opened.append(opened)
            return opened

        monkeypatch.setattr(bus, "open_reader", open_reader)
        return log

    def snapshot(self) -> list[Opened]:
        with self._lock:
            return list(self.opened)

    def still_open(self) -> list[Opened]:
        return [r for r in self.snapshot() if not r.closed]

    def private(self, hot: Collection[str]) -> list[Opened]:
        """Readers a stream opened for itself: over shared (``hot``) and partner
        topics at once, which neither of the tail's readers ever is."""
        return [r for r in self.snapshot() if r.topics() & set(hot) and r.topics() - set(hot)]

    def cold(self, hot: Collection[str]) -> list[Opened]:
        """The tail's on-demand readers: only topics outside ``hot``."""
        return [r for r in self.snapshot() if not r.topics() & set(hot)]
