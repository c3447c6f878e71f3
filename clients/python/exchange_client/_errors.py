"""The one error tree of the SDK: every failed call raises an :class:`ExchangeError`.

gRPC status codes are mapped here, in one place; a raw ``grpc.RpcError`` never
reaches the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import grpc
from exchange_protocol.subscribe import RESUME_KEY

__all__ = [
    "AuthenticationError",
    "ExchangeError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Unavailable",
    "ValidationError",
]


class ExchangeError(Exception):
    """A call to the exchange failed.

    ``code`` is the gRPC status code name (``"UNAVAILABLE"``, ``"INTERNAL"``...);
    ``details`` is the exchange's one-line explanation. ``str(error)`` is that line.
    """

    def __init__(self, message: str, *, code: str = "UNKNOWN", details: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = message if details is None else details


class AuthenticationError(ExchangeError):
    """The token is missing, unknown or revoked (``UNAUTHENTICATED``)."""


class PermissionDenied(ExchangeError):
    """The token is valid but may not do this (``PERMISSION_DENIED``)."""


class ValidationError(ExchangeError):
    """The request as a whole was refused (``INVALID_ARGUMENT``).

    For a submission: not JSON, not a STIX bundle, too large or nested too deep.
    Problems with single objects are not errors: they are reported in
    :attr:`SubmitResult.rejected`.
    """


class NotFound(ExchangeError):
    """The thing asked for does not exist, or is not visible to the caller (``NOT_FOUND``)."""


class RateLimited(ExchangeError):
    """A server limit was reached (``RESOURCE_EXHAUSTED``); retry later.

    ``retry_after`` is how many seconds the exchange asked the caller to wait,
    or ``None`` when it did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "RESOURCE_EXHAUSTED",
        details: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after


class Unavailable(ExchangeError):
    """The exchange could not be reached or did not answer in time
    (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``); retrying later may succeed.

    ``resume_requested`` is true when the exchange ended a subscription's stream to
    have it reopened at once from its last cursor (e.g. the partner's communities
    changed): no outage. A reconnecting subscription does that by itself; only one
    opened with ``reconnect=False`` raises it.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "UNAVAILABLE",
        details: str | None = None,
        resume_requested: bool = False,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.resume_requested = resume_requested


_BY_CODE: dict[grpc.StatusCode, type[ExchangeError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def _metadata_value(metadata: Iterable[Any] | None, key: str) -> str | None:
    """The value of ``key`` in gRPC metadata (a sequence of ``(key, value)`` pairs)."""
    for item in metadata or ():
        try:
            name, value = item[0], item[1]
        except (TypeError, IndexError, KeyError):
            name, value = getattr(item, "key", None), getattr(item, "value", None)
        if isinstance(name, str) and name.lower() == key:
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            return str(value)
    return None


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``retry-after`` value such as ``"2"`` or ``"0.5"``; ``None`` if unusable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return None
    return seconds


def _call_attr(error: grpc.RpcError, name: str) -> Any:
    method = getattr(error, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # noqa: BLE001 - a failed accessor must not hide the original failure
        return None


# Words gRPC uses when the connection itself failed (rather than the exchange saying so).
_CONNECTION_WORDS = (
    "connect",
    "connection",
    "dns",
    "socket",
    "handshake",
    "ssl",
    "tls",
    "unreachable",
    "no route",
    "name resolution",
)


def _is_connection_failure(details: str) -> bool:
    lowered = details.lower()
    return not details or any(word in lowered for word in _CONNECTION_WORDS)


def from_rpc_error(error: grpc.RpcError, target: str | None = None) -> ExchangeError:
    """Translate a failed gRPC call into the matching :class:`ExchangeError`.

    With ``target``, a connection failure (``UNAVAILABLE`` raised by gRPC itself)
    says which exchange could not be reached.
    """
    status = _call_attr(error, "code")
    code = status if isinstance(status, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    raw_details = _call_attr(error, "details")
    details = " ".join(str(raw_details).split()) if raw_details else ""
    message = details or f"the exchange failed the call with {code.name} and no details"
    if (
        code is grpc.StatusCode.UNAVAILABLE
        and target
        and target not in details
        and _is_connection_failure(details)
    ):
        message = f"cannot reach the exchange at {target}: {details or 'no answer'}"
    cls = _BY_CODE.get(code, ExchangeError)
    if cls is RateLimited:
        retry_after = _parse_retry_after(
            _metadata_value(_call_attr(error, "trailing_metadata"), "retry-after")
        )
        return RateLimited(message, code=code.name, details=details, retry_after=retry_after)
    if cls is Unavailable:
        # The exchange's own mark (exchange_protocol.subscribe), never the wording.
        resume = _metadata_value(_call_attr(error, "trailing_metadata"), RESUME_KEY) is not None
        return Unavailable(message, code=code.name, details=details, resume_requested=resume)
    return cls(message, code=code.name, details=details)
