"""How much one partner may have in progress at once.

A partner's runaway batch job or compromised laptop can open calls as fast as the
network allows; each call holds memory and a share of the cores. A ``PartnerQuota``
counts a partner's calls of one kind in progress and refuses the next one past the
limit at once, with RESOURCE_EXHAUSTED naming the setting, so that what one partner
sends can never take the room the others need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator

from exchange.errors import ResourceExhausted
from exchange.metrics import Metrics

__all__ = ["NO_TOKEN", "PartnerQuota"]

# Counted as one partner: the calls of callers not signed in by a valid token (an
# unknown, revoked or expired one, or none: a client certificate alone).
NO_TOKEN = ""


class PartnerQuota:
    """At most ``limit`` units of ``what`` in progress per partner: calls (one unit
    each) or bytes of bundles. One thing in progress alone is always let through,
    however large (a bundle over the limit in bytes is refused elsewhere, by size).
    ``setting`` names the limit in refusals and in ``exchange_limit_refusals_total``;
    ``hint`` says what to do about it.

    With ``at_once``, only that many calls of a partner run at once (``enter``); the
    others in progress wait their turn, in order: a waiting call costs next to nothing
    (its request is not read yet), a running one may hold a whole bundle."""

    def __init__(
        self,
        limit: int,
        *,
        setting: str,
        what: str,
        metrics: Metrics,
        at_once: int | None = None,
        hint: str = "wait for one to finish, then retry",
    ) -> None:
        self.limit = limit
        self._setting = setting
        self._what = what
        self._metrics = metrics
        self._at_once = at_once or limit
        self._hint = hint
        self._in_progress: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def in_progress(self, partner_id: str) -> int:
        return self._in_progress.get(partner_id, 0)

    @contextlib.contextmanager
    def hold(self, partner_id: str, amount: int = 1) -> Iterator[None]:
        """``amount`` more in progress for the block; ResourceExhausted past the limit."""
        self.acquire(partner_id, amount)
        try:
            yield
        finally:
            self.release(partner_id, amount)

    def acquire(self, partner_id: str, amount: int = 1) -> None:
        """``amount`` more in progress (``release`` it once done); ResourceExhausted
        if that would take the partner past the limit."""
        held = self._in_progress.get(partner_id, 0)
        if held and held + amount > self.limit:
            self._metrics.limit_refusals.labels(self._setting).inc()
            raise ResourceExhausted(
                f"{_who(partner_id)} already {_have(partner_id)} {held:,} {self._what} in"
                f" progress, the most one partner may have ({self._setting} = {self.limit:,});"
                f" {self._hint}"
            )
        self._in_progress[partner_id] = held + amount

    def release(self, partner_id: str, amount: int = 1) -> None:
        left = self._in_progress[partner_id] - amount
        if left:
            self._in_progress[partner_id] = left
        else:
            del self._in_progress[partner_id]

    async def enter(self, partner_id: str) -> None:
        """One more call in progress (``leave`` once it ended), once it is its turn;
        ResourceExhausted at once past the limit."""
        self.acquire(partner_id)
        running = self._running.get(partner_id, 0)
        if running < self._at_once:
            self._running[partner_id] = running + 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(partner_id, deque()).append(turn)
        try:
            await turn  # ``leave`` hands its place over
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._pass_turn(partner_id)  # it had been given the turn: give it on
            else:
                self._waiting[partner_id].remove(turn)
                if not self._waiting[partner_id]:
                    del self._waiting[partner_id]
            self.release(partner_id)
            raise

    def leave(self, partner_id: str) -> None:
        self.release(partner_id)
        self._pass_turn(partner_id)

    def _pass_turn(self, partner_id: str) -> None:
        """A running call of ``partner_id`` ended: its place goes to the next waiting."""
        waiting = self._waiting.get(partner_id)
        while waiting:
            turn = waiting.popleft()
            if not waiting:
                del self._waiting[partner_id]
            if not turn.done():
                turn.set_result(None)
                return
            waiting = self._waiting.get(partner_id)
        left = self._running[partner_id] - 1
        if left:
            self._running[partner_id] = left
        else:
            del self._running[partner_id]


def _who(partner_id: str) -> str:
    return "callers without a valid token" if partner_id == NO_TOKEN else f"partner {partner_id}"


def _have(partner_id: str) -> str:
    return "have" if partner_id == NO_TOKEN else "has"
