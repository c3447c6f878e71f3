"""The partner commands of ``exchange``: ``submit``, ``subscribe``, ``get``,
``sighting`` and ``revoke``: the partner API from a shell.

Built only on the partner SDK (:mod:`exchange_client`), so what these commands
do is exactly what a partner's own code can do. Registered in the ``exchange``
click group by ``exchange.cli``.

Exit codes: 0 success, 1 connection/authentication/server error or object not
found (one line on stderr), 2 something was rejected (``submit``, ``sighting``,
``revoke``) or the command line is wrong, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import orjson
from exchange_client import (
    AuthenticationError,
    Delivery,
    ExchangeClient,
    ExchangeError,
    NotFound,
    PartnerKind,
    PermissionDenied,
    RateLimited,
    RejectedObject,
    SubmitResult,
    Subscription,
    Unavailable,
    ValidationError,
)
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from exchange.cli._options import ca_file_option, cert_file_option, key_file_option, token_option

if TYPE_CHECKING:
    from exchange_client import SubmitProgress, SubmitSummary

__all__ = ["get", "revoke", "sighting", "submit", "subscribe"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REJECTED = 2
EXIT_INTERRUPTED = 130

DEFAULT_TARGET = "127.0.0.1:50051"

# A file with more objects than this is submitted in batches (submit_many), with a
# progress bar; so is any command with more than one file.
LARGE_FILE_OBJECTS = 1_000
BATCH_SIZE = 500

TLP_NAMES = ("clear", "green", "amber", "amber+strict", "red")

_F = TypeVar("_F", bound=Callable[..., Any])


def _connection_options(command: _F) -> _F:
    """The options every command that talks to the exchange shares."""
    options = [
        click.option(
            "--target",
            envvar="EXCHANGE_TARGET",
            default=DEFAULT_TARGET,
            show_default=True,
            show_envvar=True,
            help="Address of the exchange (host:port).",
        ),
        token_option("Your partner API token."),
        ca_file_option("PEM root certificates: connect with TLS (default: plaintext)."),
        cert_file_option(
            "PEM client certificate for mutual TLS (needs --key-file and --ca-file; "
            "then --token is optional)."
        ),
        key_file_option("PEM private key of the client certificate."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _timeout_option(help_text: str) -> Callable[[_F], _F]:
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        default=60.0,
        show_default=True,
        help=help_text,
    )


def _json_option(help_text: str) -> Callable[[_F], _F]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def _describe(error: ExchangeError, target: str) -> str:
    """One line saying what went wrong, for stderr."""
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(ctx: click.Context, message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"error: {_one_line(message)}", err=True)
    ctx.exit(code)


def _connect(
    ctx: click.Context,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> ExchangeClient:
    if (not token or not token.strip()) and not (cert_file or key_file):
        _fail(
            ctx,
            "no API token: pass --token or set EXCHANGE_TOKEN "
            "(or authenticate with a client certificate: --cert-file and --key-file)",
        )
    try:
        return ExchangeClient(
            target=target,
            token=token or "",
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
    except ValueError as err:
        message = str(err)
        for name in ("cert_file", "key_file", "ca_file"):
            message = message.replace(name, "--" + name.replace("_", "-"))
        _fail(ctx, message)
    except OSError as err:
        _fail(ctx, f"cannot read {err.filename or 'a TLS file'}: {err.strerror or err}")


def _write_line(record: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed (click writes bytes to the binary stream)."""
    click.echo(orjson.dumps(record))


