"""Which copies were erased, per process: so that records of erased versions still on
the bus are not delivered.

A tombstone removes an erased copy from the embedded bus at once, and from a Kafka
topic when compaction runs (minutes to days later). Until then a stream reading
history, or the live tail holding records read before the erasure, would hand out
the erased body. ``ErasedCopies`` holds, for every erased copy (object id, the
copy's partner), the version key of its newest erased version; a record of that copy
whose version is not newer is held back. A version its creator publishes after the
erasure is newer, and flows as usual.

Loaded at start (``store.erased_copies(0)``), then refreshed incrementally
(``erased_copies(last id)``): when this process erases (the Erase servicer calls
``refresh``), when its relay publishes erasures, and every ``poll_s`` for erasures
made by another process (the operator's CLI on the data directory, a replica). What
it holds is a few dozen bytes per erased copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from exchange._tasks import supervise
from exchange.errors import ExchangeError
from exchange.model import Erasure, StoredObject, version_key
from exchange.store import ObjectStore

__all__ = ["ErasedCopies"]

log = logging.getLogger(__name__)


class ErasedCopies:
    def __init__(self, store: ObjectStore, *, poll_s: float = 1.0) -> None:
        self._store = store
        self._poll_s = poll_s
        # (object id, copy partner) -> version key of the newest erased version.
        self._newest: dict[tuple[str, str], str] = {}
        self._last_id = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._newest)

    @property
    def copies(self) -> dict[tuple[str, str], str]:
        """(object id, copy partner) -> the version key of its newest erased version:
        the one dict, updated in place (a stream tests it for emptiness per record
        without a call)."""
        return self._newest

    async def start(self) -> None:
        """Load every erasure so far, then follow new ones every ``poll_s``."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="erased-copies")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self) -> None:
        """Take in the erasures made since the last look (one cheap query)."""
        async with self._lock:
            rows = await self._store.erased_copies(self._last_id)
            for erasure_id, object_id, partner_id, newest in rows:
                self._note(object_id, partner_id, newest)
                self._last_id = max(self._last_id, erasure_id)

    def add(self, erasure: Erasure) -> None:
        """Take in ``erasure`` now (a stream read its tombstone: the records of the copy
        it may read next, from another topic, are held back without waiting for a
        refresh)."""
        if erasure.versions:
            newest = max(version_key(v.version) for v in erasure.versions)
            self._note(erasure.object_id, erasure.submitter, newest)

    def hides(self, stored: StoredObject) -> bool:
        """Is ``stored`` a record of an erased version (not newer than the copy's newest
        erased one)?"""
        if not self._newest:
            return False
        newest = self._newest.get((stored.obj.object_id, stored.submitter))
        return newest is not None and version_key(stored.obj.version) <= newest

    def _note(self, object_id: str, partner_id: str, newest: str) -> None:
        key = (object_id, partner_id)
        held = self._newest.get(key)
        if held is None or newest > held:
            self._newest[key] = newest

    async def _poll(self) -> None:
        async def failed(exc: Exception, delay: float) -> None:
            detail = exc.message if isinstance(exc, ExchangeError) else repr(exc)
            log.warning("erased copies: refreshing failed (%s); retrying in %.1f s", detail, delay)

        async def step() -> None:
            await asyncio.sleep(self._poll_s)
            await self.refresh()

        await supervise(step, failed, first_delay_s=self._poll_s, max_delay_s=10.0)
