"""The ``exchange`` command: run the server, manage partners, submit and watch the feed,
review the audit log.

One module per command group: ``ops`` (``db``, ``config``, ``health``), ``admin``
(``partner``, ``community``, ``token``), ``audit``, and the partner commands
(``submit``, ``subscribe``, ``get``, ``sighting``, ``revoke``), which are built on
the SDK alone; ``_main`` is the group and ``serve``. Shared pieces: ``_options``
(command-line options), ``_output`` (the one error prefix, exit codes, JSON lines),
``_time`` (time options).
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    # ``main`` (the console script's entry point) is loaded on first use, so that
    # importing one partner command does not load the server.
    if name == "main":
        from exchange.cli._main import main  # noqa: PLC0415

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
