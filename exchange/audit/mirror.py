"""Mirrors the audit log to a bus topic (``audit``) for SIEM tools.

The log in the store is the record; the topic is a copy that may lag. Records:
key = the entry's index, value = its canonical bytes (JSON), headers
``leaf-hash`` (hex) and ``action``. At-least-once: after a crash an entry may be
published again (same key and value).
"""

from __future__ import annotations

import asyncio
import logging

from exchange._tasks import supervise
from exchange.bus import Bus, BusRecord
from exchange.errors import ExchangeError
from exchange.store import Store

__all__ = ["AUDIT_TOPIC", "AuditMirror"]

log = logging.getLogger(__name__)

AUDIT_TOPIC = "audit"


class AuditMirror:
    def __init__(
        self, store: Store, bus: Bus, *, batch_size: int = 1000, poll_interval_s: float = 0.5
    ) -> None:
        self._store = store
        self._bus = bus
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self.mirrored = 0

    async def run(self) -> None:
        """Publish new entries until cancelled; errors are logged and retried."""
        await self._bus.ensure_topics([AUDIT_TOPIC])
        await supervise(
            self._mirror,
            self._failed,
            first_delay_s=self._poll_interval_s,
            max_delay_s=10.0,
            # Unreachable store or bus (health reports it): growing waits. A bug
            # waits one poll interval each time.
            backs_off=lambda exc: isinstance(exc, ExchangeError),
        )

    async def _mirror(self) -> None:
        if not await self.flush_once():
            await asyncio.sleep(self._poll_interval_s)

    async def _failed(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, ExchangeError):
            # One line, no traceback.
            log.warning("audit mirror: publishing failed (%s); retrying in %.1f s", exc, delay)
        else:
            log.error("audit mirror: publishing failed; retrying", exc_info=exc)

    async def flush_once(self) -> int:
        # Replicas sharing the store: one of them mirrors at a time.
        if not await self._store.hold_lease("audit-mirror"):
            return 0
        start = await self._store.audit_mirror_position()
        rows = await self._store.audit_rows(start, self._batch_size)
        if not rows:
            return 0
        await self._bus.publish(
            [
                BusRecord(
                    topic=AUDIT_TOPIC,
                    key=str(row.log_index).encode(),
                    value=row.data,
                    headers=(
                        ("leaf-hash", row.leaf_hash.hex().encode()),
                        ("action", row.action.encode()),
                    ),
                )
                for row in rows
            ]
        )
        await self._store.set_audit_mirror_position(rows[-1].log_index + 1)
        self.mirrored += len(rows)
        return len(rows)
