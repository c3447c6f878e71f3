"""Logging: text for people, JSON lines for log collectors, each line with the
request and the partner it belongs to.

The ids live in ``contextvars``: ``REQUEST_ID`` is set for every gRPC call by the
call-log interceptor (exchange/services/_logging.py), ``PARTNER_ID`` by
``Authenticator.authenticate`` once the caller is known. A filter on the handler
copies them onto every record, so any ``log.info`` made while serving a call, in any
module, carries them; records made elsewhere (the relay, start-up) carry null.

What is never logged: tokens or other credentials, metadata values other than
``x-request-id``, object bodies. Modules log ids of objects at most.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from exchange.config import LoggingSettings

__all__ = [
    "PARTNER_ID",
    "REQUEST_ID",
    "TEXT_FORMAT",
    "ContextFilter",
    "configure_logging",
    "json_formatter",
]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "exchange_request_id", default=None
)
PARTNER_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "exchange_partner_id", default=None
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# JSON keys: the LogRecord attribute on the left is written under the name on the right.
_JSON_FIELDS = ("levelname", "name", "message", "request_id", "partner_id")
_RENAMED = {"levelname": "level", "name": "logger", "exc_info": "exception"}


class ContextFilter(logging.Filter):
    """Puts the current request and partner ids on each record (unless the record
    already has them, e.g. from ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        if not hasattr(record, "partner_id"):
            record.partner_id = PARTNER_ID.get()
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message,
    request_id, partner_id, plus any ``extra`` fields and ``exception``."""
    return JsonFormatter(
        list(_JSON_FIELDS),
        rename_fields=dict(_RENAMED),
        timestamp="time",
        json_ensure_ascii=False,
    )


# Marks the handler configure_logging installed, so that a second call replaces it.
_OURS = "_exchange_handler"


def configure_logging(
    settings: LoggingSettings, *, stream: IO[str] | None = None
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as text or JSON lines,
    at ``settings.level``. Replaces the handler an earlier call installed; returns
    the new one."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if settings.format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _OURS, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    return handler
