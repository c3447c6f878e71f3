"""``exchange submit``: bundles from files or stdin, in batches with a progress bar
when large, and a summary of what was accepted, duplicate or rejected."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
from exchange_client import (
    ExchangeClient,
    ExchangeError,
    PartnerKind,
    RejectedObject,
    SubmitResult,
    ValidationError,
)
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
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

if TYPE_CHECKING:
    from exchange_client import SubmitProgress, SubmitSummary

from exchange.cli._partner import (
    _audience_options,
    _connect,
    _connection_options,
    _json_option,
    _timeout_option,
)

__all__ = ["submit"]

# A file with more objects than this is submitted in batches (submit_many), with a
# progress bar; so is any command with more than one file.
LARGE_FILE_OBJECTS = 1_000
BATCH_SIZE = 500


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
        error = one_line(error)
        self.error = error if self.error is None else f"{self.error}; {error}"

    def record(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [
                {
                    "object_id": r.object_id,
                    "reason": r.reason,
                    "problems": [
                        {"property": p.property, "expected": p.expected} for p in r.problems
                    ],
                }
                for r in self.rejected
            ],
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


def _file_line(o: _Outcome) -> str:
    """``FILE: 1 accepted, 0 duplicate, 0 rejected`` (``, refused: why`` when refused)."""
    line = (
        f"{o.name}: {len(o.accepted)} accepted, {len(o.duplicates)} duplicate,"
        f" {len(o.rejected)} rejected"
    )
    return f"{line}, refused: {o.error}" if o.error else line


def _print_files(outcomes: Sequence[_Outcome]) -> None:
    """A line per file; on a terminal, several files make a table (refused ones in red)."""
    if len(outcomes) == 1 or not _output.is_terminal(sys.stdout):
        for outcome in outcomes:
            click.echo(_file_line(outcome))
        return
    refused = any(o.error for o in outcomes)
    headers = ["FILE", "ACCEPTED", "DUPLICATE", "REJECTED", *(["ERROR"] if refused else [])]
    rows = []
    for o in outcomes:
        counts = [len(o.accepted), len(o.duplicates), len(o.rejected)]
        nothing = o.error is not None and not any(counts)
        rows.append(
            [
                o.name,
                *("-" if nothing else str(count) for count in counts),
                *([f"refused: {o.error}" if o.error else ""] if refused else []),
            ]
        )
    red = {number for number, o in enumerate(outcomes) if o.error}
    _output.print_table(headers, rows, red_rows=red)


def _print_refused(outcomes: Sequence[_Outcome]) -> None:
    rows = [[o.name, f"refused: {o.error}"] for o in outcomes if o.error]
    _output.print_table(["FILE", "ERROR"], rows)


def _rejection_rows(name: str, r: RejectedObject) -> list[list[str]]:
    """One row per problem of a rejected object, so that all can be fixed in one go."""
    object_id = r.object_id or f"objects[{r.index}]"
    if len(r.problems) < 2 and not r.more_problems:
        return [[name, object_id, r.property or "-", _rejection_problem(r)]]
    rows = [
        [name, object_id, p.property or "-", f"expected {p.expected}" if p.expected else "-"]
        for p in r.problems
    ]
    if r.more_problems:
        rows.append([name, object_id, "-", f"... and {r.more_problems} more"])
    return rows


def _print_rejected(outcomes: Sequence[_Outcome]) -> None:
    rows = [row for o in outcomes for r in o.rejected for row in _rejection_rows(o.name, r)]
    _output.print_table(["FILE", "OBJECT", "PROPERTY", "PROBLEM"], rows, title="Rejected objects")


def _print_notices(outcomes: Sequence[_Outcome]) -> None:
    rows = [[o.name, object_id, notice] for o in outcomes for object_id, notice in o.notices]
    _output.print_table(["FILE", "OBJECT", "NOTICE"], rows, title="Notices")


def _total_line(outcomes: Sequence[_Outcome]) -> str:
    files = f"{len(outcomes)} file" + ("" if len(outcomes) == 1 else "s")
    line = (
        f"{files}: {sum(len(o.accepted) for o in outcomes)} accepted, "
        f"{sum(len(o.duplicates) for o in outcomes)} duplicate, "
        f"{sum(len(o.rejected) for o in outcomes)} rejected"
    )
    refused = sum(1 for o in outcomes if o.error)
    return f"{line}, {refused} refused" if refused else line


def _print_summary(outcomes: Sequence[_Outcome], quiet: bool) -> None:
    """The files (--quiet: only the refused ones), every rejected object, every notice
    (not with --quiet), and with several files the total; a blank line between parts."""
    parts: list[Callable[[Sequence[_Outcome]], None]] = []
    if not quiet:
        parts.append(_print_files)
    elif any(o.error for o in outcomes):
        parts.append(_print_refused)
    if any(o.rejected for o in outcomes):
        parts.append(_print_rejected)
    if not quiet and any(o.notices for o in outcomes):
        parts.append(_print_notices)
    if not quiet and len(outcomes) > 1:
        parts.append(lambda outcomes: click.echo(_total_line(outcomes)))
    for number, part in enumerate(parts):
        if number:
            click.echo()
        part(outcomes)


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
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default="text",
    show_default=True,
    help='text: the summary for people (see above); json: one JSON line per file, {"file",'
    ' "accepted", "duplicates", "rejected" (each with its "reason" and "problems"),'
    ' "notices", "error"} (no progress bar).',
)
@_json_option("Same as --format json.")
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
    output_format: str,
    as_json: bool,
    quiet: bool,
    timeout: float,
) -> None:
    """Submit STIX 2.1 bundle files to the exchange.

    FILE is a bundle file; DIR means every *.json file below it (sorted); "-"
    reads one bundle from stdin. Files of more than 1,000 objects are sent in
    batches. With more than one file, or a large one, a progress bar shows on
    stderr when it is a terminal.

    At the end (--format text) one line per file says how many objects were
    accepted, already held (duplicate) or rejected, or why the file was refused
    as a whole (not JSON, not a bundle...), e.g.
    "lure.json: 1 accepted, 0 duplicate, 0 rejected" (on a terminal, several
    files make a table), and with several files a total line. Below come every
    rejected object with the property at fault and what was expected, and any
    notice the exchange added to an object: tables on a terminal, otherwise
    plain lines with columns aligned by spaces, nothing wrapped or padded.

    Exits 0 when everything was accepted or duplicate, 2 when any object or file
    was rejected, 1 when the exchange could not be reached or refused the token.

    Who receives the objects follows their TLP; --community, --recipient and
    --exclude-kind narrow it, for every file of the command.
    """
    as_json = as_json or output_format.lower() == "json"
    inputs = _expand(ctx, files)
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)
    audience: dict[str, Any] = {
        "communities": communities,
        "recipients": recipients,
        "exclude_kinds": exclude_kinds,
    }
    maybe_bar = not as_json and not quiet and _output.is_terminal(sys.stderr)
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
                    fail(f"{item.name}: {describe_error(err, client.target)}")
                outcomes.append(outcome)
                if as_json:
                    write_json_line(outcome.record())
        if not as_json:
            _print_summary(outcomes, quiet)
    except KeyboardInterrupt:
        ctx.exit(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        quiet_broken_pipe()
    ctx.exit(ExitCode.OK if all(o.ok for o in outcomes) else ExitCode.REJECTED)
