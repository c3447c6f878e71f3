"""The tests' environment: none of the developer's EXCHANGE_* settings.

The exchange reads EXCHANGE_* variables as settings (exchange.config). Left in a
developer's shell they would silently change what the tests run against (an
EXCHANGE_DATABASE sends the e2e servers, which inherit the environment, to another
database). tests/conftest.py drops them when the session starts and says so in
the header."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

PREFIX = "EXCHANGE_"
# Not settings but knobs of the tests themselves: dropped all the same (a server would
# refuse them as unknown settings), and kept for knob() to read back.
TEST_KNOBS = frozenset({"EXCHANGE_DIFFERENTIAL_EXAMPLES"})
_knobs: dict[str, str] = {}


def drop_exchange_settings(environ: MutableMapping[str, str]) -> list[str]:
    """Remove every EXCHANGE_* variable from ``environ``; their names, sorted."""
    dropped = sorted(name for name in environ if name.startswith(PREFIX))
    for name in dropped:
        if name in TEST_KNOBS:
            _knobs[name] = environ[name]
        del environ[name]
    return dropped


def knob(name: str, default: str) -> str:
    """A test knob (TEST_KNOBS) as the session was started with it."""
    assert name in TEST_KNOBS, name
    return _knobs.get(name, os.environ.get(name, default))


def header(dropped: list[str]) -> str:
    if not dropped:
        return f"environment: no {PREFIX}* variables to drop"
    return f"environment: dropped {', '.join(dropped)} (the tests set their own settings)"
