"""Whether a store has room to write: what both stores do when their disk is full.

A write that fails for lack of space (SQLite's SQLITE_FULL, PostgreSQL's 53100, an
ENOSPC) is refused with ``StoreFull`` (UNAVAILABLE: retry later) and marks the store
full; ``ping`` then fails, so health says NOT_SERVING, until a probe write succeeds
again (each store's ``ping`` probes while the store is full). The operator is told
once when it fills and once when it has room again: a log line each time, and the
``exchange_store_full`` gauge.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from exchange.errors import StoreFull

if TYPE_CHECKING:
    from exchange.metrics import Metrics

__all__ = ["Room"]

log = logging.getLogger(__name__)

# Causes are quoted in the log line: the database's words, kept to one short line.
_CAUSE_CHARS = 300
_REFUSAL = (
    "the exchange cannot store anything right now: its storage is full;"
    " nothing of this call was stored; retry later"
)


class Room:
    """The room state of one store. ``where`` names what fills up, for people: the
    data directory, or the PostgreSQL database (without its password)."""

    def __init__(self, where: str, metrics: Metrics | None = None) -> None:
        self.where = where
        self._metrics = metrics
        # monotonic time the store filled up, None while it has room.
        self._full_since: float | None = None

    @property
    def full(self) -> bool:
        return self._full_since is not None

    def refused(self, cause: BaseException) -> StoreFull:
        """A write failed for lack of space (``cause``): the error for its caller.
        The first one marks the store full and tells the operator."""
        if self._full_since is None:
            self._full_since = time.monotonic()
            if self._metrics is not None:
                self._metrics.store_full.set(1)
            log.warning(
                "store: %s is full (%s): writes are refused with UNAVAILABLE and health"
                " says NOT_SERVING until there is room again",
                self.where,
                _one_line(cause),
            )
        # Partners read this: where the data lives is the operator's business.
        return StoreFull(_REFUSAL)

    def still_full(self, why: str = "") -> StoreFull:
        """What ``ping`` raises while the store is full (the health status's reason)."""
        since = 0.0 if self._full_since is None else time.monotonic() - self._full_since
        return StoreFull(
            f"{self.where} is full{f' ({why})' if why else ''}: writes refused for"
            f" {since:.0f} s; free some space"
        )

    def emptied(self) -> None:
        """A probe write succeeded: the store has room again (told once)."""
        if self._full_since is None:
            return
        lasted = time.monotonic() - self._full_since
        self._full_since = None
        if self._metrics is not None:
            self._metrics.store_full.set(0)
        log.info("store: %s has room again after %.0f s: writes are accepted", self.where, lasted)


def _one_line(cause: BaseException) -> str:
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if len(text) <= _CAUSE_CHARS else f"{text[:_CAUSE_CHARS]}..."
