"""``exchange audit``: review the audit log, prove it intact, export it with proofs.

Each command works on the data directory (``--data-dir``/``--config``, as the
operator: every entry; also while the server runs) or, with ``--target``, through
a running server's AuditService with a partner's token (a partner without the
``audit`` role sees the entries of its own actions and those about the objects it
submitted; ``verify`` needs ``audit``). Both ways go through one
``AuditBackend`` (``exchange.cli._audit_backend``), so each command is written once.
Through a server every call is itself recorded in the log; on the data directory
nothing is written, except that ``export`` signs a new checkpoint (with the key in
the data directory) when the log has grown since the latest one.

``checkpoint`` saves the latest signed checkpoint to a small file an auditor keeps
away from the exchange; ``verify --checkpoint FILE`` then fails if the log no longer
holds it (truncated, or rewritten), even when the checkpoints in the store were
deleted with the entries. Without one, ``verify`` still exits 0 when the log is
consistent, and its result line says that truncation was not checked for.

Exit codes: 0 success (``verify``: the log is intact), 1 an error (one line on
stderr), 2 a wrong command line, 3 ``verify`` found the log NOT intact (the
first bad entry is named)."""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import click
import orjson
from exchange_client import AuditEntry, Checkpoint, CheckpointError

from exchange.audit.entries import Action
from exchange.audit.verify import KeptCheckpoint
from exchange.cli._audit_backend import (
    EntryFilter,
    read_public_key,
)
from exchange.cli._audit_view import (
    _b64,
    _backend,
    _iso,
    _record,
    _rows,
    _table,
    _versions,
    _where_options,
)
from exchange.cli._output import ExitCode, fail
from exchange.cli._time import parse_time
from exchange.stix._explain import printable

__all__ = ["audit"]

_EPILOG_WHERE = """
Without --target, works on the data directory (--data-dir/--config) as the
operator; with --target HOST:PORT --token TOKEN, through a running server as
that partner."""


@click.group(
    epilog="""\b
Examples:
  exchange audit log --object indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f
  exchange audit log --action deliver --since 2026-11-27 --format json
  exchange audit verify --public-key exchange-audit.pub --checkpoint kept/latest.json
  exchange audit checkpoint --output kept/2026-11-27.json
  exchange audit export --output audit-2026-11.jsonl
  exchange audit public-key > exchange-audit.pub
  exchange audit log --target exchange.example.org:50051 --token "$TOKEN"
"""
)
def audit() -> None:
    """Review the audit log, prove it intact, export it with proofs.

    Every submission, delivery, look-up, subscription, audit query and registry
    change is an entry of an append-only log whose Merkle tree the exchange signs
    (checkpoints). Works on the data directory, or with --target through a running
    server and a partner's token.
    """


@audit.command(
    "log",
    epilog="""\b
Examples:
  exchange audit log
  exchange audit log --object indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f
  exchange audit log --partner kestrel-social-1a2b3c --action deliver
  exchange audit log --since 2026-11-27 --until 2026-11-27 --format csv > today.csv
  exchange audit log --since 2026-11-27T10:00:00Z --format json | jq .detail
"""
    + _EPILOG_WHERE,
)
@click.option("--partner", help="Entries by, or about, this partner id.")
@click.option("--object", "object_id", metavar="ID", help="Entries about this STIX object id.")
@click.option(
    "--action",
    type=click.Choice(sorted(a.value for a in Action)),
    help="Entries of this action.",
)
@click.option(
    "--since",
    metavar="TIME",
    callback=parse_time,
    help="Entries at or after TIME (ISO 8601, e.g. 2026-11-27 or 2026-11-27T10:00:00Z; UTC"
    " unless it says otherwise).",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=parse_time,
    help="Entries before TIME (a date alone: up to the end of that day).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "csv", "table", "jsonl"], case_sensitive=False),
    default="text",
    show_default=True,
    help="text: a readable table; json: one JSON object per line; csv. (table and jsonl"
    " are older names of text and json.)",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Stop after this many entries (default: all)."
)
@_where_options
def log_command(
    partner: str | None,
    object_id: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    output_format: str,
    limit: int | None,
) -> None:
    """List the audit log's entries that match, oldest first.

    The table shows index, time (UTC), action, actor, partner concerned, object,
    version and a short detail (the outcome first); json and csv have every field. A
    delivery entry lists what one partner received over a second or so: the table and
    csv show one row per object version it lists (with --object, that object's only),
    json the entry whole, its versions under "objects".
    """
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until: no entry can match")
    which = EntryFilter(
        partner=(partner or "").strip(),
        object_id=(object_id or "").strip(),
        action=action or "",
        since=since,
        until=until,
    )
    with _backend() as backend:
        entries = backend.entries(which)
        if limit is not None:
            entries = _first(entries, limit)
        output_format = {"table": "text", "jsonl": "json"}.get(
            output_format.lower(), output_format.lower()
        )
        if output_format == "json":
            for entry in entries:
                click.echo(orjson.dumps(_record(entry)).decode())
        elif output_format == "csv":
            _csv(entries, sys.stdout, which.object_id)
        else:
            rows = [row for e in entries for row in _rows(e, which.object_id)]
            if rows:
                _table(rows)
            else:
                click.echo("no matching entries", err=True)


