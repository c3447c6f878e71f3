"""TAXII error resources: the one place an error becomes an HTTP status and body."""

from __future__ import annotations

from exchange.errors import (
    ExchangeError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = ["AUTHENTICATE", "TaxiiError", "error_body", "taxii_error_of", "title_of"]

# What a 401 offers (RFC 9110): HTTP Basic (user = partner id, password = token) or Bearer.
AUTHENTICATE = 'Basic realm="exchange", Bearer realm="exchange"'

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# The exchange's error tree as HTTP statuses, most specific first.
_STATUSES: tuple[tuple[type[ExchangeError], int], ...] = (
    (InvalidArgument, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (ResourceExhausted, 429),
    (Unavailable, 503),
)


class TaxiiError(Exception):
    """An HTTP error the TAXII front-end answers with an error resource."""

    def __init__(self, status: int, title: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.title = title
        self.description = description


def taxii_error_of(exc: ExchangeError) -> TaxiiError:
    """The exchange's error tree, as TAXII statuses (as services/_status does for gRPC)."""
    status = next((code for kind, code in _STATUSES if isinstance(exc, kind)), 500)
    return TaxiiError(status, _TITLES[status], exc.message)


def error_body(error: TaxiiError) -> dict[str, str]:
    """The TAXII 2.1 error resource (section 3.6.1): http_status is a string."""
    return {
        "title": error.title,
        "description": error.description,
        "http_status": str(error.status),
    }


def title_of(status: int) -> str:
    return _TITLES.get(status, "Error")
