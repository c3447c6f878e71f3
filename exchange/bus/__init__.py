"""The bus: where the relay publishes accepted objects and subscriptions read them.

Two implementations behind one protocol: ``kafka.KafkaBus`` (aiokafka, for
production and the integration tests against Tansu) and ``local.LocalBus``
(embedded, a log file in the data directory, for the no-dependency default).
Topics, keys, headers and offsets mean the same on both, so the relay and the
subscription service never know which one they talk to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Bus",
    "BusReader",
    "BusRecord",
    "Placed",
    "ReadRecord",
    "Refused",
    "TopicPartition",
    "record_bytes",
]

TopicPartition = tuple[str, int]
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class BusRecord:
    """A record to publish. Records with the same key keep their order.

    ``tombstone``: an erasure (value empty). Kafka gets a null value (a real tombstone:
    compaction deletes every earlier record with its key, then, after
    ``delete.retention.ms``, the tombstone itself); the embedded bus deletes the earlier
    records with its key at once. Read back, its value is ``b""``."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers = ()
    tombstone: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """The bus will never take this record (larger than the broker accepts): the relay
    sets its row aside instead of retrying it in front of everyone else's."""

    reason: str


# Where a published record landed: its topic-partition and offset.
Placed = tuple[TopicPartition, int]


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """A record as read back, with its place in the log."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: Headers = ()


def record_bytes(record: BusRecord | ReadRecord) -> int:
    """What a record weighs for the byte bounds of readers, batches and the live tail:
    its key, value and headers."""
    return len(record.key) + len(record.value) + sum(len(k) + len(v) for k, v in record.headers)


class BusReader(Protocol):
    async def read(
        self, max_records: int, timeout_s: float, max_bytes: int | None = None
    ) -> list[ReadRecord]:
        """Up to ``max_records`` records past the current positions, waiting at most
        ``timeout_s`` for the first one; ``[]`` when none arrived. With ``max_bytes``,
        the records returned weigh at most that much in all (``record_bytes``), except
        that the first one is returned whatever its size (so that a large record cannot
        stop a reader). Order is kept within each topic-partition, and a record is never
        returned twice by one reader."""
        ...

    async def close(self) -> None: ...


class Bus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics that do not exist yet; existing ones are left alone."""
        ...

    async def partitions(self, topic: str) -> list[int]:
        """The partition numbers of an existing topic."""
        ...

    async def publish(self, records: Sequence[BusRecord]) -> list[Placed | Refused]:
        """Publish all records and wait until every one is acknowledged by the bus
        (acks=all on Kafka). Returns, for each record in order, where it landed, or
        ``Refused`` for a record the bus will never take (too large). Raises
        Unavailable when the bus failed otherwise (the caller retries them all)."""
        ...

    async def open_reader(
        self, start: Mapping[TopicPartition, int | None], *, prefetch_bytes: int | None = None
    ) -> BusReader:
        """A reader over exactly these topic-partitions, each starting at the given
        offset (the next record to read), or at the earliest record held for ``None``.
        ``prefetch_bytes``: about the most the reader may hold fetched ahead of
        ``read()`` (None: the bus's default), so that a reader that is not read from
        (a stalled subscriber's) holds little; a larger record is still fetched."""
        ...

    async def ping(self) -> None:
        """Return when the bus answers a cheap request (health checks); raise
        Unavailable if it does not, within a few seconds at most."""
        ...
