"""Subscribe: from a start position through history into the live tail.

A subscription reads the partner's topics (policy.subscription_topics): from the
process's shared live tail (exchange._tail: one bus reader for every stream, each
record decoded once) while its position is inside the tail's window, and with a
bus reader of its own (manual assignment, no consumer group) while it catches up
from history or after it fell behind the window. It re-checks the policy for every
record, filters by type and label, and hands out batches. Each delivery carries a
cursor: the read position of every topic-partition right after that delivery, plus
the highest exchange sequence seen there (to drop a relay's at-least-once repeats).
Resuming from it repeats nothing and skips nothing.

What a stream may hold is bounded in bytes, whatever its subscriber does. A batch
holds at most ``max_batch`` deliveries and ``max_batch_bytes`` of records (one
larger record goes alone), and the stream's private reader fetches no more ahead.
Reading waits until the previous batch was sent, so a slow subscriber holds one batch
(the tail never waits for it: the subscriber falls out of its window instead). A
subscriber that takes no message for ``stall_timeout_s`` (its HTTP/2 flow-control
window stays shut) has its stream ended with Unavailable. A delivery is recorded (in a
DELIVER entry listing what the partner received over a short span: AuditRecorder)
once the message holding it was written to the stream, never before (a subscriber that
goes away during the write may have received it: it is recorded, unconfirmed, since
the write can end just before the cancellation lands). gRPC cannot take
back a message it was handed, so the last message of a stalled stream goes out if its
subscriber reads again (and is recorded then, the status after it), and resuming from
the cursor of the last message received repeats and skips nothing. Each partner may
have at most ``max_open_per_partner`` streams open in this process, a stalled one until
its last message went out or its connection closed, so that no partner can take every
slot of ``max_open`` or pile up stalled streams. Every field of a request is checked
against its bound before anything records it (``SubscriptionRequest``).

A record on several of the partner's topics (a community and a named recipient) is
delivered from one of them (policy.delivers_from). Between reads the stream asks its
``Access`` for the partner as the registry says now (an idle stream is woken for it when
the registry changes, and looks at least every ``heartbeat_s``): a revoked credential or a
disabled partner ends the stream, and when the partner's topics change (it joined or
left a community) the stream ends with Unavailable carrying the trailing metadata
``exchange-resume`` (ResumeRequested, exchange_protocol.subscribe), so that the client
resumes from its last cursor at once, quietly, with the new set of topics.

Erasure. A tombstone read on one of the stream's topics (``envelope.ErasureRecord``)
becomes an erasure notice when it is delivered from that topic (policy.delivers_from,
as a record) and the partner ``policy.may_receive`` at least one erased version: the
notice names those versions, and the objects referring to the erased one that the
partner may receive (from the full erasure in the store, ``store.erasure``, cached).
Records of erased versions still on the bus (Kafka before compaction, records the tail
read before the erasure) are held back (``ErasedCopies``); a newer version its creator
publishes after the erasure flows as usual. A notice is recorded (ERASE_NOTICE) once
written to the stream, as deliveries are.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from exchange_protocol.subscribe import TOPICS_CHANGED

from exchange import policy
from exchange._erased import ErasedCopies
from exchange._feed import Feed
from exchange._subscription_request import (
    MAX_CURSOR_CHARS,
    MAX_FILTER_VALUES,
    MAX_LABEL_CHARS,
    Cursor,
    StreamPosition,
    SubscriptionRequest,
    described,
    subscription_request,
)
from exchange._tail import LiveTail
from exchange._tasks import cancel_and_wait
from exchange.audit.entries import Action, Event
from exchange.audit.recorder import AuditRecorder
from exchange.auth import Access, require
from exchange.bus import Bus, TopicPartition
from exchange.envelope import ErasureRecord
from exchange.errors import ExchangeError, ResourceExhausted, ResumeRequested, Unavailable
from exchange.metrics import Metrics
from exchange.model import Erasure, Partner, Role, StoredObject
from exchange.store import ObjectStore

__all__ = [
    "MAX_CURSOR_CHARS",
    "MAX_FILTER_VALUES",
    "MAX_LABEL_CHARS",
    "Batch",
    "Cursor",
    "Delivery",
    "Notice",
    "Send",
    "SubscriptionRequest",
    "Subscriptions",
    "subscription_request",
]

_SHUTTING_DOWN = "the exchange is shutting down; resume from your last cursor"


# Erasures whose full record (Erasure) this process keeps for the streams that read
# their tombstones (each is read once per stream that may be told).
_ERASURES_CACHED = 1024
# Erasure ids a stream remembers having handled, to drop a relay's repeat of a
# tombstone (at-least-once after a crash). Object records are deduplicated by their
# exchange sequence per topic-partition (kept in the cursor); erasures have no place in
# that sequence (the store numbers them apart, and a tombstone can follow records of
# higher sequence), so a stream drops repeats by erasure id, in a bounded set: a repeat
# lands right after the original (the relay republishes its last batch), well within
# it. A stream resumed from a cursor taken between the two could give a second notice
# for one erasure: harmless (deleting a copy already deleted), and documented.
_NOTICES_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class Notice:
    """An erasure notice for one subscriber: what it may know was erased (never the
    content)."""

    erasure_id: int
    object_id: str
    object_type: str
    submitter: str
    submitter_identity: str
    versions: tuple[str, ...]  # the erased versions the subscriber may have received
    reason: str
    erased_at: float
    referenced_by: tuple[str, ...]  # referring objects the subscriber may receive


class Delivery(NamedTuple):
    # A tuple: built for every delivery of every stream, at two thirds of the cost of
    # a frozen dataclass. ``stored`` is a Notice for an erasure notice.
    stored: StoredObject | Notice
    cursor: str


@dataclass(frozen=True, slots=True)
class Batch:
    deliveries: list[Delivery]
    # Position after everything this batch covers, filtered records included.
    cursor: str
    # How many of the deliveries are erasure notices (Notice): they are rare, and a
    # batch without any takes the paths made for objects alone (encoding, audit).
    notices: int = 0


# Sends one batch to the subscriber; returns once it was written to the stream.
Send = Callable[[Batch], Awaitable[None]]


@dataclass(eq=False, slots=True)
class _Open:
    """An open stream, as the stall watch sees it."""

    partner_id: str
    count: int = 0  # deliveries written
    writing_since: float | None = None  # loop time its current write began
    stalled: bool = False


class Subscriptions:
    def __init__(
        self,
        store: ObjectStore,
        bus: Bus,
        *,
        max_open: int = 1000,
        max_open_per_partner: int = 16,
        max_batch: int = 500,
        max_batch_bytes: int = 2 * 1024 * 1024,
        idle_wait_s: float | None = None,
        heartbeat_s: float = 5.0,
        stall_timeout_s: float = 60.0,
        tail_window: int = 50_000,
        tail_window_bytes: int = 128 * 1024 * 1024,
        recorder: AuditRecorder | None = None,
        metrics: Metrics | None = None,
        erased: ErasedCopies | None = None,
    ) -> None:
        self._store = store
        # Not started when not given (tests): it then holds what streams read.
        self.erased = erased if erased is not None else ErasedCopies(store)
        self._erasures: OrderedDict[int, Erasure | None] = OrderedDict()
        self._recorder = recorder
        self._metrics = metrics or Metrics(process=False)
        self._bus = bus
        self._max_open = max_open
        self._max_open_per_partner = max_open_per_partner
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        # An idle stream sleeps until records arrive, its heartbeat is due, or it is
        # woken (``wake_all``: shutdown, a registry change): 1,000 idle streams woke
        # 1,000 times a second when each looked every second.
        self._idle_wait_s = heartbeat_s if idle_wait_s is None else idle_wait_s
        self._feeds: set[Feed] = set()
        self._heartbeat_s = heartbeat_s
        self._stall_timeout_s = stall_timeout_s
        self.tail = LiveTail(
            store,
            bus,
            window=tail_window,
            window_bytes=tail_window_bytes,
            hot_topics=policy.SHARED_TOPICS,
        )
        self.open_count = 0
        self._open_by_partner: dict[str, int] = {}
        self._open: set[_Open] = set()
        self._stall_watch: asyncio.Task[None] | None = None
        # Deliveries sent to streams so far (each counted once its message was written).
        self.delivered = 0
        self._shutting_down = False

    def begin_shutdown(self) -> None:
        """Open streams end with Unavailable now (an idle one is woken; one writing, once
        its write is done), so that their clients resume from their last cursor
        elsewhere; new ones are refused."""
        self._shutting_down = True
        self.wake_all()

    def wake_all(self) -> None:
        """Wake every idle stream to look again: at its caller (the registry changed: a
        revoked credential, a partner disabled or moved between communities) and at
        whether the exchange is shutting down."""
        for feed in self._feeds:
            feed.wake()

    async def close(self) -> None:
        """Stop the live tail; streams still open end with Unavailable."""
        self._shutting_down = True
        watch, self._stall_watch = self._stall_watch, None
        await cancel_and_wait(watch)
        await self.tail.close()

    async def serve(self, access: Access, request: SubscriptionRequest, send: Send) -> None:
        """Send the caller of ``access`` its batches with ``send`` until the stream is
        cancelled (the subscriber went away) or ends with an ExchangeError. The audit
        log records the start, each delivery once the message holding it was written,
        and the end.

        A write not done within ``stall_timeout_s`` marks the stream stalled (the stall
        watch). gRPC cannot take back a message it was given, and the write is never
        cancelled: it ends when the subscriber reads again (the message arrives and is
        recorded, then Unavailable) or when its connection closes. Until then the stream
        keeps its place in the partner's limit, so no partner can pile up stalled ones.
        Each write is awaited directly: a task per message would double the server's
        CPU per message of a live stream (measured)."""
        if self._shutting_down:
            raise Unavailable(_SHUTTING_DOWN)
        # A foreign cursor is refused before anything is recorded or set up for it.
        given = None if request.cursor is None else Cursor.decode(request.cursor).positions
        me = access.partner.partner_id
        self._admit(me)
        self.open_count += 1
        self._open_by_partner[me] = self._open_by_partner.get(me, 0) + 1
        self._metrics.subscriptions_open.inc()
        this = _Open(me)
        self._open.add(this)
        self._watch_stalls()
        self._record(Event(Action.SUBSCRIBE_START, me, time.time(), detail=described(request)))
        ending = "closed by the subscriber"
        loop = asyncio.get_running_loop()
        try:
            async with contextlib.aclosing(self._stream(access, request, given)) as batches:
                async for batch in batches:
                    this.writing_since = loop.time()
                    try:
                        await send(batch)
                    except asyncio.CancelledError:
                        # The subscriber went away during the write. The message may
                        # have arrived (the write can end just before the cancel lands):
                        # the log may list a receipt that did not happen, never miss one
                        # that did.
                        self._delivered(this, batch, confirmed=False)
                        raise
                    this.writing_since = None
                    self._delivered(this, batch, confirmed=True)
                    if this.stalled:
                        raise Unavailable(self._stalled_reason())
        except ExchangeError as exc:
            ending = exc.message
            raise
        finally:
            if this.stalled:
                ending = self._stalled_reason()
            self._open.discard(this)
            self.open_count -= 1
            if (left := self._open_by_partner[me] - 1) > 0:
                self._open_by_partner[me] = left
            else:
                del self._open_by_partner[me]
            self._metrics.subscriptions_open.dec()
            self._record(
                Event(
                    Action.SUBSCRIBE_END,
                    me,
                    time.time(),
                    detail={"deliveries": this.count, "reason": ending},
                )
            )

    def _delivered(self, this: _Open, batch: Batch, *, confirmed: bool) -> None:
        if not batch.deliveries:
            return
        this.count += len(batch.deliveries)
        self.delivered += len(batch.deliveries)
        now = time.time()
        if batch.notices:
            notices = [d.stored for d in batch.deliveries if isinstance(d.stored, Notice)]
            self._record(*(_notice_event(this.partner_id, n, now) for n in notices))
            objects = [d.stored for d in batch.deliveries if not isinstance(d.stored, Notice)]
        else:
            objects = [d.stored for d in batch.deliveries]  # type: ignore[misc]
        if self._recorder is not None:
            self._recorder.note_deliveries(this.partner_id, objects, now, confirmed=confirmed)
        self._metrics.delivered(objects, now)

    def open_of(self, partner_id: str) -> int:
        """The streams ``partner_id`` has open in this process (stalled ones included)."""
        return self._open_by_partner.get(partner_id, 0)

    def _admit(self, me: str) -> None:
        """Refuse a stream over the partner's limit or the process's."""
        mine = self._open_by_partner.get(me, 0)
        if mine >= self._max_open_per_partner:
            self._metrics.limit_refusals.labels("subscriptions.max_open_per_partner").inc()
            raise ResourceExhausted(
                f"you have {mine} Subscribe streams open, the most one partner may have"
                f" (subscriptions.max_open_per_partner = {self._max_open_per_partner});"
                " close one before opening another (a stream whose messages you do not read"
                " stays open until you read them or close its connection)"
            )
        if self.open_count >= self._max_open:
            self._metrics.limit_refusals.labels("subscriptions.max_open").inc()
            raise ResourceExhausted(
                f"the exchange serves at most {self._max_open} open subscriptions"
                " (subscriptions.max_open); retry later"
            )

    def _stalled_reason(self) -> str:
        return (
            f"your stream took no message for {self._stall_timeout_s:g} s"
            " (subscriptions.stall_timeout_s) and was ended; resume from the cursor of the last"
            " message you received"
        )

    def _watch_stalls(self) -> None:
        if self._stall_watch is None or self._stall_watch.done():
            self._stall_watch = asyncio.create_task(self._stall_loop(), name="stall-watch")

    async def _stall_loop(self) -> None:
        """Mark streams whose write has waited over ``stall_timeout_s``: one look per
        quarter of it (at most a second) for all, instead of a timer per message."""
        loop = asyncio.get_running_loop()
        every = min(self._stall_timeout_s / 4, 1.0)
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            for stream in self._open:
                since = stream.writing_since
                if since is not None and not stream.stalled and now - since > self._stall_timeout_s:
                    stream.stalled = True
                    self._metrics.subscriptions_stalled.inc()
                    self._metrics.limit_refusals.labels("subscriptions.stall_timeout_s").inc()

    def _record(self, *events: Event) -> None:
        if self._recorder is not None:
            self._recorder.note(events)

    async def _stream(  # noqa: PLR0915 (one loop: catch-up, live, notices, heartbeats)
        self,
        access: Access,
        request: SubscriptionRequest,
        given: Mapping[TopicPartition, tuple[int, int]] | None,
    ) -> AsyncGenerator[Batch]:
        partner = access.partner
        names = policy.subscription_topics(partner)
        await self._bus.ensure_topics(names)
        partitions = [(t, p) for t in names for p in await self._bus.partitions(t)]
        # Before "now" is read, so that a topic-partition new to the tail starts there
        # no later than this stream does (and the stream can follow the tail at once).
        await self.tail.ensure(partitions)
        position = await self._start(names, partitions, request, given)
        feed = Feed(self.tail, self._bus, position.offsets, self._max_batch_bytes)
        self._feeds.add(feed)
        max_batch = min(request.max_batch or self._max_batch, self._max_batch)
        subscribed = frozenset(names)
        wanted = _wanted(partner, subscribed, request)
        hides, erased = self.erased.hides, self.erased.copies
        notified: OrderedDict[int, None] = OrderedDict()
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
                        raise ResumeRequested(
                            "your communities changed, and with them the topics of this"
                            " subscription; resume from your last cursor",
                            TOPICS_CHANGED,
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
                notices = 0
                offsets, seqs, moved = position.offsets, position.seqs, position.moved
                for tp, offset, stored in entries:
                    offsets[tp] = offset + 1
                    moved.add(tp)
                    if isinstance(stored, ErasureRecord):
                        notice = await self._notice(
                            partner,
                            request,
                            tp[0],
                            stored,
                            subscribed=subscribed,
                            notified=notified,
                        )
                        if notice is not None:
                            deliveries.append(Delivery(notice, position.cursor()))
                            notices += 1
                        continue
                    # None: a record not written by the exchange (the feed logged it).
                    # A seq not above the last one: a relay repeat after a crash,
                    # already delivered (or filtered) once.
                    if stored is None or stored.seq <= seqs.get(tp, -1):
                        continue
                    seqs[tp] = stored.seq
                    # A record of an erased version, still on the bus: held back.
                    if wanted(tp[0], stored) and not (erased and hides(stored)):
                        deliveries.append(Delivery(stored, position.cursor()))
                # A notice's look-up in the store was the batch's only wait: an erasure
                # made meanwhile holds back what was taken before it. (Else nothing
                # waits between these checks and the write.)
                kept = _not_erased(deliveries, hides) if notices and erased else deliveries
                yield Batch(kept, position.cursor(), notices)
        finally:
            self._feeds.discard(feed)
            await feed.close()

    async def _notice(
        self,
        partner: Partner,
        request: SubscriptionRequest,
        topic: str,
        record: ErasureRecord,
        *,
        subscribed: frozenset[str],
        notified: OrderedDict[int, None],
    ) -> Notice | None:
        """The notice ``partner`` gets for the tombstone ``record`` read on ``topic``, or
        None: not from this topic (it has it from another one), a repeat, a type the
        stream filters out, or nothing erased it may have received. A label filter
        cannot apply (the labels were erased with the body): a stream filtering by label
        is told of every erasure it may have received a version of."""
        if record.erasure_id in notified:
            return None  # a relay repeat (see _NOTICES_REMEMBERED)
        if not policy.delivers_from(topic, record.topics, subscribed):
            return None
        if request.types and record.object_type not in request.types:
            return None
        erasure = await self._erasure(record.erasure_id)
        if erasure is not None:
            # Held back from here on in every stream of this process, whatever topic
            # they read the copy's records from next.
            self.erased.add(erasure)
            versions = tuple(
                v.version for v in erasure.versions if policy.may_receive(partner, v.audience)
            )
            referenced_by = tuple(
                sorted(
                    {
                        oid
                        for oid, audience in erasure.referenced_by
                        if policy.may_receive(partner, audience)
                    }
                )
            )
        else:
            # Not in this store (a bus shared with another store): what the topic says.
            versions = tuple(
                v.version for v in record.versions if policy.may_receive(partner, v.audience)
            )
            referenced_by = ()
        if not versions:
            return None
        notified[record.erasure_id] = None
        if len(notified) > _NOTICES_REMEMBERED:
            notified.popitem(last=False)
        return Notice(
            erasure_id=record.erasure_id,
            object_id=record.object_id,
            object_type=record.object_type,
            submitter=record.submitter,
            submitter_identity=record.submitter_identity,
            versions=versions,
            reason=record.reason,
            erased_at=record.erased_at,
            referenced_by=referenced_by,
        )

    async def _erasure(self, erasure_id: int) -> Erasure | None:
        """The erasure ``erasure_id`` from the store, through a small LRU cache: every
        stream that reads its tombstone asks."""
        cache = self._erasures
        if erasure_id in cache:
            cache.move_to_end(erasure_id)
            return cache[erasure_id]
        erasure = await self._store.erasure(erasure_id)
        cache[erasure_id] = erasure
        if len(cache) > _ERASURES_CACHED:
            cache.popitem(last=False)
        return erasure

    async def _start(
        self,
        names: list[str],
        partitions: list[TopicPartition],
        request: SubscriptionRequest,
        given: Mapping[TopicPartition, tuple[int, int]] | None,
    ) -> StreamPosition:
        """Offsets to start at (from the cursor's ``given`` positions, the beginning,
        or now); -1 means the earliest record held."""
        if given is not None:
            offsets: dict[TopicPartition, int] = {}
            seqs: dict[TopicPartition, int] = {}
            for tp in partitions:
                offsets[tp], seqs[tp] = given.get(tp, (-1, -1))
            return StreamPosition(offsets, seqs)
        if request.from_beginning:
            return StreamPosition(dict.fromkeys(partitions, -1), dict.fromkeys(partitions, -1))
        # "Now" is what the relay recorded, never the broker's idea of the end.
        recorded = await self._store.relay_positions(names)
        return StreamPosition({tp: recorded.get(tp, -1) for tp in partitions}, {})


def _notice_event(recipient: str, notice: Notice, at: float) -> Event:
    return Event(
        Action.ERASE_NOTICE,
        recipient,
        at,
        object_id=notice.object_id,
        owner=notice.submitter,
        detail={
            "channel": "subscribe",
            "erasure": notice.erasure_id,
            "versions": len(notice.versions),
        },
    )


def _not_erased(
    deliveries: list[Delivery], hides: Callable[[StoredObject], bool]
) -> list[Delivery]:
    return [d for d in deliveries if isinstance(d.stored, Notice) or not hides(d.stored)]


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
