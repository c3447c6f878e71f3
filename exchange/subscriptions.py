"""Subscribe: from a start position through history into the live tail.

A subscription reads the partner's topics (policy.subscription_topics): from the
process's shared live tail (exchange._tail: one bus reader for every stream, each
record decoded once) while its position is inside the tail's window, and with a
bus reader of its own (manual assignment, no consumer group) while it catches up
from history or after it fell behind the window. It re-checks the policy for every
record, filters by type and label, and hands out batches. Each delivery carries a
cursor: the read position of every topic-partition right after that delivery, plus
the highest exchange sequence seen there (to drop a relay's at-least-once repeats).
Resuming from it repeats nothing and skips nothing. Reading waits for the previous
batch to be taken, so a slow subscriber holds at most one batch in memory (and the
tail never waits for it: the subscriber falls out of its window instead).

A record on several of the partner's topics (a community and a named recipient) is
delivered from one of them (policy.delivers_from). Between reads the stream asks its
``Access`` for the partner as the registry says now: a revoked credential or a
disabled partner ends the stream, and when the partner's topics change (it joined or
left a community) the stream ends with Unavailable, so that the client resumes from
its last cursor with the new set of topics.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

import orjson

from exchange import policy
from exchange._tail import Feed, LiveTail
from exchange.audit.entries import Action, Event, delivered
from exchange.audit.recorder import AuditRecorder
from exchange.auth import Access, require
from exchange.bus import Bus, TopicPartition
from exchange.errors import ExchangeError, InvalidArgument, ResourceExhausted, Unavailable
from exchange.metrics import Metrics
from exchange.model import Partner, Role, StoredObject
from exchange.store import Store

__all__ = ["Batch", "Cursor", "Delivery", "SubscriptionRequest", "Subscriptions"]

_CURSOR_VERSION = 1
_SHUTTING_DOWN = "the exchange is shutting down; resume from your last cursor"
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).decode()


def _aligned(raw: bytes) -> bytes:
    """Pad JSON with spaces to a multiple of 3 bytes: the base64 of a concatenation of
    such pieces is then the concatenation of their base64 texts."""
    return raw + b" " * (-len(raw) % 3)


_HEAD = _b64(_aligned(b'{"v":%d,"p":[' % _CURSOR_VERSION))
_TAIL = _b64(b"]}").rstrip("=")


class _CursorText:
    """The cursor text of a fixed set of topic-partitions, re-encoding only the one
    that moved: it runs once per delivery of every stream."""

    __slots__ = ("_index", "_parts", "_prefixes")

    def __init__(self, tps: Iterable[TopicPartition]) -> None:
        order = sorted(tps)
        self._index = {tp: i + 1 for i, tp in enumerate(order)}
        # '["green",1,' (after a comma for all but the first): the offset and seq follow.
        self._prefixes = {
            tp: (b"," if i else b"") + orjson.dumps(list(tp))[:-1] + b","
            for i, tp in enumerate(order)
        }
        self._parts = [_HEAD, *([""] * len(order)), _TAIL]

    def set(self, tp: TopicPartition, offset: int, seq: int) -> None:
        piece = b"%b%d,%d]" % (self._prefixes[tp], offset, seq)
        self._parts[self._index[tp]] = _b64(_aligned(piece))

    def text(self) -> str:
        return "".join(self._parts)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Read position per topic-partition (next offset, highest sequence seen).

    Encoded as URL-safe base64 (unpadded) of ``{"v":1,"p":[[topic,partition,offset,seq],
    ...]}``, entries sorted, each padded with spaces (see ``_aligned``)."""

    positions: Mapping[TopicPartition, tuple[int, int]]

    def encode(self) -> str:
        text = _CursorText(self.positions)
        for tp, (off, seq) in self.positions.items():
            text.set(tp, off, seq)
        return text.text()

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


