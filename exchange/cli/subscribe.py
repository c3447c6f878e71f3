"""``exchange subscribe``: the partner's feed as JSON lines or readable lines, from a
cursor kept in a file, a time, the beginning or now."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from exchange_client import (
    Delivery,
    ErasureNotice,
    ExchangeError,
    Subscription,
    Unavailable,
)

from exchange.cli import _output
from exchange.cli._output import (
    ExitCode,
    describe_error,
    fail,
    one_line,
    quiet_broken_pipe,
    write_json_line,
)
from exchange.cli._partner import _connect, _connection_options
from exchange.cli._time import parse_time

__all__ = ["subscribe"]


def _notice_record(delivery: Delivery, notice: ErasureNotice) -> dict[str, Any]:
    return {
        "cursor": delivery.cursor,
        "submitter": delivery.submitter,
        "submitter_identity": delivery.submitter_identity,
        "object_id": delivery.object_id,
        "object_type": delivery.object_type,
        "erased": {
            "versions": list(notice.versions),
            "reason": notice.reason,
            "erased_at": notice.erased_at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "referenced_by": list(notice.referenced_by),
        },
    }


def _notice_line(delivery: Delivery, notice: ErasureNotice) -> str:
    """One readable line: when, ERASED, type, id, submitter, reason, versions."""
    when = notice.erased_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    parts = [
        when,
        click.style(f"{'ERASED':<16}", fg="red", bold=True),
        f"{delivery.object_type:<9}",
        delivery.object_id,
        f"by {delivery.submitter}",
        f"reason {notice.reason}",
        f"versions {', '.join(v or '(observable)' for v in notice.versions)}",
        "delete your copy",
    ]
    if notice.referenced_by:
        parts.append(f"referred to by {', '.join(notice.referenced_by)}")
    return "  ".join(parts)


def _delivery_record(delivery: Delivery) -> dict[str, Any]:
    accepted_at = delivery.accepted_at.isoformat(timespec="microseconds")
    return {
        "cursor": delivery.cursor,
        "submitter": delivery.submitter,
        "submitter_identity": delivery.submitter_identity,
        "tlp": delivery.tlp,
        "accepted_at": accepted_at.replace("+00:00", "Z"),
        "object_id": delivery.object_id,
        "object_type": delivery.object_type,
        "version": delivery.version,
        "object": orjson.loads(delivery.object_json),
    }


_TLP_COLOURS = {
    "clear": "white",
    "green": "green",
    "amber": "yellow",
    "amber+strict": "yellow",
    "red": "red",
}


def _pretty_line(delivery: Delivery) -> str:
    """One readable line: time, TLP, type, id, submitter, and what the object says."""
    obj = delivery.object
    when = delivery.accepted_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    tlp = click.style(
        f"TLP:{delivery.tlp.upper():<12}", fg=_TLP_COLOURS.get(delivery.tlp), bold=True
    )
    parts = [when, tlp, f"{delivery.object_type:<9}", delivery.object_id]
    parts.append(f"by {delivery.submitter}")
    if obj.get("revoked") is True:
        parts.append(click.style("REVOKED", fg="red", bold=True))
    if delivery.object_type == "indicator" and obj.get("pattern"):
        parts.append(one_line(str(obj["pattern"])))
    elif delivery.object_type == "sighting" and obj.get("sighting_of_ref"):
        parts.append(f"sighting of {obj['sighting_of_ref']} (count {obj.get('count', 1)})")
    elif obj.get("name"):
        parts.append(one_line(str(obj["name"])))
    return "  ".join(parts)


class _CursorFile:
    """Where a ``--cursor-file`` subscription stopped, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: str | None = None

    def read(self) -> str | None:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        self._written = text or None
        return self._written

    def write(self, cursor: str | None) -> None:
        if not cursor or cursor == self._written:
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(cursor + "\n", encoding="utf-8")
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        self._written = cursor


# The names --format takes; pretty and jsonl are the older names, still accepted.
_FORMATS = {"text": "text", "json": "json", "pretty": "text", "jsonl": "json"}


