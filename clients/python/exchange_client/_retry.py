"""When to try a call again, and how long to wait first: one policy for both clients.

Only ``UNAVAILABLE`` is retried (the exchange restarting, a network cut, nobody
listening yet), and only for calls that may safely run twice: look-ups,
opening a subscription, audit queries. A submission is never retried: a second
attempt could report "duplicate" for what the first one accepted.

The waits are exponential backoff with full jitter: attempt ``n`` waits a
uniformly random time between 0 and ``min(max_backoff, 0.1 * 2 ** (n - 1))``.
Nothing here sleeps; the clients do, each its own way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

__all__ = [
    "INITIAL_BACKOFF",
    "UNARY_ATTEMPTS",
    "Backoff",
    "UnaryRetry",
    "is_retryable",
    "jitter",
    "unary_retry",
]

INITIAL_BACKOFF = 0.1
UNARY_ATTEMPTS = 4
"""How many times an idempotent call is tried in all (within its deadline)."""
UNARY_MAX_BACKOFF = 2.0

_system_random = random.SystemRandom()
jitter: Callable[[], float] = _system_random.random
"""A uniform random number in [0, 1): the jitter of every wait."""


def is_retryable(error: grpc.RpcError) -> bool:
    """True for a failure that trying again may cure: ``UNAVAILABLE`` only.

    Authentication, permission and invalid-argument errors, and an exceeded
    deadline (the caller's own limit), are final.
    """
    code = getattr(error, "code", None)
    try:
        status = code() if callable(code) else None
    except Exception:  # noqa: BLE001 - an error without a readable status is not retried
        return False
    return status is grpc.StatusCode.UNAVAILABLE


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter: ``delay(n)`` for the ``n``-th retry (1-based)."""

    initial: float = INITIAL_BACKOFF
    maximum: float = 30.0
    random: Callable[[], float] = field(default=jitter)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum <= 0:
            raise ValueError("backoff times must be positive seconds")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry ``attempt``: the initial wait doubled, capped."""
        exponent = min(max(attempt, 1) - 1, 62)
        return float(min(self.maximum, self.initial * 2.0**exponent))

    def delay(self, attempt: int) -> float:
        return self.random() * self.ceiling(attempt)


@dataclass(slots=True)
class UnaryRetry:
    """The attempts of one idempotent call: the timeout each may use, the wait between them.

    ``timeout`` bounds all attempts together (``None``: only ``attempts`` does).
    """

    timeout: float | None
    attempts: int = UNARY_ATTEMPTS
    backoff: Backoff = field(default_factory=lambda: Backoff(maximum=UNARY_MAX_BACKOFF))
    clock: Callable[[], float] = time.monotonic
    attempt: int = 0
    _deadline: float | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None:
            self._deadline = self.clock() + self.timeout

    def remaining(self) -> float | None:
        """The timeout for the next attempt (what is left of the call's)."""
        self.attempt += 1
        if self._deadline is None:
            return None
        return max(self._deadline - self.clock(), 0.001)

    def next_delay(self, error: grpc.RpcError) -> float | None:
        """How long to wait before trying again after ``error``; ``None``: give up."""
        if not is_retryable(error) or self.attempt >= self.attempts:
            return None
        delay = self.backoff.delay(self.attempt)
        if self._deadline is not None and self.clock() + delay >= self._deadline:
            return None
        return delay


def unary_retry(
    timeout: float | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    random: Callable[[], float] = jitter,
) -> UnaryRetry:
    """The retry plan of one idempotent call whose attempts share ``timeout``."""
    return UnaryRetry(
        timeout, backoff=Backoff(maximum=UNARY_MAX_BACKOFF, random=random), clock=clock
    )