def _first(entries: Iterator[AuditEntry], limit: int) -> Iterator[AuditEntry]:
    for n, entry in enumerate(entries, 1):
        yield entry
        if n >= limit:
            return


def _csv(entries: Iterator[AuditEntry], out: IO[str], object_id: str = "") -> None:
    """One row per object version an entry is about (a DELIVER entry lists several)."""
    fields = ["index", "at", "action", "actor", "partner", "object_id", "version", "digest"]
    fields += ["owner", "detail", "leaf_hash"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for entry in entries:
        record = _record(entry)
        record["detail"] = orjson.dumps(record["detail"]).decode()
        for version in _versions(entry, object_id):
            record.update(object_id=version.object_id, version=version.version)
            writer.writerow({**record, "digest": version.digest})
    out.flush()


@audit.command(
    epilog="""\b
Examples:
  exchange audit verify
  exchange audit verify --public-key exchange-audit.pub --checkpoint kept/2026-11-27.json
  exchange audit verify --target exchange.example.org:50051 --token "$AUDITOR_TOKEN" \\
      --public-key exchange-audit.pub --checkpoint kept/2026-11-27.json
"""
    + _EPILOG_WHERE
    + """

\b
Exit codes: 0 intact, 1 error, 3 NOT intact (the first bad entry is named)."""
)
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The exchange's public key (PEM) to check the checkpoints with; default: the"
    " signing key in the data directory. With --target: also check that the server signs"
    " with this key.",
)
@click.option(
    "--checkpoint",
    "checkpoint_files",
    metavar="FILE",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A checkpoint you kept (`exchange audit checkpoint`, or an export's first line):"
    " the log must still hold it, unchanged. Repeat it for several.",
)
@_where_options
def verify(public_key_file: str | None, checkpoint_files: tuple[str, ...]) -> None:
    """Re-derive every hash of the audit log and check every signed checkpoint.

    Detects an entry edited, deleted, reordered or added in the middle, a
    truncated log, and a forged checkpoint. Through a server it needs the 'audit'
    role. Keep a copy of the public key (`exchange audit public-key`) away from the
    data directory and pass it with --public-key: whoever can edit the data
    directory can also replace the key there.

    The checkpoints in the store prove nothing once deleted: a log cut short together
    with its newest checkpoints, or emptied, still looks intact. Keep a checkpoint
    from time to time (`exchange audit checkpoint`, on another machine) and pass it
    with --checkpoint: the log must be at least as long as it, and its root at that
    size the one it signed. Without one, a consistent log still exits 0 and the
    result line says that truncation was not checked for.
    """
    kept = [_kept(path) for path in checkpoint_files]
    with _backend(public_key_file) as backend:
        result = backend.verify(kept)
    # One line either way; when not intact it names the first bad entry (or checkpoint).
    click.echo(result.summary)
    if not result.intact:
        sys.exit(ExitCode.NOT_INTACT)


def _kept(path: str) -> KeptCheckpoint:
    try:
        with open(path, "rb") as file:
            text = file.readline(1 << 20)
        checkpoint = Checkpoint.from_json(text)
    except OSError as exc:
        fail(f"cannot read the checkpoint {path}: {exc.strerror or exc}")
    except CheckpointError as exc:
        fail(f"{path} is not a kept checkpoint: {exc}")
    return KeptCheckpoint(checkpoint, printable(path))  # named in a one-line result


@audit.command(
    "checkpoint",
    epilog="""\b
Examples:
  exchange audit checkpoint --output kept/$(date +%F).json
  exchange audit checkpoint --target exchange.example.org:50051 --token "$TOKEN" \\
      --public-key exchange-audit.pub --output kept/$(date +%F).json
"""
    + _EPILOG_WHERE,
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to this file (default: standard output); written whole or not at all.",
)
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The exchange's public key (PEM): the checkpoint must be signed with it"
    " (default: the key the exchange says it signs with).",
)
@_where_options
def checkpoint_command(output: str | None, public_key_file: str | None) -> None:
    """Save the latest signed checkpoint, to keep away from the exchange.

    One line of JSON: origin, tree_size, root_hash, at, the signed note and its
    signature (base64), and the public key. Save one from time to time (a cron job
    on another machine) and keep the public key: `exchange audit verify
    --checkpoint FILE` then detects a log cut short or rewritten since, even with
    the checkpoints in the store deleted. On the data directory a new checkpoint is
    signed first when the log has grown.
    """
    with _backend(public_key_file) as backend:
        checkpoint = backend.checkpoint()
        if public_key_file is not None:
            public_key = read_public_key(public_key_file)
        else:
            public_key = backend.public_key()
    try:
        checkpoint.verify(public_key)
    except CheckpointError as exc:
        fail(f"the exchange's checkpoint of size {checkpoint.tree_size:,} does not verify: {exc}")
    line = orjson.dumps(_checkpoint_record(checkpoint, public_key)).decode() + "\n"
    if output is None:
        click.echo(line, nl=False)
    else:
        _write_whole(output, line)
    click.echo(
        f"checkpoint of size {checkpoint.tree_size:,} (signed {_iso(_at(checkpoint))})"
        + (f" saved to {output}" if output else "")
        + ": keep it away from the exchange, for `exchange audit verify --checkpoint FILE`",
        err=True,
    )


