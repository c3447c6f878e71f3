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
    ) -> None:
        self._store = store
        self._bus = bus
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        self._known_topics: set[str] = set()
        self.published = 0

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
            except Exception:
                log.exception("relay: publishing failed; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_interval_s)
            self._wakeup.clear()

    async def flush_once(self) -> int:
        """Publish one batch of pending rows; returns how many rows it published."""
        rows = await self._store.pending_outbox(self._batch_size)
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
        self.published += len(rows)
        return len(rows)
