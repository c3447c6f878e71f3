"""The state of a subscription, shared by the sync and async clients: what was
delivered, where to resume, and whether a failed stream is reopened.

A subscription reopens its stream (``reconnect=True``) when it ends with
``UNAVAILABLE``: the exchange restarted, the network was cut, nobody listens yet,
or the exchange asked the subscriber to resume from its last cursor. It resumes
from the cursor of the last delivery handed out (or the cursor of the last batch,
which also covers objects read but filtered out), so nothing is missed and
nothing repeated. Before the first message, it resumes from the start the
caller asked for. Any other failure is raised.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from exchange_protocol.pb import exchange_pb2 as pb

from exchange_client._errors import ExchangeError, from_rpc_error
from exchange_client._models import Delivery
from exchange_client._retry import UNARY_ATTEMPTS, Backoff, is_retryable

__all__ = ["FeedState", "Reconnect", "ReconnectCallback"]

ReconnectCallback = Callable[[int, ExchangeError], object]
"""``on_reconnect(attempt, error)``: called before each wait to reopen a stream;
``attempt`` counts from 1 since the last message received."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a subscription recovers from a lost stream."""

    enabled: bool = True
    backoff: Backoff | None = None
    on_reconnect: ReconnectCallback | None = None


class FeedState:
    """Deliveries received but not yet handed out, the resume point, the retry count."""

    def __init__(
        self,
        request: pb.SubscribeRequest,
        *,
        target: str,
        reconnect: Reconnect,
        timeout: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request = request
        self.target = target
        self.reconnect = reconnect
        self.backoff = reconnect.backoff or Backoff()
        self.clock = clock
        self.deadline = None if timeout is None else clock() + timeout
        self.last_cursor: str | None = request.cursor or None
        self.pending: collections.deque[Delivery] = collections.deque()
        self.batch_cursor = ""
        self.failures = 0  # failed attempts since the last message
        self.received = False  # any message on any stream of this subscription
        self.reconnects = 0  # streams reopened

    # -- what the caller sees ---------------------------------------------------------

    def take(self) -> Delivery | None:
        """The next delivery received and not yet handed out, moving the resume point."""
        if not self.pending:
            return None
        delivery = self.pending.popleft()
        if delivery.cursor:
            self.last_cursor = delivery.cursor
        if not self.pending and self.batch_cursor:
            # The batch cursor also covers objects read but filtered out after it.
            self.last_cursor = self.batch_cursor
        return delivery

    def receive(self, response: pb.SubscribeResponse) -> None:
        self.received = True
        self.failures = 0
        self.batch_cursor = response.cursor
        self.pending.extend(Delivery._from_pb(d) for d in response.deliveries)
        if not self.pending and response.cursor:
            # A cursor-only message: nothing to deliver, but resume from here.
            self.last_cursor = response.cursor

    def clear(self) -> None:
        self.pending.clear()

    # -- opening and reopening -------------------------------------------------------

    def next_request(self) -> pb.SubscribeRequest:
        """The request that resumes right after everything handed out so far."""
        if self.last_cursor is None:
            return self.request
        request = pb.SubscribeRequest()
        request.CopyFrom(self.request)
        request.cursor = self.last_cursor  # replaces from_beginning (a oneof)
        return request

    def timeout(self) -> float | None:
        """What is left of the subscription's ``timeout`` for the next stream."""
        if self.deadline is None:
            return None
        return max(self.deadline - self.clock(), 0.001)

    def after_failure(self, error: grpc.RpcError) -> float:
        """How long to wait before reopening the stream after ``error``.

        Raises the matching :class:`ExchangeError` when the failure is final: not
        ``UNAVAILABLE``; or, without ``reconnect``, after the stream was established
        or after a few attempts to open it; or when the wait would pass the deadline.
        """
        self.batch_cursor = ""
        failure = from_rpc_error(error, self.target)
        if not is_retryable(error):
            raise failure
        if not self.reconnect.enabled and (self.received or self.failures + 1 >= UNARY_ATTEMPTS):
            raise failure
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        if self.deadline is not None and self.clock() + delay >= self.deadline:
            raise failure
        if self.reconnect.on_reconnect is not None:
            self.reconnect.on_reconnect(self.failures, failure)
        self.reconnects += 1
        return delay