def _write_whole(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a reader
    (or a cron job stopped half-way) never sees half a checkpoint."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        fail(f"cannot write {path}: {exc.strerror or exc}")


def _at(checkpoint: Checkpoint) -> datetime:
    return datetime.fromtimestamp(checkpoint.at_ns / 1e9, tz=UTC)


def _checkpoint_record(checkpoint: Checkpoint, public_key: str) -> dict[str, Any]:
    """A checkpoint as kept: ``Checkpoint.to_json``'s fields and the public key."""
    record: dict[str, Any] = orjson.loads(checkpoint.to_json())
    record["public_key"] = public_key
    return record


@audit.command(
    epilog="""\b
Examples:
  exchange audit export --output audit.jsonl
  exchange audit export | gzip > audit.jsonl.gz
  exchange audit export --target exchange.example.org:50051 --token "$TOKEN" -o mine.jsonl
"""
    + _EPILOG_WHERE,
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to this file (default: standard output).",
)
@_where_options
def export(output: str | None) -> None:
    """Export the log with proofs, as JSON lines, for offline review.

    The first line is the latest signed checkpoint ("type": "checkpoint": origin,
    tree_size, root_hash, at, the signed note and its signature in base64, and the
    public key PEM); then every entry of that checkpoint's tree ("type": "entry": its
    fields, its canonical bytes "data" and "leaf_hash" in base64, and its
    "inclusion_proof" in that tree, base64 hashes leaf to root). On the data
    directory a new checkpoint is signed first when the log has grown.
    """
    with _backend() as backend:
        checkpoint = backend.checkpoint()
        public_key = backend.public_key()
        entries = backend.entries(EntryFilter(), with_proofs_at=checkpoint.tree_size)
        if output is None:
            count = _export(checkpoint, public_key, entries, sys.stdout)
        else:
            try:
                with open(output, "w", encoding="utf-8") as out:
                    count = _export(checkpoint, public_key, entries, out)
            except OSError as exc:
                fail(f"cannot write {output}: {exc.strerror or exc}")
    click.echo(
        f"exported {count:,} entries with proofs against the checkpoint of size"
        f" {checkpoint.tree_size:,}" + (f" to {output}" if output else ""),
        err=True,
    )


def _export(
    checkpoint: Checkpoint, public_key: str, entries: Iterator[AuditEntry], out: IO[str]
) -> int:
    head = _checkpoint_record(checkpoint, public_key)
    out.write(orjson.dumps(head).decode() + "\n")
    count = 0
    for entry in entries:
        record: dict[str, Any] = {"type": "entry", **_record(entry)}
        record["leaf_hash"] = _b64(entry.leaf_hash)
        record["data"] = _b64(entry.data)
        record["inclusion_proof"] = [_b64(h) for h in entry.inclusion_proof]
        out.write(orjson.dumps(record).decode() + "\n")
        count += 1
    out.flush()
    return count


@audit.command(
    "public-key",
    epilog="""\b
Examples:
  exchange audit public-key > exchange-audit.pub
  exchange audit public-key --target exchange.example.org:50051 --token "$TOKEN"
"""
    + _EPILOG_WHERE,
)
@_where_options
def public_key() -> None:
    """Print the public key (PEM) the exchange signs its checkpoints with.

    Keep a copy, and give it to partners and auditors through another channel than
    the exchange itself: a checkpoint proves only as much as the key checked with.
    """
    with _backend() as backend:
        pem = backend.public_key()
    click.echo(pem.rstrip("\n"))