class _Position:
    """Where a stream is: next offset and highest sequence seen per topic-partition."""

    __slots__ = ("_text", "moved", "offsets", "seqs")

    def __init__(self, offsets: dict[TopicPartition, int], seqs: dict[TopicPartition, int]) -> None:
        self.offsets = offsets
        self.seqs = seqs
        self._text = _CursorText(offsets)
        # Topic-partitions whose offset or seq changed since the last cursor.
        self.moved = set(offsets)

    def cursor(self) -> str:
        if self.moved:
            for tp in self.moved:
                self._text.set(tp, self.offsets[tp], self.seqs.get(tp, -1))
            self.moved.clear()
        return self._text.text()


class Subscriptions:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        *,
        max_open: int = 1000,
        max_batch: int = 500,
        idle_wait_s: float = 1.0,
        heartbeat_s: float = 5.0,
        tail_window: int = 50_000,
        recorder: AuditRecorder | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._recorder = recorder
        self._metrics = metrics or Metrics(process=False)
        self._bus = bus
        self._max_open = max_open
        self._max_batch = max_batch
        self._idle_wait_s = idle_wait_s
        self._heartbeat_s = heartbeat_s
        self.tail = LiveTail(store, bus, window=tail_window, hot_topics=policy.SHARED_TOPICS)
        self.open_count = 0
        # Deliveries handed to streams so far (the gRPC layer awaits each write).
        self.delivered = 0
        self._shutting_down = False

    def begin_shutdown(self) -> None:
        """Open streams end with Unavailable at their next read (within ``idle_wait_s``),
        so that their clients resume from their last cursor elsewhere; new ones are refused."""
        self._shutting_down = True

    async def close(self) -> None:
        """Stop the live tail; streams still open end with Unavailable."""
        self._shutting_down = True
        await self.tail.close()

    async def stream(self, access: Access, request: SubscriptionRequest) -> AsyncIterator[Batch]:
        """Batches for the caller of ``access`` until it stops iterating. The audit
        log records the start, every delivery and the end."""
        if self._shutting_down:
            raise Unavailable(_SHUTTING_DOWN)
        if self.open_count >= self._max_open:
            raise ResourceExhausted(
                f"the exchange serves at most {self._max_open} open subscriptions; retry later"
            )
        self.open_count += 1
        self._metrics.subscriptions_open.inc()
        me = access.partner.partner_id
        self._record(Event(Action.SUBSCRIBE_START, me, time.time(), detail=_described(request)))
        count, ending = 0, "closed by the subscriber"
        try:
            async for batch in self._stream(access, request):
                if batch.deliveries:
                    count += len(batch.deliveries)
                    now = time.time()
                    self._record(
                        *(delivered(me, d.stored, d.cursor, now) for d in batch.deliveries)
                    )
                    self._metrics.delivered((d.stored for d in batch.deliveries), now)
                yield batch
        except ExchangeError as exc:
            ending = exc.message
            raise
        finally:
            self.open_count -= 1
            self._metrics.subscriptions_open.dec()
            self._record(
                Event(
                    Action.SUBSCRIBE_END,
                    me,
                    time.time(),
                    detail={"deliveries": count, "reason": ending},
                )
            )

    def _record(self, *events: Event) -> None:
        if self._recorder is not None:
            self._recorder.note(events)

    async def _stream(self, access: Access, request: SubscriptionRequest) -> AsyncIterator[Batch]:
        # A foreign cursor is refused before anything is set up for the stream.
        given = None if request.cursor is None else Cursor.decode(request.cursor).positions
        partner = access.partner
        names = policy.subscription_topics(partner)
        await self._bus.ensure_topics(names)
        partitions = [(t, p) for t in names for p in await self._bus.partitions(t)]
        # Before "now" is read, so that a topic-partition new to the tail starts there
        # no later than this stream does (and the stream can follow the tail at once).
        await self.tail.ensure(partitions)
        position = await self._start(names, partitions, request, given)
        feed = Feed(self.tail, self._bus, position.offsets)
        max_batch = min(request.max_batch or self._max_batch, self._max_batch)
        wanted = _wanted(partner, frozenset(names), request)
        try:
            # Tell the subscriber where it starts: from here on nothing is missed.
            yield Batch([], position.cursor())
            sent_at = time.monotonic()
            while True:
                entries = await feed.read(max_batch, self._idle_wait_s)
                if self._shutting_down:
                    raise Unavailable(_SHUTTING_DOWN)
                now = await access.current()
                if now != partner:
                    require(now, Role.SUBSCRIBE, "subscribe")
                    if policy.subscription_topics(now) != names:
                        raise Unavailable(
                            "your communities changed, and with them the topics of this"
                            " subscription; resume from your last cursor"
                        )
                    partner = now
                    wanted = _wanted(partner, frozenset(names), request)
                if not entries:
                    # An idle stream still writes now and then: a write is how the
                    # server learns that the subscriber went away (a cancellation it
                    # was told about can be lost on the way), and it keeps proxies
                    # from closing a quiet connection.
                    if time.monotonic() - sent_at >= self._heartbeat_s:
                        sent_at = time.monotonic()
                        yield Batch([], position.cursor())
                    continue
                sent_at = time.monotonic()
                deliveries: list[Delivery] = []
                offsets, seqs, moved = position.offsets, position.seqs, position.moved
                for tp, offset, stored in entries:
                    offsets[tp] = offset + 1
                    moved.add(tp)
                    # None: a record not written by the exchange (the feed logged it).
                    # A seq not above the last one: a relay repeat after a crash,
                    # already delivered (or filtered) once.
                    if stored is None or stored.seq <= seqs.get(tp, -1):
                        continue
                    seqs[tp] = stored.seq
                    if wanted(tp[0], stored):
                        deliveries.append(Delivery(stored, position.cursor()))
                self.delivered += len(deliveries)
                yield Batch(deliveries, position.cursor())
        finally:
            await feed.close()

    async def _start(
        self,
        names: list[str],
        partitions: list[TopicPartition],
        request: SubscriptionRequest,
        given: Mapping[TopicPartition, tuple[int, int]] | None,
    ) -> _Position:
        """Offsets to start at (from the cursor's ``given`` positions, the beginning,
        or now); -1 means the earliest record held."""
        if given is not None:
            offsets: dict[TopicPartition, int] = {}
            seqs: dict[TopicPartition, int] = {}
            for tp in partitions:
                offsets[tp], seqs[tp] = given.get(tp, (-1, -1))
            return _Position(offsets, seqs)
        if request.from_beginning:
            return _Position(dict.fromkeys(partitions, -1), dict.fromkeys(partitions, -1))
        # "Now" is what the relay recorded, never the broker's idea of the end.
        recorded = await self._store.relay_positions(names)
        return _Position({tp: recorded.get(tp, -1) for tp in partitions}, {})


def _described(request: SubscriptionRequest) -> dict[str, str | list[str]]:
    """A stream's start and filters, for its audit entry."""
    start = "cursor" if request.cursor else "beginning" if request.from_beginning else "now"
    detail: dict[str, str | list[str]] = {"start": start}
    if request.cursor:
        detail["cursor"] = request.cursor
    if request.types:
        detail["types"] = sorted(request.types)
    if request.labels:
        detail["labels"] = sorted(request.labels)
    return detail


def _wanted(
    partner: Partner, topics: frozenset[str], request: SubscriptionRequest
) -> Callable[[str, StoredObject], bool]:
    """The stream's test for each record read from a topic: delivered from this one of
    the partner's topics, the policy (asked every time), then filters."""
    types, labels = request.types, request.labels
    may_receive, delivers_from = policy.may_receive, policy.delivers_from

    def wanted(topic: str, stored: StoredObject) -> bool:
        obj = stored.obj
        if not delivers_from(topic, stored.topics, topics):
            return False
        if not may_receive(partner, stored.audience):
            return False
        if types and obj.object_type not in types:
            return False
        return not labels or not labels.isdisjoint(obj.labels)

    return wanted
