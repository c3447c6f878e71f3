"""What the ``exchange audit`` commands share: where a command works (the data
directory or a server, ``_backend``), and how entries are shown (records, rows)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import click
import exchange_client
from exchange_client import AuditedVersion, AuditEntry, ExchangeClient

from exchange import errors
from exchange.cli._audit_backend import (
    AuditBackend,
    LocalAudit,
    RemoteAudit,
)
from exchange.cli._options import (
    ca_file_option,
    cert_file_option,
    config_option,
    data_dir_option,
    database_option,
    given_on_command_line,
    key_file_option,
    load_cli_settings,
    target_option,
    token_option,
)
from exchange.cli._output import describe_error, fail, quiet_broken_pipe

_DETAIL_WIDTH = 60


def _remote_message(error: exchange_client.ExchangeError, target: str) -> str:
    if error.code == "UNIMPLEMENTED":
        return f"the exchange at {target} does not offer the audit API; is it an older version?"
    if isinstance(error, exchange_client.ValidationError):
        return str(error)
    return describe_error(error, target)


# -- where a command works -------------------------------------------------------------------

_WHERE_OPTIONS = (
    config_option,
    data_dir_option,
    database_option,
    target_option(
        "Ask the exchange server at HOST:PORT (its audit API) instead of reading the"
        " data directory; needs a partner's --token."
    ),
    token_option(
        "With --target: your partner API token (without the 'audit' role you see your"
        " own actions and the entries about the objects you submitted)."
    ),
    ca_file_option("With --target: PEM root certificates, connect with TLS (default: plaintext)."),
    cert_file_option("With --target: PEM client certificate for mutual TLS (needs --key-file)."),
    key_file_option("With --target: PEM private key of the client certificate."),
)


_WHERE_PARAMS = (
    "config_file",
    "data_dir",
    "database",
    "target",
    "token",
    "ca_file",
    "cert_file",
    "key_file",
)


def _local(ctx: click.Context, public_key_file: str | None) -> AuditBackend:
    for name in ("token", "token_file", "ca_file", "cert_file", "key_file"):
        if given_on_command_line(ctx, name):
            raise click.UsageError(
                f"--{name.replace('_', '-')} is for --target HOST:PORT; without --target"
                " the command reads the data directory"
            )
    params = ctx.params
    settings = load_cli_settings(
        params.get("config_file"), data_dir=params.get("data_dir"), database=params.get("database")
    )
    return LocalAudit(settings, public_key_file)


def _remote(ctx: click.Context, target: str, public_key_file: str | None) -> AuditBackend:
    if (
        given_on_command_line(ctx, "data_dir")
        or given_on_command_line(ctx, "config_file")
        or given_on_command_line(ctx, "database")
    ):
        raise click.UsageError(
            "--data-dir, --database and --config are for reading the store directly; with"
            " --target the server's own log is used"
        )
    if not target:
        raise click.BadParameter("expected HOST:PORT", param_hint="--target")
    params = ctx.params
    token = (params.get("token") or "").strip()
    if not token and not params.get("cert_file"):
        fail("no API token for --target: set EXCHANGE_TOKEN or pass --token-file (or --token)")
    try:
        client = ExchangeClient(
            target,
            token,
            ca_file=params.get("ca_file"),
            cert_file=params.get("cert_file"),
            key_file=params.get("key_file"),
        )
    except (ValueError, OSError) as exc:
        fail(str(exc))
    return RemoteAudit(client, public_key_file)


@contextlib.contextmanager
def _backend(public_key_file: str | None = None) -> Iterator[AuditBackend]:
    """The backend the command line asks for; errors become one line and exit 1."""
    ctx = click.get_current_context()
    target = (
        (ctx.params.get("target") or "").strip() if ctx.params.get("target") is not None else None
    )
    try:
        if target is None:
            backend = _local(ctx, public_key_file)
        else:
            backend = _remote(ctx, target, public_key_file)
    except errors.ExchangeError as exc:
        fail(exc.message)
    try:
        yield backend
    except errors.ExchangeError as exc:
        fail(exc.message)
    except exchange_client.ExchangeError as exc:
        fail(_remote_message(exc, target or ""))
    except BrokenPipeError:
        quiet_broken_pipe()
    finally:
        with contextlib.suppress(Exception):
            backend.close()


def _where_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Add --config/--data-dir/--database/--target/--token/--ca-file/--cert-file/--key-file; the
    command reads them through ``_backend`` (from the click context)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        for name in _WHERE_PARAMS:
            kwargs.pop(name, None)
        fn(*args, **kwargs)

    command: Callable[..., None] = wrapper
    for option in reversed(_WHERE_OPTIONS):
        command = option(command)
    return command


# -- values ----------------------------------------------------------------------------------


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _short_detail(detail: dict[str, Any]) -> str:
    parts: list[str] = []
    if "outcome" in detail:
        parts.append(str(detail["outcome"]))
    for key, value in detail.items():
        if key == "outcome":
            continue
        if key == "last_at" and isinstance(value, int | float):
            # A deliver entry's span ends then: a time, as the TIME column shows it.
            shown = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif isinstance(value, list):
            shown = ",".join(map(str, value))
        else:
            shown = str(value)
        parts.append(f"{key}={shown}")
    text = " ".join(" ".join(parts).split())
    return text if len(text) <= _DETAIL_WIDTH else text[: _DETAIL_WIDTH - 3] + "..."


def _record(entry: AuditEntry) -> dict[str, Any]:
    return {
        "index": entry.index,
        "at": _iso(entry.at),
        "action": entry.action,
        "actor": entry.actor,
        "partner": entry.partner,
        "object_id": entry.object_id,
        "version": entry.version,
        "digest": entry.digest,
        "owner": entry.owner,
        "detail": entry.detail,
        "leaf_hash": entry.leaf_hash.hex(),
        **({"objects": [dataclasses.asdict(o) for o in entry.objects]} if entry.objects else {}),
    }


def _versions(entry: AuditEntry, object_id: str = "") -> list[AuditedVersion]:
    """The object versions ``entry`` is about, one per row of a table or CSV: the
    versions a DELIVER entry lists (those of ``object_id`` only, when given), or the
    one it names."""
    if not entry.objects:
        return [AuditedVersion(entry.object_id, entry.version, entry.digest)]
    return [o for o in entry.objects if not object_id or o.object_id == object_id]


_HEADERS = ("INDEX", "TIME", "ACTION", "ACTOR", "PARTNER", "OBJECT", "VERSION", "DETAIL")


def _rows(entry: AuditEntry, object_id: str = "") -> list[list[str]]:
    """The table's rows of ``entry``: one per object version it is about."""
    return [
        [
            str(entry.index),
            entry.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            entry.action,
            entry.actor or "-",
            entry.partner or "-",
            version.object_id or "-",
            version.version or "-",
            _short_detail(entry.detail) or "-",
        ]
        for version in _versions(entry, object_id)
    ]


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [list(_HEADERS), *rows]) for i in range(len(_HEADERS))]
    for row in [list(_HEADERS), *rows]:
        cells = [row[0].rjust(widths[0])]
        cells += [f"{cell:<{widths[i + 1]}}" for i, cell in enumerate(row[1:-1])]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
