"""The outbox relay: moves accepted objects from the store to the bus.

At-least-once: rows leave the outbox only after the bus acknowledged every
record; a crash in between publishes them again, and subscribers drop the
repeat by its exchange sequence number. A row whose record the bus will never
take (larger than the broker accepts: ingest refuses such objects, so only a
broker configured below ``kafka.max_record_bytes`` gets here) is set aside with
its reason, logged and counted, and the rest of the outbox flows on. Woken right
after each commit (and each erasure), and polling as a fallback for rows written
while it was down or by another process.

Erasures (``store.pending_erasures``) are published after the objects of the same
flush, as tombstones (``envelope.to_erasure_records``): an erasure is committed after
the versions it erases, so every record of the erased copy is on its partition
before its tombstone, and compaction removes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from exchange import policy
from exchange._tasks import supervise
from exchange.bus import Bus, BusRecord, Refused, TopicPartition
from exchange.envelope import to_erasure_records, to_records
from exchange.errors import ExchangeError
from exchange.metrics import Metrics
from exchange.model import Erasure, StoredObject
from exchange.store import Store

__all__ = ["Relay"]

log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        *,
        batch_size: int = 1000,
        batch_bytes: int = 16 * 1024 * 1024,
        poll_interval_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._metrics = metrics or Metrics(process=False)
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        # Rows committed by other replicas wake it too (PostgreSQL NOTIFY).
        store.on_outbox(self.wake)
        self._known_topics: set[str] = set()
        self.published = 0
        # Whether this process held the relay lease at its last look (logged on change).
        self.leading: bool | None = None
        self._published: list[Callable[[Mapping[TopicPartition, int]], None]] = []
        self._erasures_published: list[Callable[[list[Erasure]], None]] = []
        self.published_erasures = 0

    def on_published(self, listener: Callable[[Mapping[TopicPartition, int]], None]) -> None:
        """Call ``listener`` with the positions (next offsets) the relay recorded after
        each batch it published (the live tail reads the quiet topics on this cue)."""
        self._published.append(listener)

    def on_erasures_published(self, listener: Callable[[list[Erasure]], None]) -> None:
        """Call ``listener`` with the erasures whose tombstones the relay published."""
        self._erasures_published.append(listener)

    def wake(self) -> None:
        """Called after a commit: there is something to publish."""
        self._wakeup.set()

    async def run(self) -> None:
        """Publish until cancelled; bus errors are logged and retried with backoff."""
        await supervise(self._drain, self._failed, first_delay_s=0.1, max_delay_s=10.0)

    async def _drain(self) -> None:
        """Publish every pending row, then wait for a wake-up or the next poll."""
        while await self.flush_once():
            pass
        with contextlib.suppress(TimeoutError):
            # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation
            # that arrives as the wait ends (a wake-up at shutdown), and the
            # server's stop() would wait for this task forever.
            async with asyncio.timeout(self._poll_interval_s):
                await self._wakeup.wait()
        self._wakeup.clear()

    async def _failed(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, ExchangeError):
            # The store or the bus is unreachable (health says so too): one line,
            # no traceback, and fewer of them as the backoff grows.
            log.warning("relay: publishing failed (%s); retrying in %.1f s", exc, delay)
        else:
            log.error("relay: publishing failed; retrying in %.1f s", delay, exc_info=exc)

    async def flush_once(self) -> int:
        """Publish one batch of pending rows, then of pending erasures; returns how many
        rows and erasures it published.

        Replicas sharing the store: only the holder of the relay lease publishes, so
        that records reach each topic in sequence order (subscribers take a sequence
        not above the last one seen as a repeat). A replica that loses the lease
        mid-batch may publish that batch twice: at-least-once, and dropped as repeats."""
        leading = await self._store.hold_lease("relay")
        if leading != self.leading:
            self.leading = leading
            log.info(
                "relay: %s",
                "this process relays the outbox now"
                if leading
                else "another process relays the outbox",
            )
        if not leading:
            return 0
        rows = await self._store.pending_outbox(self._batch_size, self._batch_bytes)
        self._metrics.relay_pass(rows)
        published = await self._publish_rows(rows) if rows else 0
        # After the objects: a tombstone follows every record of its copy.
        return published + await self._publish_erasures()

    async def _publish_erasures(self) -> int:
        erasures = await self._store.pending_erasures(self._batch_size)
        if not erasures:
            return 0
        # Erasures are rare: the registry is read for each batch of them (fan-out of
        # audiences that exclude kinds of partner, as for their versions).
        partners = await self._store.list_partners()
        records = [r for e in erasures for r in to_erasure_records(e, partners)]
        await self._ensure(records)
        landed = await self._bus.publish(records)
        positions: dict[TopicPartition, int] = {}
        for record, outcome in zip(records, landed, strict=True):
            if isinstance(outcome, Refused):
                # A tombstone is a few hundred bytes: only a broken broker refuses it.
                log.error("relay: the bus refused a tombstone on %s: %s", record.topic, outcome)
                continue
            tp, offset = outcome
            positions[tp] = max(positions.get(tp, 0), offset + 1)
        await self._store.mark_erasures_published([e.erasure_id for e in erasures], positions)
        for listener in self._published:
            listener(positions)
        for erased in self._erasures_published:
            erased(erasures)
        self.published_erasures += len(erasures)
        log.info("relay: published the tombstones of %d erasure(s)", len(erasures))
        return len(erasures)

    async def _ensure(self, records: list[BusRecord]) -> None:
        new_topics = {r.topic for r in records} - self._known_topics
        if new_topics:
            await self._bus.ensure_topics(sorted(new_topics))
            self._known_topics |= new_topics

    async def _publish_rows(self, rows: list[StoredObject]) -> int:
        # Audiences that exclude kinds of partner fan out to partner topics (policy.topics_for).
        partners = (
            await self._store.list_partners()
            if any(r.audience.excluded_kinds for r in rows)
            else []
        )
        records: list[BusRecord] = []
        row_of: list[StoredObject] = []  # the row of each record
        for row in rows:
            for record in to_records(row, policy.topics_for(row.audience, partners)):
                records.append(record)
                row_of.append(row)
        await self._ensure(records)
        landed = await self._bus.publish(records)
        positions: dict[TopicPartition, int] = {}
        set_aside: dict[int, str] = {}
        for record, row, outcome in zip(records, row_of, landed, strict=True):
            if isinstance(outcome, Refused):
                set_aside.setdefault(row.seq, f"topic {record.topic}: {outcome.reason}")
                continue
            tp, offset = outcome
            positions[tp] = max(positions.get(tp, 0), offset + 1)
        # A row the bus refused leaves the outbox all the same (set aside, for the
        # operator): retried, it would stand in front of everyone else's forever.
        done = [r for r in rows if r.seq not in set_aside]
        await self._store.mark_published([r.seq for r in done], positions, set_aside)
        for listener in self._published:
            listener(positions)
        for row in rows:
            if (reason := set_aside.get(row.seq)) is not None:
                log.error(
                    "relay: set aside object %s version %s (exchange seq %d, submitted by"
                    " %s): %s; it stays stored, and is not published again on any topic",
                    row.obj.object_id,
                    row.obj.version,
                    row.seq,
                    row.submitter,
                    reason,
                )
        self._metrics.relay_set_aside.inc(len(set_aside))
        self._metrics.relayed(done)
        self.published += len(done)
        return len(rows)
