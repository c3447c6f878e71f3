"""Subscribe: from a start position through history into the live tail.

A subscription reads the partner's topics (policy.subscription_topics) from
the bus with one reader of its own (manual assignment, no consumer group), re-
checks the policy for every record, filters by type and label, and hands out
batches. Each delivery carries a cursor: the read position of every topic-
partition right after that delivery, plus the highest exchange sequence seen
there (to drop a relay's at-least-once repeats). Resuming from it repeats
nothing and skips nothing. Reading waits for the previous batch to be taken,
so a slow subscriber holds at most one batch in memory.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import orjson

from exchange import policy
from exchange.bus import Bus, TopicPartition
from exchange.envelope import from_record
from exchange.errors import InvalidArgument, ResourceExhausted
from exchange.model import Partner, StoredObject
from exchange.store import Store

__all__ = ["Batch", "Cursor", "Delivery", "SubscriptionRequest", "Subscriptions"]

log = logging.getLogger(__name__)

_CURSOR_VERSION = 1


@dataclass(frozen=True, slots=True)
class Cursor:
    """Read position per topic-partition (next offset, highest sequence seen)."""

    positions: Mapping[TopicPartition, tuple[int, int]]

    def encode(self) -> str:
        payload = [[t, p, off, seq] for (t, p), (off, seq) in sorted(self.positions.items())]
        raw = orjson.dumps({"v": _CURSOR_VERSION, "p": payload})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        bad = InvalidArgument(
            "cursor is not one this exchange issued; pass the cursor of the last delivery"
            " you handled, or start from_beginning / from now"
        )
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            doc = orjson.loads(raw)
        except (ValueError, binascii.Error, orjson.JSONDecodeError):
            raise bad from None
        if not isinstance(doc, dict) or doc.get("v") != _CURSOR_VERSION:
            raise bad
        positions: dict[TopicPartition, tuple[int, int]] = {}
        entries = doc.get("p")
        if not isinstance(entries, list):
            raise bad
        for entry in entries:
            if (
                not isinstance(entry, list)
                or len(entry) != 4
                or not isinstance(entry[0], str)
                or not all(isinstance(x, int) and x >= -1 for x in entry[1:])
            ):
                raise bad
            positions[(entry[0], entry[1])] = (entry[2], entry[3])
        return cls(positions)


@dataclass(frozen=True, slots=True)
class SubscriptionRequest:
    types: frozenset[str] = frozenset()
    labels: frozenset[str] = frozenset()
    cursor: str | None = None
    from_beginning: bool = False
    max_batch: int = 500


@dataclass(frozen=True, slots=True)
class Delivery:
    stored: StoredObject
    cursor: str


@dataclass(frozen=True, slots=True)
class Batch:
    deliveries: list[Delivery]
    # Position after everything this batch covers, filtered records included.
    cursor: str


@dataclass
class _Position:
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    seqs: dict[TopicPartition, int] = field(default_factory=dict)

    def cursor(self) -> str:
        return Cursor(
            {tp: (off, self.seqs.get(tp, -1)) for tp, off in self.offsets.items()}
        ).encode()


class Subscriptions:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        *,
        max_open: int = 1000,
        max_batch: int = 500,
        idle_wait_s: float = 1.0,
    ) -> None:
        self._store = store
        self._bus = bus
        self._max_open = max_open
        self._max_batch = max_batch
        self._idle_wait_s = idle_wait_s
        self.open_count = 0
        # Deliveries handed to streams so far (the gRPC layer awaits each write).
        self.delivered = 0

    async def stream(self, partner: Partner, request: SubscriptionRequest) -> AsyncIterator[Batch]:
        """Batches for ``partner`` until the caller stops iterating."""
        if self.open_count >= self._max_open:
            raise ResourceExhausted(
                f"the exchange serves at most {self._max_open} open subscriptions; retry later"
            )
        self.open_count += 1
        try:
            async for batch in self._stream(partner, request):
                yield batch
        finally:
            self.open_count -= 1

    async def _stream(self, partner: Partner, request: SubscriptionRequest) -> AsyncIterator[Batch]:
        names = policy.subscription_topics(partner)
        await self._bus.ensure_topics(names)
        position = await self._start(names, request)
        reader = await self._bus.open_reader(
            {tp: (None if off < 0 else off) for tp, off in position.offsets.items()}
        )
        max_batch = min(request.max_batch or self._max_batch, self._max_batch)
        try:
            # Tell the subscriber where it starts: from here on nothing is missed.
            yield Batch([], position.cursor())
            while True:
                records = await reader.read(max_batch, self._idle_wait_s)
                if not records:
                    continue
                deliveries: list[Delivery] = []
                for record in records:
                    tp = (record.topic, record.partition)
                    position.offsets[tp] = record.offset + 1
                    try:
                        stored = from_record(record)
                    except (KeyError, ValueError):
                        log.warning("skipping a record not written by the exchange at %s", tp)
                        continue
                    # A relay repeat after a crash: already delivered (or filtered) once.
                    if stored.seq <= position.seqs.get(tp, -1):
                        continue
                    position.seqs[tp] = stored.seq
                    if _wanted(partner, stored, request):
                        deliveries.append(Delivery(stored, position.cursor()))
                self.delivered += len(deliveries)
                yield Batch(deliveries, position.cursor())
        finally:
            await reader.close()

    async def _start(self, names: list[str], request: SubscriptionRequest) -> _Position:
        """Offsets to start at; -1 means the earliest record held."""
        position = _Position()
        partitions = [(t, p) for t in names for p in await self._bus.partitions(t)]
        if request.cursor is not None:
            given = Cursor.decode(request.cursor).positions
            for tp in partitions:
                off, seq = given.get(tp, (-1, -1))
                position.offsets[tp] = off
                position.seqs[tp] = seq
        elif request.from_beginning:
            position.offsets = dict.fromkeys(partitions, -1)
        else:
            # "Now" is what the relay recorded, never the broker's idea of the end.
            recorded = await self._store.relay_positions(names)
            position.offsets = {tp: recorded.get(tp, -1) for tp in partitions}
        return position


def _wanted(partner: Partner, stored: StoredObject, request: SubscriptionRequest) -> bool:
    obj = stored.obj
    if not policy.may_receive(partner, tlp=obj.tlp, submitter=stored.submitter):
        return False
    if request.types and obj.object_type not in request.types:
        return False
    return not request.labels or not request.labels.isdisjoint(obj.labels)