def _default_format(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if value is not None:
        return _FORMATS[value.lower()]
    return "text" if _output.is_terminal(sys.stdout) else "json"


def _start(
    ctx: click.Context, cursor: str | None, cursor_file: str | None, from_beginning: bool
) -> tuple[_CursorFile | None, str | None]:
    """The cursor file, and the cursor to start from (--cursor, or the file's)."""
    if cursor and from_beginning:
        raise click.UsageError("--cursor and --from-beginning exclude each other")
    if cursor and cursor_file:
        raise click.UsageError("--cursor and --cursor-file exclude each other")
    if not cursor_file:
        return None, cursor
    saved = _CursorFile(Path(cursor_file))
    try:
        return saved, saved.read()
    except (OSError, UnicodeDecodeError) as err:
        fail(f"cannot read --cursor-file {cursor_file}: {err}")


def _print_delivery(ctx: click.Context, delivery: Delivery, output_format: str) -> None:
    if (notice := delivery.erased) is not None:
        if output_format == "text":
            click.echo(_notice_line(delivery, notice))
        else:
            write_json_line(_notice_record(delivery, notice))
        return
    try:
        if output_format == "text":
            click.echo(_pretty_line(delivery))
        else:
            write_json_line(_delivery_record(delivery))
    except ValueError:  # not JSON
        fail(f"the exchange sent {delivery.object_id} as invalid JSON")


def _deliveries(subscription: Iterable[Delivery], since: datetime | None) -> Iterator[Delivery]:
    for delivery in subscription:
        # A notice has no acceptance time: it is about something received earlier.
        if since is None or delivery.erased is not None or delivery.accepted_at >= since:
            yield delivery


@click.command(
    epilog="""\b
Examples:
  exchange subscribe --from-beginning --type indicator --limit 100
  exchange subscribe --since 2026-11-01 --format text --label trafficking:recruitment
  exchange subscribe --from-beginning --cursor-file feed.cursor >> feed.jsonl
  exchange subscribe --cursor "$(tail -n1 feed.jsonl | jq -r .cursor)" >> feed.jsonl
"""
)
@_connection_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(list(_FORMATS), case_sensitive=False),
    callback=_default_format,
    help="text: one readable line per delivery; json: one JSON object per line (JSON"
    " lines). Default: text when stdout is a terminal, json otherwise (a pipe, a file)."
    " pretty and jsonl are older names of text and json.",
)
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Start with the first object ever accepted (default: only new objects).",
)
@click.option(
    "--since",
    metavar="TIME",
    callback=parse_time,
    help="Only objects accepted at or after TIME (ISO 8601, e.g. 2026-11-27 or "
    "2026-11-27T10:00:00Z; naive means UTC): reads from the beginning and skips older ones.",
)
@click.option(
    "--cursor",
    metavar="CURSOR",
    help="Resume right after the delivery that carried CURSOR.",
)
@click.option(
    "--cursor-file",
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    help="Start from the cursor saved in FILE, if it exists, and save the cursor there "
    "after every delivery (replaced atomically): run the same command again to continue "
    "where it stopped.",
)
@click.option(
    "--type",
    "types",
    metavar="TYPE",
    multiple=True,
    help="Only objects of this STIX type (e.g. indicator); repeatable.",
)
@click.option(
    "--label",
    "labels",
    metavar="LABEL",
    multiple=True,
    help="Only objects carrying this label; repeatable (any one matches).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    metavar="N",
    help="Exit after N deliveries (default: run until interrupted).",
)
@click.option(
    "--no-reconnect",
    is_flag=True,
    help="Exit (1) when the connection is lost instead of reconnecting with backoff.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Exit (1) when no stream could be opened within SECONDS (wrong address, "
    "server down). Once a stream was open, a lost connection is retried without limit.",
)
@click.pass_context
def subscribe(
    ctx: click.Context,
    *,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    output_format: str,
    from_beginning: bool,
    since: datetime | None,
    cursor: str | None,
    cursor_file: str | None,
    types: tuple[str, ...],
    labels: tuple[str, ...],
    limit: int | None,
    no_reconnect: bool,
    connect_timeout: float,
) -> None:
    """Stream the objects you may see, as they are accepted.

    --format json (the default when stdout is not a terminal) writes one JSON
    line per delivery: cursor, submitter, submitter_identity, tlp, accepted_at,
    object_id, object_type, version and the STIX object itself. --format text
    (the default on a terminal) writes one readable line: time, TLP, type, id,
    submitter and, for an indicator, its pattern.

    An erasure notice (an object you may have received was erased: delete your
    copy) is one line too: in json, cursor, submitter, submitter_identity,
    object_id, object_type and "erased": {versions, reason, erased_at,
    referenced_by}, with no "object"; in text, the time, ERASED, the id, the
    reason and the versions.

    The first connection is tried for --connect-timeout seconds, then the
    command exits (1) with one line on stderr. Once the stream was open, a lost
    connection is retried with backoff without limit (saying so on stderr), and
    the feed resumes after the last delivery: nothing is missed or repeated.
    When the exchange asks for the stream to be reopened (your communities
    changed) it is reopened at once, silently. Ctrl-C stops (exit 130).
    """
    saved, cursor = _start(ctx, cursor, cursor_file, from_beginning)
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)

    def reconnecting(attempt: int, error: BaseException) -> None:
        click.echo(f"reconnecting (attempt {attempt}): {one_line(str(error))}", err=True)

    count = 0
    subscription: Subscription | None = None
    try:
        with client:
            subscription = client.subscribe(
                types=types,
                labels=labels,
                cursor=cursor or None,
                from_beginning=not cursor and (from_beginning or since is not None),
                reconnect=not no_reconnect,
                on_reconnect=None if no_reconnect else reconnecting,
                connect_timeout=connect_timeout,
            )
            for delivery in _deliveries(subscription, since):
                _print_delivery(ctx, delivery, output_format)
                if saved is not None:
                    saved.write(subscription.last_cursor or delivery.cursor)
                count += 1
                if limit is not None and count >= limit:
                    break
    except Unavailable as err:
        if err.resume_requested:  # only with --no-reconnect: not an outage
            fail(f"the exchange ended the stream: {err}")
        fail(describe_error(err, client.target))
    except ExchangeError as err:
        fail(describe_error(err, client.target))
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            quiet_broken_pipe()
        fail(f"cannot write --cursor-file {cursor_file}: {err.strerror or err}")
    except KeyboardInterrupt:
        ctx.exit(ExitCode.INTERRUPTED)
    finally:
        # Objects skipped by --since, or a position the exchange sent without a
        # delivery, count as handled too.
        if saved is not None and subscription is not None:
            with contextlib.suppress(OSError):
                saved.write(subscription.last_cursor)
    ctx.exit(ExitCode.OK)
