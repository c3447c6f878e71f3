"""The tests' environment: none of the developer's EXCHANGE_* settings.

The exchange reads EXCHANGE_* variables as settings (exchange.config). Left in a
developer's shell they would silently change what the tests run against (an
EXCHANGE_DATABASE sends the e2e servers, which inherit the environment, to another
database). tests/conftest.py drops them when the session starts and says so in
the header."""

from __future__ import annotations

from collections.abc import MutableMapping

PREFIX = "EXCHANGE_"


def drop_exchange_settings(environ: MutableMapping[str, str]) -> list[str]:
    """Remove every EXCHANGE_* variable from ``environ``; their names, sorted."""
    dropped = sorted(name for name in environ if name.startswith(PREFIX))
    for name in dropped:
        del environ[name]
    return dropped


def header(dropped: list[str]) -> str:
    if not dropped:
        return f"environment: no {PREFIX}* variables to drop"
    return f"environment: dropped {', '.join(dropped)} (the tests set their own settings)"
