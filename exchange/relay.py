"""The outbox relay: moves accepted objects from the store to the bus.

At-least-once: rows leave the outbox only after the bus acknowledged every
record; a crash in between publishes them again, and subscribers drop the
repeat by its exchange sequence number. Woken right after each commit, and
polling as a fallback for rows written while it was down or by another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from exchange import policy
from exchange.bus import Bus, BusRecord, TopicPartition
from exchange.envelope import to_records
from exchange.errors import ExchangeError
from exchange.metrics import Metrics
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
        poll_interval_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._metrics = metrics or Metrics(process=False)
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        # Rows committed by other replicas wake it too (PostgreSQL NOTIFY).
        store.on_outbox(self.wake)
        self._known_topics: set[str] = set()
        self.published = 0
        # Whether this process held the relay lease at its last look (logged on change).
        self.leading: bool | None = None

    def wake(self) -> None:
        """Called after a commit: there is something to publish."""
        self._wakeup.set()

    async def run(self) -> None:
        """Publish until cancelled; bus errors are logged and retried with backoff."""
        backoff = 0.1
        while True:
            try:
                while await self.flush_once():
                    pass
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except ExchangeError as exc:
                # The store or the bus is unreachable (health says so too): one line,
                # no traceback, and fewer of them as the backoff grows.
                log.warning("relay: publishing failed (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except Exception:
                log.exception("relay: publishing failed; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            with contextlib.suppress(TimeoutError):
                # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation
                # that arrives as the wait ends (a wake-up at shutdown), and the
                # server's stop() would wait for this task forever.
                async with asyncio.timeout(self._poll_interval_s):
                    await self._wakeup.wait()
            self._wakeup.clear()

    async def flush_once(self) -> int:
        """Publish one batch of pending rows; returns how many rows it published.

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
        rows = await self._store.pending_outbox(self._batch_size)
        self._metrics.relay_pass(rows)
        if not rows:
            return 0
        # Audiences that exclude kinds of partner fan out to partner topics (policy.topics_for).
        partners = (
            await self._store.list_partners()
            if any(r.audience.excluded_kinds for r in rows)
            else []
        )
        records: list[BusRecord] = []
        for row in rows:
            records.extend(to_records(row, policy.topics_for(row.audience, partners)))
        new_topics = {r.topic for r in records} - self._known_topics
        if new_topics:
            await self._bus.ensure_topics(sorted(new_topics))
            self._known_topics |= new_topics
        landed = await self._bus.publish(records)
        positions: dict[TopicPartition, int] = {}
        for tp, offset in landed:
            positions[tp] = max(positions.get(tp, 0), offset + 1)
        await self._store.mark_published([r.seq for r in rows], positions)
        self._metrics.relayed(rows)
        self.published += len(rows)
        return len(rows)
