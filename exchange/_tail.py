"""The live tail: the bus read once per process for every Subscribe stream.

A stream that had a bus reader of its own (its own Kafka consumer, its own SQLite
queries) and decoded every record itself made 100 streams cost 100 readers and 100
decodes per record, which saturated the server's event loop. Here the live part of
every stream comes from one place.

``LiveTail`` reads every topic-partition (tp) some stream has asked for, decodes
each record once (``envelope.read_record``) and keeps the most recent records (over
all tps together) in memory: at most ``window`` of them, weighing at most
``window_bytes`` (``bus.record_bytes``: so that large objects cannot make the tail
hold gigabytes). Per tp it knows:

    first   every record with an offset in [first, next) is held in memory
    next    the offset the tail reads next

A tp joins the tail at the relay-recorded position (``store.relay_positions``: what
the relay has published, never the broker's idea of the end), or at the earliest
record when the relay has recorded none; then first == next. Records move ``next``
up; when more than ``window`` records (or ``window_bytes``) are held, the oldest
(over all tps) is dropped and ``first`` of its tp moves past it. The tail never waits
for a stream: a stream that does not keep up simply falls out of the window.

How the tail reads:

- The hot topics (the shared ``clear`` and ``green``, which every stream reads and
  which carry most records) with ONE bus reader, all the time. Bus readers cannot
  change their assignment, so when a new hot tp appears the tail reopens that
  reader with every hot tp at the tail's positions.
- Every other topic (``partner.<id>``: one per subscribed partner, few records) on
  demand: the tail asks the store where the relay has published to, and reads just
  the tps that moved, with a short-lived reader, up to there. It asks every
  ``cold_poll_s``, or, while this process's own relay holds the lease (so that no
  other process publishes), when that relay says it published to one of them and at
  least every ``cold_poll_idle_s`` (1,000 idle partner streams cost ~4% of a core in
  asking alone at 40 times a second). A reader kept on hundreds of mostly idle
  partitions pays for fetching all of them ~100 times a second
  (``fetch_max_wait_ms``); measured on Tansu with 100 idle partner streams, the
  event loop spent 0.36 cores with one reader over every tp and 0.10 with this
  split. The price: such records arrive up to ``cold_poll_s`` later than on a hot
  topic (on a replica whose relay does not lead), and the tail only learns of them
  from the relay's recorded positions (only the relay writes to the bus).
  ``hot_topics=None`` reads every topic with the one reader.

``Feed`` (exchange._feed) is one stream's source of records: the shared tail when
it can, a private bus reader otherwise. With ``pos`` the stream's next offset per tp
(-1, "the earliest record", counts as 0):

    switch rule: the stream reads from the tail iff, for every one of its tps, the
    tp is tailed and pos[tp] >= first[tp].

From the tail it takes, per tp, the held records with offset >= pos[tp], in offset
order; a private reader returns exactly the same records from the bus. So a switch
in either direction, made between two reads, neither repeats nor skips a record.
A stream ahead of the tail (pos > next: the relay recorded a position the tail has
not read up to yet) also satisfies the rule: it waits, and skips the records below
its position as the tail reads them (the tail reads every offset in order).

- Catching up from history (from_beginning, an old cursor): pos < first, so the
  stream reads privately until it has reached the window, then switches. What
  private readers read is decoded once for every stream (``Decoded``: the last
  ``decoded_bytes`` of it), so that streams catching up over the same history at
  about the same time (after a restart, a new partner's first subscription) share
  the decoding as live streams share the tail.
- Falling behind (a slow client while the window moves on): the stream finds
  pos < first, opens a private reader at pos and catches up from the bus; it
  switches back once the rule holds again.
- New tps (a partner's topic the first time that partner subscribes): ``ensure``
  registers them at once (first == next == start), so streams can follow them
  immediately.
- Failures: read errors are logged and retried with backoff, reopening readers at
  the tail's positions. Streams following the tail wait through a short outage;
  once the tail has not read for ``unavailable_after_s`` they end with Unavailable,
  as a stream whose own reader failed always did, so that the client knows its feed
  has stopped (silence would look like "nothing new") and resumes from its last
  cursor, here later or on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence

from exchange._tasks import cancel_and_wait, supervise
from exchange.bus import Bus, BusReader, ReadRecord, TopicPartition, record_bytes
from exchange.envelope import ErasureRecord, read_record
from exchange.errors import ExchangeError, Unavailable
from exchange.model import StoredObject
from exchange.store import ObjectStore

__all__ = ["Decoded", "Entry", "LiveTail", "decode"]

log = logging.getLogger(__name__)

# A record as a stream sees it: where it is, and its decoded object, or erasure (a
# tombstone), or None (a record this exchange did not write; the stream moves past it).
Entry = tuple[TopicPartition, int, StoredObject | ErasureRecord | None]

_FIRST_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
# How long one on-demand read may take to reach the relay-recorded positions.
_COLD_READ_S = 5.0
# Compact a tp's lists once this many dropped slots lead them (and they are half).
_COMPACT_AFTER = 1024


def decode(record: ReadRecord) -> Entry:
    tp = (record.topic, record.partition)
    try:
        stored: StoredObject | ErasureRecord | None = read_record(record)
    except (KeyError, ValueError):
        log.warning("skipping a record not written by the exchange at %s@%d", tp, record.offset)
        stored = None
    return tp, record.offset, stored


class Decoded:
    """Records read by private readers, decoded, by where they are on the bus: streams
    catching up over the same history at about the same time (many partners
    subscribing from the beginning, or resuming after a restart) decode each record
    once instead of once per stream, as the tail does for the live part.

    Holds at most ``max_bytes`` of records (key and value: what the decoded entry
    keeps alive), oldest first out: streams reading history move forward, so what was
    decoded first is what no stream behind them will need soonest. It keeps nothing
    while fewer than two private readers are open (no other stream to share with:
    a stream catching up alone pays nothing for it), and lets go of everything once
    none is."""

    __slots__ = ("_entries", "_held", "_max_bytes", "hits", "readers")

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._held = 0
        self.readers = 0  # private readers open (Feed counts its own)
        # (topic, partition, offset) -> (the record's key, its entry, weight), oldest
        # first. An OrderedDict: taking a plain dict's first key walks past every key
        # removed before it (measured: 15 us per record once full).
        self._entries: OrderedDict[tuple[str, int, int], tuple[bytes, Entry, int]] = OrderedDict()
        self.hits = 0  # entries served without decoding (for tests and benchmarks)

    @property
    def held_bytes(self) -> int:
        return self._held

    def opened(self) -> None:
        self.readers += 1

    def closed(self) -> None:
        self.readers -= 1
        if self.readers <= 0:
            self.readers = 0
            self._entries.clear()
            self._held = 0

    def decode(self, records: Sequence[ReadRecord]) -> list[Entry]:
        """``decode`` of each record, or the entry another stream decoded for it."""
        if self.readers < 2 or self._max_bytes <= 0:
            return [decode(r) for r in records]
        entries = self._entries
        out: list[Entry] = []
        append = out.append
        for record in records:
            place = (record.topic, record.partition, record.offset)
            held = entries.get(place)
            # An offset names one record for as long as the log lives; the key checks
            # it anyway (a topic deleted and made again starts its offsets over).
            if held is not None and held[0] == record.key:
                self.hits += 1
                append(held[1])
                continue
            entry = decode(record)
            append(entry)
            weight = len(record.key) + len(record.value)
            if held is not None:
                self._held -= held[2]
            entries[place] = (record.key, entry, weight)
            self._held += weight
            while self._held > self._max_bytes and entries:
                self._held -= entries.popitem(last=False)[1][2]
        return out


class _Log:
    """The held records of one tp, oldest first; slots before ``head`` are dropped."""

    __slots__ = ("dropped", "entries", "first", "head", "next", "offsets", "weights")

    def __init__(self, start: int) -> None:
        self.first = start
        self.next = start
        self.head = 0
        self.offsets: list[int] = []  # for bisect: the offsets of ``entries``
        # Shared by every stream that takes them: built once per record.
        self.entries: list[Entry | None] = []
        # For bisect too: the bytes of every record of this tp up to and including
        # each entry (``dropped`` of them before ``head``).
        self.weights: list[int] = []
        self.dropped = 0

    def append(self, entry: Entry, size: int) -> None:
        self.offsets.append(entry[1])
        self.entries.append(entry)
        self.weights.append((self.weights[-1] if self.weights else self.dropped) + size)
        self.next = entry[1] + 1

    def drop_oldest(self) -> int:
        """Drop the oldest held entry; its size."""
        head = self.head
        self.first = self.offsets[head] + 1
        self.entries[head] = None
        size = self.weights[head] - self.dropped
        self.dropped = self.weights[head]
        self.head = head + 1
        if self.head >= _COMPACT_AFTER and self.head * 2 >= len(self.offsets):
            del self.offsets[: self.head]
            del self.entries[: self.head]
            del self.weights[: self.head]
            self.head = 0
        return size

    def since(
        self, pos: int, limit: int, max_bytes: int | None, *, at_least_one: bool
    ) -> tuple[list[Entry], int]:
        """Up to ``limit`` held entries at or after offset ``pos``, weighing at most
        ``max_bytes`` (None: any) unless ``at_least_one`` and the first weighs more;
        and their weight."""
        start = bisect_left(self.offsets, pos, self.head)
        end = min(start + limit, len(self.offsets))
        if start >= end:
            return [], 0
        before = self.weights[start - 1] if start > self.head else self.dropped
        if max_bytes is not None:
            end = bisect_right(self.weights, before + max_bytes, start, end)
            if end == start and at_least_one:
                end = start + 1
        # Slots from ``head`` on are never None.
        taken: list[Entry] = self.entries[start:end]  # type: ignore[assignment]
        return taken, (self.weights[end - 1] - before if end > start else 0)


class LiveTail:
    """One bus reader for every live stream of this process; see the module docstring."""

    def __init__(
        self,
        store: ObjectStore,
        bus: Bus,
        *,
        window: int = 50_000,
        window_bytes: int = 128 * 1024 * 1024,
        hot_topics: Collection[str] | None = None,
        cold_poll_s: float = 0.025,
        cold_poll_idle_s: float = 1.0,
        read_batch: int = 5_000,
        read_bytes: int = 8 * 1024 * 1024,
        poll_s: float = 0.1,
        unavailable_after_s: float = 15.0,
        decoded_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        """``hot_topics``: read continuously (None: every topic); others on demand.
        ``read_batch`` and ``read_bytes`` bound one read of the bus (and what a reader
        fetches ahead). ``decoded_bytes`` bounds ``decoded``, the records that streams
        reading privately decoded, shared between them (0: none kept)."""
        if window <= 0 or window_bytes <= 0:
            raise ValueError("the tail window must hold at least one record and one byte")
        self._store = store
        self._bus = bus
        self._window = window
        self._window_bytes = window_bytes
        self._hot_topics = None if hot_topics is None else frozenset(hot_topics)
        self._cold_poll_s = cold_poll_s
        self._cold_poll_idle_s = cold_poll_idle_s
        # The tps (and topics) read on demand, kept as they are added.
        self._cold_tps: set[TopicPartition] = set()
        self._cold_topics: set[str] = set()
        self._cold_moved = asyncio.Event()
        self._relay_leads: Callable[[], bool] = lambda: False
        self._read_batch = read_batch
        self._read_bytes = read_bytes
        # Longest single read: new tps wait at most this long for the reader to reopen.
        self._poll_s = poll_s
        self._unavailable_after_s = unavailable_after_s
        self._logs: dict[TopicPartition, _Log] = {}
        self.decoded = Decoded(decoded_bytes)
        # One entry per held record, oldest first: which tp to drop from when full.
        self._order: deque[_Log] = deque()
        self.held_bytes = 0  # what the held records weigh (bus.record_bytes)
        self._watchers: dict[TopicPartition, set[asyncio.Event]] = {}
        self._reader: BusReader | None = None  # over the hot tps
        self._reopen = False  # the hot tps changed
        self._hot_added = asyncio.Event()
        self._adding = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        # "hot" / "cold" reading -> (failing since, error): set on failure, cleared on success.
        self._failing: dict[str, tuple[float, str]] = {}
        self._closed = False

    @property
    def window(self) -> int:
        return self._window

    @property
    def window_bytes(self) -> int:
        return self._window_bytes

    # -- used by streams -------------------------------------------------------------

    async def ensure(self, tps: Iterable[TopicPartition]) -> None:
        """Tail these tps too; a new one starts at the relay-recorded position."""
        self.check()
        if missing := [tp for tp in tps if tp not in self._logs]:
            async with self._adding:
                if missing := [tp for tp in missing if tp not in self._logs]:
                    recorded = await self._store.relay_positions({t for t, _ in missing})
                    for tp in missing:
                        self._logs[tp] = _Log(recorded.get(tp, 0))
                        if not self._hot(tp):
                            self._cold_tps.add(tp)
                            self._cold_topics.add(tp[0])
                    if any(self._hot(tp) for tp in missing):
                        self._reopen = True
                        self._hot_added.set()
        self.check()
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._supervised("hot", self._read_hot), name="live-tail-hot"),
                asyncio.create_task(
                    self._supervised("cold", self._read_cold), name="live-tail-cold"
                ),
            ]

    def check(self) -> None:
        """Raise Unavailable if the tail is closed or has not read for too long."""
        if self._closed:
            raise Unavailable("the exchange is shutting down; resume from your last cursor")
        for since, error in self._failing.values():
            if self._now() - since > self._unavailable_after_s:
                raise Unavailable(
                    f"the exchange cannot read its bus ({error}); resume from your last"
                    " cursor later"
                )

    def covers(self, positions: Mapping[TopicPartition, int]) -> bool:
        """The switch rule: every tp is tailed and its position is not below ``first``."""
        for tp, pos in positions.items():
            held = self._logs.get(tp)
            if held is None or max(pos, 0) < held.first:
                return False
        return True

    def take(
        self,
        positions: dict[TopicPartition, int],
        tps: Sequence[TopicPartition],
        limit: int,
        max_bytes: int | None = None,
    ) -> list[Entry] | None:
        """Up to ``limit`` held records at or after ``positions`` (weighing at most
        ``max_bytes``, the first one whatever its size, as a bus read), taking the tps
        in the order given, and move ``positions`` past them; None if the switch rule
        does not hold (read privately instead)."""
        if not self.covers(positions):
            return None
        out: list[Entry] = []
        budget = max_bytes
        for tp in tps:
            if len(out) >= limit or (budget is not None and budget <= 0):
                break
            chunk, weight = self._logs[tp].since(
                positions[tp], limit - len(out), budget, at_least_one=not out
            )
            if chunk:
                out += chunk
                positions[tp] = chunk[-1][1] + 1
                if budget is not None:
                    budget -= weight
        return out

    def follow_local_relay(self, leads: Callable[[], bool]) -> None:
        """``leads()``: this process's relay holds the lease now, and tells the tail
        (``relayed``) what it publishes."""
        self._relay_leads = leads

    def relayed(self, positions: Mapping[TopicPartition, int]) -> None:
        """The local relay recorded these positions: read the quiet tps that moved."""
        for tp, offset in positions.items():
            held = self._logs.get(tp)
            if tp in self._cold_tps and held is not None and offset > held.next:
                self._cold_moved.set()
                return

    def watch(self, tps: Iterable[TopicPartition], event: asyncio.Event) -> None:
        """Set ``event`` whenever records of these tps arrive (and on close)."""
        for tp in tps:
            self._watchers.setdefault(tp, set()).add(event)

    def unwatch(self, tps: Iterable[TopicPartition], event: asyncio.Event) -> None:
        for tp in tps:
            if (events := self._watchers.get(tp)) is not None:
                events.discard(event)
                if not events:
                    del self._watchers[tp]

    # -- life cycle ------------------------------------------------------------------

    async def close(self) -> None:
        """Stop reading; streams still following the tail end with Unavailable."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        await self._close_reader()
        for events in self._watchers.values():
            for event in events:
                event.set()

    # -- the reading loops -----------------------------------------------------------

    async def _supervised(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until cancelled; failures are logged and retried with backoff,
        and ``check`` reports them once they last too long."""

        async def failed(exc: Exception, delay: float) -> None:
            expected = isinstance(exc, ExchangeError)
            error = exc.message if isinstance(exc, ExchangeError) else repr(exc)
            since = self._failing.get(name, (self._now(), ""))[0]
            self._failing[name] = (since, error)
            log.warning(
                "live tail: reading the bus (%s topics) failed (%s); retrying in %.1f s",
                name,
                error,
                delay,
                exc_info=None if expected else exc,
            )
            if name == "hot":
                await self._close_reader()

        await supervise(
            step,
            failed,
            first_delay_s=_FIRST_BACKOFF_S,
            max_delay_s=_MAX_BACKOFF_S,
            recovered=lambda: self._failing.pop(name, None),
        )

    async def _read_hot(self) -> None:
        """One read of the hot tps (waiting while there are none)."""
        if self._reader is None or self._reopen:
            self._reopen = False
            await self._close_reader()
            start = {tp: _start(held) for tp, held in self._logs.items() if self._hot(tp)}
            if not start:
                self._hot_added.clear()
                await self._hot_added.wait()
                return
            self._reader = await self._bus.open_reader(start, prefetch_bytes=self._read_bytes)
        self._append(await self._reader.read(self._read_batch, self._poll_s, self._read_bytes))

    async def _read_cold(self) -> None:
        """Read the other tps up to where the relay has recorded publishing, then pause."""
        self._cold_moved.clear()
        cold = self._cold_tps
        recorded = await self._store.relay_positions(self._cold_topics) if cold else {}
        behind = {
            tp: off for tp, off in recorded.items() if tp in cold and off > self._logs[tp].next
        }
        if behind:
            reader = await self._bus.open_reader(
                {tp: _start(self._logs[tp]) for tp in behind}, prefetch_bytes=self._read_bytes
            )
            try:
                deadline = self._now() + _COLD_READ_S
                while any(self._logs[tp].next < off for tp, off in behind.items()):
                    if (left := deadline - self._now()) <= 0:
                        log.warning("live tail: topics not read up to the relay's positions")
                        break  # the next round tries again
                    self._append(
                        await reader.read(
                            self._read_batch, min(left, self._poll_s), self._read_bytes
                        )
                    )
            finally:
                await reader.close()
        pause = self._cold_poll_idle_s if self._relay_leads() else self._cold_poll_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pause):
                await self._cold_moved.wait()

    def _hot(self, tp: TopicPartition) -> bool:
        return self._hot_topics is None or tp[0] in self._hot_topics

    async def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                await reader.close()
            except Exception:
                log.warning("live tail: closing the bus reader failed", exc_info=True)

    def _append(self, records: Sequence[ReadRecord]) -> None:
        touched: set[TopicPartition] = set()
        order = self._order
        for record in records:
            tp = (record.topic, record.partition)
            held = self._logs.get(tp)
            if held is None or record.offset < held.next:
                continue  # not asked for, or already held (a broker replay)
            size = record_bytes(record)
            held.append(decode(record), size)
            self.held_bytes += size
            order.append(held)
            touched.add(tp)
        while len(order) > self._window or (order and self.held_bytes > self._window_bytes):
            self.held_bytes -= order.popleft().drop_oldest()
        for tp in touched:
            for event in self._watchers.get(tp, ()):
                event.set()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


def _start(held: _Log) -> int | None:
    """Where a reader for this tp starts: the tail's next offset (None: the earliest)."""
    return None if held.next == 0 else held.next
