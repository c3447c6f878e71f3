"""The one error tree of the exchange.

Pipeline modules raise these; ``services._status`` maps them to gRPC status
codes in one place. Every message says what was wrong and what was expected,
in words a partner's engineer can act on. Messages never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ExchangeError",
    "InvalidArgument",
    "InvalidBundle",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ResumeRequested",
    "StoreFull",
    "Unauthenticated",
    "Unavailable",
]


class ExchangeError(Exception):
    """Base of every error the exchange reports to a caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ExchangeError):
    """The request itself is malformed (a bad cursor, an unknown option)."""


class InvalidBundle(InvalidArgument):
    """The submitted bundle as a whole cannot be processed (not JSON, too large, too deep)."""


class Unauthenticated(ExchangeError):
    """No credential, or one the exchange does not know."""


class PermissionDenied(ExchangeError):
    """Authenticated, but not allowed to do this."""


class NotFound(ExchangeError):
    """The thing asked for does not exist (or the caller may not know it exists)."""


class AlreadyExists(ExchangeError):
    """A unique thing (a partner identity, a name) is already registered."""


class ResourceExhausted(ExchangeError):
    """A server limit was reached (open streams, rate); retry later."""


class Unavailable(ExchangeError):
    """A dependency (store, bus) is not reachable right now; retry later."""


class ResumeRequested(Unavailable):
    """Not a failure: a Subscribe stream must be reopened at once from the subscriber's
    last cursor (its topics changed). ``reason`` goes out as the value of the trailing
    metadata ``exchange_protocol.subscribe.RESUME_KEY``, so that clients can tell it
    from an outage without reading the message."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreFull(Unavailable):
    """The store has no room left (its disk, or the database's, is full): nothing of
    the call was stored; retry later. Health says NOT_SERVING until writes succeed."""
