"""What every ``exchange`` command prints the same way: errors (one prefix, one line),
exit codes, JSON lines, tables (aligned plain text when stdout is not a terminal), and
a quiet end when the reader of stdout goes away."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from collections.abc import Collection, Sequence
from typing import Any, NoReturn

import click
import orjson
from exchange_client import (
    AuthenticationError,
    ExchangeError,
    PermissionDenied,
    RateLimited,
    Unavailable,
)
from rich import box
from rich.console import Console
from rich.table import Table

__all__ = [
    "ExitCode",
    "describe_error",
    "fail",
    "is_terminal",
    "one_line",
    "print_aligned",
    "print_table",
    "quiet_broken_pipe",
    "write_json_line",
]


class ExitCode(enum.IntEnum):
    """The exit statuses of ``exchange``, as docs/ and ``--help`` texts state them."""

    OK = 0
    # A connection, authentication or server error; an object not found.
    ERROR = 1
    # Something was rejected (submit, sighting, revoke), or a wrong command line
    # (click's own usage errors).
    REJECTED = 2
    # Invalid settings (config check, db migrate): the same status, another name.
    INVALID = 2
    # exchange audit verify: the log is not intact.
    NOT_INTACT = 3
    # Ctrl-C.
    INTERRUPTED = 130


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int = ExitCode.ERROR) -> NoReturn:
    """Print ``exchange: MESSAGE`` (on one line) to stderr and exit with ``code``."""
    click.echo(f"exchange: {one_line(message)}", err=True)
    sys.exit(code)


def write_json_line(record: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed (click writes bytes to the binary stream)."""
    click.echo(orjson.dumps(record))


def quiet_broken_pipe() -> NoReturn:
    """The reader went away (``| head``): stop without a traceback."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(ExitCode.OK)


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (tests replace this)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    red_rows: Collection[int] = (),
) -> None:
    """Rows under headers on stdout. On a terminal: a table that wraps long cells to
    the window, ``red_rows`` in red. Otherwise plain lines, columns aligned with two
    spaces and no trailing padding (``cut``/``awk`` friendly; nothing wraps)."""
    if is_terminal(sys.stdout):
        table = Table(
            box=box.SIMPLE, show_edge=False, pad_edge=False, title=title, title_justify="left"
        )
        for header in headers:
            table.add_column(header, overflow="fold")
        for number, row in enumerate(rows):
            table.add_row(*row, style="red" if number in red_rows else None)
        Console(file=sys.stdout).print(table)
        return
    if title:
        click.echo(f"{title}:")
    print_aligned(headers, rows)


def print_aligned(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Rows under headers as plain lines: columns aligned with two spaces, no padding
    at the end of a line, nothing wrapped."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [f"{cell:<{widths[i]}}" for i, cell in enumerate(row[:-1])]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


def describe_error(error: ExchangeError, target: str) -> str:
    """One line saying what went wrong talking to the exchange at ``target``, for stderr."""
    if isinstance(error, AuthenticationError):
        return f"authentication failed: {error} (check --token / EXCHANGE_TOKEN)"
    if isinstance(error, PermissionDenied):
        return f"permission denied: {error}"
    if isinstance(error, Unavailable):
        text = str(error)
        # The SDK's own message usually says it already.
        return (
            text
            if text.startswith("cannot reach")
            else f"cannot reach the exchange at {target}: {text}"
        )
    if isinstance(error, RateLimited):
        wait = f" (retry after {error.retry_after:g} s)" if error.retry_after is not None else ""
        return f"rate limited: {error}{wait}"
    return f"{error.code}: {error}"
