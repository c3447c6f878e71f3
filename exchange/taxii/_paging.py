"""Paging: ``next`` is an opaque token over the store's sequence (never a timestamp),
``limit`` is bounded, and TAXII timestamps convert to and from accept times."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime

from exchange.taxii._errors import TaxiiError

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "accepted_from",
    "date_added",
    "decode_next",
    "encode_next",
    "parse_limit",
]

# Items per page: what one page may cost (one store query of this many rows, usually).
MAX_LIMIT = 1000
DEFAULT_LIMIT = 1000
_TOKEN = re.compile(r"n1\.(\d{1,19})")
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z", re.ASCII
)


def encode_next(seq: int) -> str:
    # Opaque to clients: base64 of a versioned position, so that nobody builds one.
    return base64.urlsafe_b64encode(f"n1.{seq}".encode()).decode().rstrip("=")


def decode_next(token: str) -> int:
    bad = TaxiiError(
        400,
        "Bad Request",
        "next is not a token this exchange issued; pass the 'next' of the previous page"
        " unchanged, or leave it out to start from the first page",
    )
    if len(token) > 64:
        raise bad
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (ValueError, binascii.Error):
        raise bad from None
    match = _TOKEN.fullmatch(text)
    if match is None:
        raise bad
    return int(match.group(1))


def parse_limit(value: str | None) -> int:
    """The page size: the client's, at most MAX_LIMIT (a larger one gets MAX_LIMIT, as
    the spec lets a server do); 400 for anything but a positive integer."""
    if value is None:
        return DEFAULT_LIMIT
    # ASCII only: str.isdigit() also takes digits int() refuses ("²").
    if not (value.isascii() and value.isdigit()) or int(value[:12]) < 1:
        raise TaxiiError(
            400,
            "Bad Request",
            f"limit must be a positive integer (at most {MAX_LIMIT} are returned per page);"
            f" got {value[:40]!r}",
        )
    return MAX_LIMIT if len(value) > 9 else min(int(value), MAX_LIMIT)


def date_added(accepted_at: float) -> str:
    """A TAXII timestamp with microsecond precision, truncated (so that ``added_after``
    of a shown value never returns that object again)."""
    micros = int(accepted_at * 1_000_000)
    whole = datetime.fromtimestamp(micros // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{micros % 1_000_000:06d}Z"


def accepted_from(added_after: str) -> float:
    """The earliest accept time strictly after ``added_after`` as ``date_added`` shows
    times (microseconds, truncated)."""
    match = _TIMESTAMP.fullmatch(added_after)
    if match is None:
        raise TaxiiError(
            400,
            "Bad Request",
            "added_after must be a timestamp such as 2026-01-01T00:00:00.000000Z (UTC);"
            f" got {added_after[:60]!r}",
        )
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError as exc:
        raise TaxiiError(400, "Bad Request", f"added_after is not a date: {exc}") from None
    micros = int(moment.timestamp()) * 1_000_000 + int((fraction or "0").ljust(6, "0")[:6])
    return (micros + 1) / 1_000_000