def _quiet_broken_pipe(ctx: click.Context) -> NoReturn:
    """The reader went away (``| head``): stop without a traceback."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    ctx.exit(EXIT_OK)


def _is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (tests replace this)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


def _stdout_console() -> Console:
    """A rich console on stdout; not on a terminal: no colours and no wrapping of
    long cells (the width of a pipe is not the reader's)."""
    if _is_terminal(sys.stdout):
        return Console(file=sys.stdout)
    return Console(file=sys.stdout, width=4096, no_color=True, highlight=False)


def _parse_time(
    ctx: click.Context | None, param: click.Parameter | None, value: str | None
) -> datetime | None:
    """An ISO 8601 time option (``2026-11-27``, ``2026-11-27T10:00:00Z``); naive means UTC."""
    if value is None:
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time such as 2026-11-27 or 2026-11-27T10:00:00Z",
            ctx=ctx,
            param=param,
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _non_blank(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """A repeatable name option: each value stripped, none empty."""
    names = tuple(value.strip() for value in values)
    if any(not name for name in names):
        raise click.BadParameter("must not be empty", ctx=ctx, param=param)
    return names


def _object_id_argument(value: str) -> str:
    object_id = value.strip()
    if "--" not in object_id:
        raise click.UsageError(
            f"{value!r} is not a STIX id: OBJECT_ID looks like indicator--<uuid>"
        )
    return object_id


def _audience_options(command: _F) -> _F:
    """--community, --recipient and --exclude-kind (for submit) or the first two."""
    options = [
        click.option(
            "--community",
            "communities",
            metavar="NAME",
            multiple=True,
            callback=_non_blank,
            help="Share TLP:AMBER objects with this community (default: yours); repeatable.",
        ),
        click.option(
            "--recipient",
            "recipients",
            metavar="PARTNER_ID",
            multiple=True,
            callback=_non_blank,
            help="Name a partner as recipient (the only audience of TLP:AMBER+STRICT and "
            "TLP:RED objects); repeatable.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# -- submit ---------------------------------------------------------------


@dataclass
class _Input:
    """One bundle to submit: a file, or what stdin held."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    _objects: list[Any] | None = field(default=None, repr=False)
    _parsed: bool = field(default=False, repr=False)

    def read(self) -> bytes:
        if self.data is None:
            assert self.path is not None
            self.data = self.path.read_bytes()
        return self.data

    def objects(self) -> list[Any] | None:
        """The bundle's objects, or ``None`` when it is not a readable bundle (the
        exchange then says why)."""
        if not self._parsed:
            self._parsed = True
            try:
                doc = orjson.loads(self.read())
            except (orjson.JSONDecodeError, OSError):
                return None
            if isinstance(doc, dict) and isinstance(doc.get("objects"), list):
                self._objects = doc["objects"]
        return self._objects

    def count(self) -> int:
        objects = self.objects()
        return len(objects) if objects is not None else 0

    def forget(self) -> None:
        """Drop what was read (a directory of large files must not all stay in memory)."""
        if self.path is not None:
            self.data = None
        self._objects = None
        self._parsed = False


@dataclass
class _Outcome:
    """What happened to one file."""

    name: str
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[RejectedObject] = field(default_factory=list)
    notices: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    """Why the file (or a batch of it) was refused as a whole."""

    @property
    def ok(self) -> bool:
        return not self.rejected and self.error is None

    def add(self, result: SubmitResult | SubmitSummary) -> None:
        self.accepted.extend(result.accepted)
        self.duplicates.extend(result.duplicates)
        self.rejected.extend(result.rejected)
        self.notices.extend((r.object_id, r.notice) for r in result.results if r.notice)
        error = getattr(result, "error", None)  # a SubmitSummary has batch errors instead
        if isinstance(error, str) and error:
            self.refuse(error)

    def refuse(self, error: str) -> None:
        error = _one_line(error)
        self.error = error if self.error is None else f"{self.error}; {error}"

    def record(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{"object_id": r.object_id, "reason": r.reason} for r in self.rejected],
            "notices": [
                {"object_id": object_id, "notice": notice} for object_id, notice in self.notices
            ],
            "error": self.error,
        }


def _expand(ctx: click.Context, files: Sequence[str]) -> list[_Input]:
    """FILE, DIR (every ``*.json`` in it, sorted, recursive) and ``-`` (stdin, once)."""
    inputs: list[_Input] = []
    stdin_read = False
    for name in files:
        if name == "-":
            if stdin_read:
                raise click.UsageError("'-' (stdin) may be given only once")
            stdin_read = True
            inputs.append(_Input("-", data=sys.stdin.buffer.read()))
            continue
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.json") if p.is_file())
            if not found:
                raise click.UsageError(f"{name}: no *.json file in this directory")
            # Named from the directory given, so the summary stays readable.
            inputs.extend(_Input(str(Path(path.name) / p.relative_to(path)), path=p) for p in found)
        else:
            inputs.append(_Input(name, path=path))
    return inputs


class _Bar:
    """The progress bar on stderr (or nothing): objects done of all, and of the
    current file."""

    def __init__(self, inputs: Sequence[_Input], enabled: bool) -> None:
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._file: TaskID | None = None
        self._done_before = 0
        if not enabled:
            return
        total = 0
        for item in inputs:  # a first pass, only counting
            total += item.count()
            item.forget()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("objects"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr, force_terminal=True),
            transient=True,
        )
        self._overall = self._progress.add_task(f"all {len(inputs)} files", total=total)
        self._file = self._progress.add_task("", total=None, visible=len(inputs) > 1)

    def __enter__(self) -> _Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_file(self, item: _Input, count: int) -> None:
        if self._progress is not None and self._file is not None:
            self._progress.update(self._file, description=item.name, total=count, completed=0)

    def file_progress(self, done: int) -> None:
        if self._progress is not None and self._file is not None and self._overall is not None:
            self._progress.update(self._file, completed=done)
            self._progress.update(self._overall, completed=self._done_before + done)

    def end_file(self, count: int) -> None:
        self._done_before += count
        self.file_progress(0)
        if self._progress is not None and self._overall is not None:
            self._progress.update(self._overall, completed=self._done_before)


def _submit_one(
    client: ExchangeClient,
    item: _Input,
    bar: _Bar,
    audience: dict[str, Any],
    timeout: float,
) -> _Outcome:
    """Submit one file; a refused bundle becomes the outcome's error. Other
    :class:`ExchangeError` (unreachable, bad token...) are raised."""
    outcome = _Outcome(item.name)
    try:
        data = item.read()
    except OSError as err:
        outcome.refuse(f"cannot read {item.name}: {err.strerror or err}")
        return outcome
    objects = item.objects()
    count = len(objects) if objects is not None else 0
    bar.start_file(item, count)
    try:
        if objects is not None and len(objects) > LARGE_FILE_OBJECTS:

            def progress(update: SubmitProgress) -> None:
                bar.file_progress(update.objects_done)

            summary = client.submit_many(
                objects,
                batch_size=BATCH_SIZE,
                on_progress=progress,
                timeout=timeout * -(-len(objects) // BATCH_SIZE),  # the stream: per batch
                **audience,
            )
            outcome.add(summary)
            for batch in summary.errors:
                outcome.refuse(f"batch {batch.batch + 1}: {batch.error}")
        else:
            outcome.add(client.submit(data, timeout=timeout, **audience))
    except ValidationError as err:
        outcome.refuse(str(err))
    finally:
        item.forget()
        bar.end_file(count)
    return outcome


def _rejection_problem(rejection: RejectedObject) -> str:
    """The reason without the object id and property it starts with (they have
    columns), saying what was expected."""
    reason = rejection.reason
    prop = rejection.property
    for prefix in (rejection.object_id, prop, f"property '{prop}'" if prop else ""):
        if prefix and reason.startswith(prefix + ": "):
            reason = reason[len(prefix) + 2 :]
    expected = rejection.expected
    if expected and reason.startswith(expected):
        return f"expected {reason}"
    if expected and expected not in reason:
        return f"{reason} (expected {expected})"
    return reason


def _files_table(outcomes: Sequence[_Outcome]) -> Table:
    """Per file: accepted / duplicate / rejected; refused files with the reason."""
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    refused = any(o.error for o in outcomes)
    table.add_column("FILE", overflow="fold")
    for column in ("ACCEPTED", "DUPLICATE", "REJECTED"):
        table.add_column(column, justify="right")
    if refused:
        table.add_column("ERROR")
    for o in outcomes:
        counts = [len(o.accepted), len(o.duplicates), len(o.rejected)]
        nothing = o.error is not None and not any(counts)
        table.add_row(
            o.name,
            *("-" if nothing else str(count) for count in counts),
            *([f"refused: {o.error}" if o.error else ""] if refused else []),
            style="red" if o.error else None,
        )
    return table


def _refused_table(outcomes: Sequence[_Outcome]) -> Table:
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    table.add_column("FILE", overflow="fold")
    table.add_column("ERROR")
    for o in outcomes:
        if o.error:
            table.add_row(o.name, f"refused: {o.error}")
    return table


def _rejected_table(outcomes: Sequence[_Outcome]) -> Table:
    table = Table(
        box=box.SIMPLE,
        show_edge=False,
        pad_edge=False,
        title="Rejected objects",
        title_justify="left",
    )
    for column in ("FILE", "OBJECT", "PROPERTY", "PROBLEM"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        for r in o.rejected:
            table.add_row(
                o.name, r.object_id or f"objects[{r.index}]", r.property, _rejection_problem(r)
            )
    return table


def _notices_table(outcomes: Sequence[_Outcome]) -> Table:
    table = Table(
        box=box.SIMPLE, show_edge=False, pad_edge=False, title="Notices", title_justify="left"
    )
    for column in ("FILE", "OBJECT", "NOTICE"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        for object_id, notice in o.notices:
            table.add_row(o.name, object_id, notice)
    return table


def _total_line(outcomes: Sequence[_Outcome]) -> str:
    files = f"{len(outcomes)} file" + ("" if len(outcomes) == 1 else "s")
    line = (
        f"{files}: {sum(len(o.accepted) for o in outcomes)} accepted, "
        f"{sum(len(o.duplicates) for o in outcomes)} duplicate, "
        f"{sum(len(o.rejected) for o in outcomes)} rejected"
    )
    refused = sum(1 for o in outcomes if o.error)
    return f"{line}, {refused} refused" if refused else line


def _summary_tables(outcomes: Sequence[_Outcome], quiet: bool) -> list[Table]:
    """The files table (--quiet: only the refused files), then every rejected
    object, then every notice (not with --quiet)."""
    tables: list[Table] = []
    if not quiet:
        tables.append(_files_table(outcomes))
    elif any(o.error for o in outcomes):
        tables.append(_refused_table(outcomes))
    if any(o.rejected for o in outcomes):
        tables.append(_rejected_table(outcomes))
    if not quiet and any(o.notices for o in outcomes):
        tables.append(_notices_table(outcomes))
    return tables


@click.command(
    epilog="""\b
Examples:
  exchange submit --token "$TOKEN" indicators.json more/*.json
  exchange submit corpus/                  # every *.json below corpus/, with a progress bar
  cat bundle.json | exchange submit --json -
  exchange submit leads.json --community sea-taskforce --exclude-kind government
  exchange submit tip.json --recipient ngo-lighthouse --recipient interpol-hq
  exchange submit --quiet nightly/ || echo "something was rejected"
"""
)
@click.argument(
    "files",
    metavar="FILE|DIR|-...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, allow_dash=True),
)
@_connection_options
@_audience_options
@click.option(
    "--exclude-kind",
    "exclude_kinds",
    type=click.Choice([kind.value for kind in PartnerKind], case_sensitive=False),
    metavar="KIND",
    multiple=True,
    help="Withhold the objects from every partner of this kind not named by --recipient: "
    f"{', '.join(kind.value for kind in PartnerKind)}; repeatable.",
)
@_json_option(
    'One JSON line per file: {"file", "accepted", "duplicates", "rejected", "notices", '
    '"error"} (no progress bar, no table).'
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress bar and no summary: print only what was rejected or refused.",
)
@_timeout_option(
    f"Seconds to wait for the exchange per file (large files: per {BATCH_SIZE} objects)."
)
@click.pass_context
def submit(
    ctx: click.Context,
    *,
    files: tuple[str, ...],
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    communities: tuple[str, ...],
    recipients: tuple[str, ...],
    exclude_kinds: tuple[str, ...],
    as_json: bool,
    quiet: bool,
    timeout: float,
) -> None:
    """Submit STIX 2.1 bundle files to the exchange.

    FILE is a bundle file; DIR means every *.json file below it (sorted); "-"
    reads one bundle from stdin. Files of more than 1,000 objects are sent in
    batches. With more than one file, or a large one, a progress bar shows on
    stderr when it is a terminal.

    At the end a table shows, per file, how many objects were accepted, already
    held (duplicate) or rejected, and files refused as a whole (not JSON, not a
    bundle...); below it every rejected object with the property at fault and
    what was expected, and any notice the exchange added to an object.

    Exits 0 when everything was accepted or duplicate, 2 when any object or file
    was rejected, 1 when the exchange could not be reached or refused the token.

    Who receives the objects follows their TLP; --community, --recipient and
    --exclude-kind narrow it, for every file of the command.
    """
    inputs = _expand(ctx, files)
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)
    audience: dict[str, Any] = {
        "communities": communities,
        "recipients": recipients,
        "exclude_kinds": exclude_kinds,
    }
    maybe_bar = not as_json and not quiet and _is_terminal(sys.stderr)
    show_bar = maybe_bar and (
        len(inputs) > 1 or (len(inputs) == 1 and inputs[0].count() > LARGE_FILE_OBJECTS)
    )
    outcomes: list[_Outcome] = []
    try:
        with client, _Bar(inputs, show_bar) as bar:
            for item in inputs:
                try:
                    outcome = _submit_one(client, item, bar, audience, timeout)
                except ExchangeError as err:
                    _fail(ctx, f"{item.name}: {_describe(err, client.target)}")
                outcomes.append(outcome)
                if as_json:
                    _write_line(outcome.record())
        if not as_json:
            console = _stdout_console()
            for number, table in enumerate(_summary_tables(outcomes, quiet)):
                if number:
                    console.print()
                console.print(table)
            if not quiet:
                console.print()
                console.print(_total_line(outcomes))
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _quiet_broken_pipe(ctx)
    ctx.exit(EXIT_OK if all(o.ok for o in outcomes) else EXIT_REJECTED)


# -- get ------------------------------------------------------------------


@click.command(
    epilog="""\b
Examples:
  exchange get indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f | jq .pattern
  exchange get indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f --version 2024-05-01T10:00:00.000Z
"""
)
@click.argument("object_id")
@_connection_options
@click.option(
    "--version",
    metavar="MODIFIED",
    help="This version (the object's modified timestamp) instead of the latest.",
)
@_timeout_option("Seconds to wait for the exchange.")
@click.pass_context
def get(
    ctx: click.Context,
    *,
    object_id: str,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    version: str | None,
    timeout: float,
) -> None:
    """Print one STIX object you may see, as JSON (the latest version by default).

    Prints the object exactly as the exchange stored it, on one line. Exits 1
    with one line on stderr when it does not exist or you may not see it (the
    exchange does not tell the two apart).
    """
    object_id = object_id.strip()
    if not object_id:
        raise click.UsageError("OBJECT_ID must be a STIX id such as indicator--<uuid>")
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)
    try:
        with client:
            delivery = client.get(object_id, version=version or None, timeout=timeout)
        click.echo(delivery.object_json)
    except NotFound:
        which = f"{object_id} version {version}" if version else object_id
        _fail(ctx, f"{which}: not found (or not visible to you)")
    except ExchangeError as err:
        _fail(ctx, _describe(err, client.target))
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _quiet_broken_pipe(ctx)
    ctx.exit(EXIT_OK)


# -- sighting and revoke --------------------------------------------------


def _single_result(
    ctx: click.Context, what: str, result: SubmitResult, as_json: bool, done: str
) -> NoReturn:
    """Print the one-object outcome of ``sighting`` / ``revoke`` and exit."""
    first = result.results[0] if result.results else None
    object_id = first.object_id if first is not None else ""
    outcome = first.outcome if first is not None else "refused"
    reason = result.rejected[0].reason if result.rejected else (result.error or "")
    if as_json:
        _write_line(
            {
                "object_id": object_id,
                "version": first.version if first is not None else "",
                "outcome": outcome,
                "reason": reason or None,
                "log_index": (
                    first.receipt.log_index
                    if first is not None and first.receipt is not None
                    else None
                ),
            }
        )
    if not result.ok or first is None:
        if not as_json:
            _fail(ctx, f"{what} rejected: {reason or 'the exchange gave no result'}", EXIT_REJECTED)
        ctx.exit(EXIT_REJECTED)
    if not as_json:
        state = done if outcome == "accepted" else "already recorded (duplicate)"
        click.echo(f"{object_id}: {state} (version {first.version})")
        if first.notice:
            click.echo(f"  notice: {first.notice}")
    ctx.exit(EXIT_OK)


@click.command(
    epilog="""\b
Examples:
  exchange sighting indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f
  exchange sighting indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f --count 12 \\
      --first-seen 2026-11-01 --last-seen 2026-11-27T18:00:00Z --tlp green
  exchange sighting indicator--8e2e... --tlp red --recipient ngo-lighthouse --json
"""
)
@click.argument("indicator_id")
@_connection_options
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many times you saw it.",
)
@click.option(
    "--first-seen",
    metavar="TIME",
    callback=_parse_time,
    help="When you first saw it (ISO 8601; naive means UTC).",
)
@click.option(
    "--last-seen",
    metavar="TIME",
    callback=_parse_time,
    help="When you last saw it (ISO 8601; naive means UTC).",
)
@click.option(
    "--tlp",
    type=click.Choice(TLP_NAMES, case_sensitive=False),
    default="amber",
    show_default=True,
    help="TLP of the sighting (TLP:RED and TLP:AMBER+STRICT need --recipient).",
)
@_audience_options
@click.option("--description", metavar="TEXT", help="A note on where or how you saw it.")
@_json_option('One JSON line: {"object_id", "version", "outcome", "reason", "log_index"}.')
@_timeout_option("Seconds to wait for the exchange.")
@click.pass_context
def sighting(
    ctx: click.Context,
    *,
    indicator_id: str,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    count: int,
    first_seen: datetime | None,
    last_seen: datetime | None,
    tlp: str,
    communities: tuple[str, ...],
    recipients: tuple[str, ...],
    description: str | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Report that you saw an indicator (a STIX sighting of INDICATOR_ID).

    The sighting travels back to the indicator's submitter and, by its TLP, to
    whom else it may reach (--tlp, --community, --recipient). Prints the new
    sighting's id. Exits 2 when the exchange rejects it, 1 when the exchange
    cannot be reached or refuses the token.
    """
    indicator_id = _object_id_argument(indicator_id)
    if first_seen is not None and last_seen is not None and first_seen > last_seen:
        raise click.UsageError("--first-seen is after --last-seen")
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)
    try:
        with client:
            result = client.report_sighting(
                indicator_id,
                count=count,
                first_seen=first_seen,
                last_seen=last_seen,
                tlp=tlp.lower(),
                communities=communities,
                recipients=recipients,
                description=description,
                timeout=timeout,
            )
    except NotFound:
        _fail(ctx, f"{indicator_id}: not found (or not visible to you)")
    except ValidationError as err:
        _fail(ctx, f"sighting refused: {err}", EXIT_REJECTED)
    except ValueError as err:  # the SDK's own checks (e.g. TLP:RED without recipients)
        _fail(ctx, str(err), EXIT_REJECTED)
    except ExchangeError as err:
        _fail(ctx, _describe(err, client.target))
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    _single_result(ctx, "sighting", result, as_json, f"sighting of {indicator_id} recorded")


@click.command(
    epilog="""\b
Examples:
  exchange revoke indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f
  exchange revoke indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f --json | jq .version
"""
)
@click.argument("object_id")
@_connection_options
@_json_option('One JSON line: {"object_id", "version", "outcome", "reason", "log_index"}.')
@_timeout_option("Seconds to wait for the exchange.")
@click.pass_context
def revoke(
    ctx: click.Context,
    *,
    object_id: str,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Revoke an object you submitted: a new version marked revoked.

    Every partner that received the object receives the revocation, and the
    exchange keeps the earlier versions (and its audit log) as they were.
    Exits 2 when the exchange rejects the revocation (e.g. the object is not
    yours), 1 when it does not exist or is not visible to you.
    """
    object_id = _object_id_argument(object_id)
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)
    try:
        with client:
            result = client.revoke(object_id, timeout=timeout)
    except NotFound:
        _fail(ctx, f"{object_id}: not found (or not visible to you)")
    except ValidationError as err:
        _fail(ctx, f"revocation refused: {err}", EXIT_REJECTED)
    except ExchangeError as err:
        _fail(ctx, _describe(err, client.target))
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    _single_result(ctx, "revocation", result, as_json, "revoked")


# -- subscribe ------------------------------------------------------------


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
        parts.append(_one_line(str(obj["pattern"])))
    elif delivery.object_type == "sighting" and obj.get("sighting_of_ref"):
        parts.append(f"sighting of {obj['sighting_of_ref']} (count {obj.get('count', 1)})")
    elif obj.get("name"):
        parts.append(_one_line(str(obj["name"])))
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


def _default_format(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if value is not None:
        return value.lower()
    return "pretty" if _is_terminal(sys.stdout) else "jsonl"


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
        _fail(ctx, f"cannot read --cursor-file {cursor_file}: {err}")


def _print_delivery(ctx: click.Context, delivery: Delivery, output_format: str) -> None:
    try:
        if output_format == "pretty":
            click.echo(_pretty_line(delivery))
        else:
            _write_line(_delivery_record(delivery))
    except ValueError:  # not JSON
        _fail(ctx, f"the exchange sent {delivery.object_id} as invalid JSON")


def _deliveries(subscription: Iterable[Delivery], since: datetime | None) -> Iterator[Delivery]:
    for delivery in subscription:
        if since is None or delivery.accepted_at >= since:
            yield delivery


@click.command(
    epilog="""\b
Examples:
  exchange subscribe --from-beginning --type indicator --limit 100
  exchange subscribe --since 2026-11-01 --format pretty --label trafficking:recruitment
  exchange subscribe --from-beginning --cursor-file feed.cursor >> feed.jsonl
  exchange subscribe --cursor "$(tail -n1 feed.jsonl | jq -r .cursor)" >> feed.jsonl
"""
)
@_connection_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["pretty", "jsonl"], case_sensitive=False),
    callback=_default_format,
    help="pretty: one readable line per delivery; jsonl: one JSON object per line "
    "(default: pretty on a terminal, jsonl otherwise).",
)
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Start with the first object ever accepted (default: only new objects).",
)
@click.option(
    "--since",
    metavar="TIME",
    callback=_parse_time,
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
) -> None:
    """Stream the objects you may see, as they are accepted.

    --format jsonl writes one JSON line per delivery: cursor, submitter,
    submitter_identity, tlp, accepted_at, object_id, object_type, version and the
    STIX object itself. --format pretty writes one line: time, TLP, type, id,
    submitter and, for an indicator, its pattern.

    When the connection is lost the command reconnects with backoff (saying so
    on stderr) and resumes after the last delivery: nothing is missed or
    repeated. Ctrl-C stops (exit 130).
    """
    saved, cursor = _start(ctx, cursor, cursor_file, from_beginning)
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)

    def reconnecting(attempt: int, error: BaseException) -> None:
        click.echo(f"reconnecting (attempt {attempt}): {_one_line(str(error))}", err=True)

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
            )
            for delivery in _deliveries(subscription, since):
                _print_delivery(ctx, delivery, output_format)
                if saved is not None:
                    saved.write(subscription.last_cursor or delivery.cursor)
                count += 1
                if limit is not None and count >= limit:
                    break
    except ExchangeError as err:
        _fail(ctx, _describe(err, client.target))
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            _quiet_broken_pipe(ctx)
        _fail(ctx, f"cannot write --cursor-file {cursor_file}: {err.strerror or err}")
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    finally:
        # Objects skipped by --since, or a position the exchange sent without a
        # delivery, count as handled too.
        if saved is not None and subscription is not None:
            with contextlib.suppress(OSError):
                saved.write(subscription.last_cursor)
    ctx.exit(EXIT_OK)
