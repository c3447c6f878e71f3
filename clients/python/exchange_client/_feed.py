"""The state of a subscription, shared by the sync and async clients: what was
delivered, where to resume, and whether a failed stream is reopened.

A subscription reopens its stream (``reconnect=True``) when it ends with
``UNAVAILABLE``: the exchange restarted, the network was cut, or nobody listens
yet. It resumes from the cursor of the last delivery handed out (or the cursor of
the last batch, which also covers objects read but filtered out), so nothing is
missed and nothing repeated. Before the first message, it resumes from the start
the caller asked for. Any other failure is raised.

Two endings are not outages and are handled apart:

- the exchange asks for the stream to be reopened (trailing metadata
  ``exchange-resume``, see ``exchange_protocol.subscribe``; e.g. the partner's
  communities changed): reopened at once, from the same cursor, without backoff
  and without ``on_reconnect`` (a debug log line only), since nothing went wrong;
- with ``connect_timeout``, a subscription whose first stream was never
  established (no first message: the exchange sends one, the start cursor, as
  soon as it accepted the stream) gives up after that long, so that a wrong
  address or a server that is down is reported instead of retried forever.
  Once established, it reconnects for as long as ``reconnect`` says.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from exchange_protocol.pb import exchange_pb2 as pb

from exchange_client._errors import ExchangeError, Unavailable, from_rpc_error
from exchange_client._models import Delivery
from exchange_client._retry import UNARY_ATTEMPTS, Backoff, is_retryable

__all__ = ["FeedState", "Reconnect", "ReconnectCallback"]

log = logging.getLogger(__name__)

# The most the last attempt to open a first stream is given before connect_timeout.
_CONNECT_GRACE = 1.0

ReconnectCallback = Callable[[int, ExchangeError], object]
"""``on_reconnect(attempt, error)``: called before each wait to reopen a lost stream;
``attempt`` counts from 1 since the last message received. Not called when the
exchange asked for the stream to be reopened, nor (with ``connect_timeout``) while
the first stream is being opened."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a subscription recovers from a lost stream."""

    enabled: bool = True
    backoff: Backoff | None = None
    on_reconnect: ReconnectCallback | None = None
    # How long the first stream may take to be established (None: no limit).
    connect_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.connect_timeout is not None and not self.connect_timeout > 0:
            raise ValueError("connect_timeout must be positive seconds, or None")


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
        self.stream_received = False  # any message on the stream open now
        self.reconnects = 0  # streams reopened
        # Set when the first stream is opened (an async subscription opens it at the
        # first read, maybe long after it was made): the bound is on connecting.
        self.connect_deadline: float | None = None

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
        self.stream_received = True
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

    @property
    def connect_timeout(self) -> float:
        return self.reconnect.connect_timeout or 0.0

    def begin_stream(self) -> pb.SubscribeRequest:
        """The request of the stream about to be opened (see :meth:`next_request`)."""
        self.stream_received = False
        limit = self.reconnect.connect_timeout
        if limit is not None and self.connect_deadline is None:
            self.connect_deadline = self.clock() + limit
        return self.next_request()

    def first_message_wait(self) -> float | None:
        """How long the next read may wait while no stream was ever established
        (``None``: as long as it takes): a server that accepts the connection but
        never answers must not hold the subscription past ``connect_timeout``."""
        if self.received or self.connect_deadline is None:
            return None
        return max(self.connect_deadline - self.clock(), 0.0)

    def connect_failed(self, failure: ExchangeError | None = None) -> Unavailable:
        """The error of a first stream not established within ``connect_timeout``;
        ``failure``: the last attempt's, ``None`` when it got no answer at all."""
        text = str(failure) if failure is not None else "no answer"
        prefix = f"cannot reach the exchange at {self.target}"
        if not text.startswith("cannot reach"):
            text = f"{prefix}: {text}"
        details = failure.details if failure is not None else "no answer"
        return Unavailable(
            f"{text} (gave up after {self.connect_timeout:g} s; is the server running?)",
            code=failure.code if failure is not None else "UNAVAILABLE",
            details=details,
        )

    def timeout(self) -> float | None:
        """What is left of the subscription's ``timeout`` for the next stream."""
        if self.deadline is None:
            return None
        return max(self.deadline - self.clock(), 0.001)

    def after_failure(self, error: grpc.RpcError) -> float:
        """How long to wait before reopening the stream after ``error`` (0: at once).

        Raises the matching :class:`ExchangeError` when the failure is final: not
        ``UNAVAILABLE``; or, without ``reconnect``, after the stream was established
        or after a few attempts to open it; or when the wait would pass the deadline;
        or, with ``connect_timeout``, when no stream was established within it.
        """
        self.batch_cursor = ""
        failure = from_rpc_error(error, self.target)
        if not is_retryable(error):
            raise failure
        resume = isinstance(failure, Unavailable) and failure.resume_requested
        if resume and self.reconnect.enabled and self.stream_received:
            # Asked by the exchange, not lost: no backoff, nobody alarmed. Only a stream
            # that was established gets this; a refusal at opening is backed off below,
            # so that a server repeating it cannot make the client spin.
            log.debug("the exchange asked to resume the subscription: %s", failure)
            self.reconnects += 1
            return 0.0
        if not self.reconnect.enabled and (self.received or self.failures + 1 >= UNARY_ATTEMPTS):
            raise failure
        self.failures += 1
        delay = self.backoff.delay(self.failures)
        connect_deadline = None if self.received else self.connect_deadline
        connecting = connect_deadline is not None
        if connect_deadline is not None:
            # The last attempt starts a little before the bound, leaving it time to be
            # answered: giving up then reports why it failed (connection refused, bad
            # address...), not merely that time ran out.
            grace = min(_CONNECT_GRACE, self.connect_timeout / 10)
            left = connect_deadline - self.clock()
            if left <= grace:
                raise self.connect_failed(failure)
            delay = min(delay, left - grace)
        if self.deadline is not None and self.clock() + delay >= self.deadline:
            raise failure
        if connecting:
            log.debug("opening the subscription, attempt %d failed: %s", self.failures, failure)
        elif self.reconnect.on_reconnect is not None:
            self.reconnect.on_reconnect(self.failures, failure)
        self.reconnects += 1
        return delay
