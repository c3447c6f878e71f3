"""Time options (``--since``, ``--until``): ISO 8601, naive meaning UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

__all__ = ["parse_time"]

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> datetime | None:
    """A click callback: ``2026-11-27`` or ``2026-11-27T10:00:00Z`` (no zone: UTC). A
    date alone as ``--until`` means up to the end of that day."""
    if value is None:
        return None
    text = value.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time such as 2026-11-27 or 2026-11-27T10:00:00Z",
            ctx=ctx,
            param=param,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if param is not None and param.name == "until" and _DATE_ONLY.match(text):
        when += timedelta(days=1)
    return when
