"""``exchange submit``, ``exchange get`` and ``exchange subscribe``: the partner API from a shell.

Built only on the partner SDK (:mod:`exchange_client`), so what these commands
do is exactly what a partner's own code can do. Registered in the ``exchange``
click group by ``exchange.cli``.

Exit codes: 0 success, 1 connection/authentication/server error or object not
found (one line on stderr), 2 something was rejected (``submit``) or the
command line is wrong, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson
from exchange_client import (
    AuthenticationError,
    BundleInput,
    Delivery,
    ExchangeClient,
    ExchangeError,
    NotFound,
    PartnerKind,
    PermissionDenied,
    RateLimited,
    SubmitResult,
    Unavailable,
    ValidationError,
)

__all__ = ["get", "submit", "subscribe"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REJECTED = 2
EXIT_INTERRUPTED = 130

DEFAULT_TARGET = "127.0.0.1:50051"

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
        click.option(
            "--token",
            envvar="EXCHANGE_TOKEN",
            show_envvar=True,
            help="Your partner API token.",
        ),
        click.option(
            "--ca-file",
            envvar="EXCHANGE_CA_FILE",
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False),
            help="PEM root certificates: connect with TLS (default: plaintext).",
        ),
        click.option(
            "--cert-file",
            envvar="EXCHANGE_CERT_FILE",
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False),
            help="PEM client certificate for mutual TLS (needs --key-file and --ca-file; "
            "then --token is optional).",
        ),
        click.option(
            "--key-file",
            envvar="EXCHANGE_KEY_FILE",
            show_envvar=True,
            type=click.Path(exists=True, dir_okay=False),
            help="PEM private key of the client certificate.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _describe(error: ExchangeError, target: str) -> str:
    """One line saying what went wrong, for stderr."""
    if isinstance(error, AuthenticationError):
        return f"authentication failed: {error} (check --token / EXCHANGE_TOKEN)"
    if isinstance(error, PermissionDenied):
        return f"permission denied: {error}"
    if isinstance(error, Unavailable):
        return f"cannot reach the exchange at {target}: {error}"
    if isinstance(error, RateLimited):
        wait = f" (retry after {error.retry_after:g} s)" if error.retry_after is not None else ""
        return f"rate limited: {error}{wait}"
    return f"{error.code}: {error}"


def _fail(ctx: click.Context, message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
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


# -- submit ---------------------------------------------------------------


def _non_blank(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """A repeatable name option: each value stripped, none empty."""
    names = tuple(value.strip() for value in values)
    if any(not name for name in names):
        raise click.BadParameter("must not be empty", ctx=ctx, param=param)
    return names


def _notices(result: SubmitResult | None) -> list[tuple[str, str]]:
    """(object id, notice) of every object the exchange added a notice to, in bundle order."""
    if result is None:
        return []
    return [(r.object_id, r.notice) for r in result.results if r.notice]


def _submit_record(name: str, result: SubmitResult | None, error: str | None) -> dict[str, Any]:
    return {
        "file": name,
        "accepted": result.accepted if result else [],
        "duplicates": result.duplicates if result else [],
        "rejected": [
            {"object_id": r.object_id, "reason": r.reason}
            for r in (result.rejected if result else [])
        ],
        "notices": [
            {"object_id": object_id, "notice": notice} for object_id, notice in _notices(result)
        ],
        "error": error,
    }


def _submit_summary(name: str, result: SubmitResult) -> str:
    lines = [
        f"{name}: {len(result.accepted)} accepted, {len(result.duplicates)} duplicate, "
        f"{len(result.rejected)} rejected"
    ]
    lines.extend(f"  {r.reason}" for r in result.rejected)
    lines.extend(f"  notice: {object_id}: {notice}" for object_id, notice in _notices(result))
    return "\n".join(lines)


@click.command(
    epilog="""\b
Examples:
  exchange submit --token "$TOKEN" indicators.json more/*.json
  cat bundle.json | exchange submit --json -
  exchange submit leads.json --community sea-taskforce --exclude-kind government
  exchange submit tip.json --recipient ngo-lighthouse --recipient interpol-hq
"""
)
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
)
@_connection_options
@click.option(
    "--community",
    "communities",
    metavar="NAME",
    multiple=True,
    callback=_non_blank,
    help="Share TLP:AMBER objects with this community (default: yours); repeatable.",
)
@click.option(
    "--recipient",
    "recipients",
    metavar="PARTNER_ID",
    multiple=True,
    callback=_non_blank,
    help="Name a partner as recipient (the only audience of TLP:AMBER+STRICT and TLP:RED "
    "objects); repeatable.",
)
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
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON line per file: {"file", "accepted", "duplicates", "rejected", "notices", '
    '"error"}.',
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=60.0,
    show_default=True,
    help="Seconds to wait for the exchange per file.",
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
    timeout: float,
) -> None:
    """Submit STIX 2.1 bundle files to the exchange (FILE "-" reads stdin).

    Prints, per file, how many objects were accepted, already held (duplicate)
    or rejected, why each rejection happened, and any notice the exchange added
    to an object. Exits 0 when everything was accepted or duplicate, 2 when any
    object or file was rejected, 1 when the exchange could not be reached or
    refused the token.

    Who receives the objects follows their TLP; --community, --recipient and
    --exclude-kind narrow it, for every file of the command.
    """
    exit_code = EXIT_OK
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)
    try:
        with client:
            for name in files:
                bundle: BundleInput = sys.stdin.buffer.read() if name == "-" else Path(name)
                result: SubmitResult | None = None
                error: str | None = None
                try:
                    result = client.submit(
                        bundle,
                        communities=communities,
                        recipients=recipients,
                        exclude_kinds=exclude_kinds,
                        timeout=timeout,
                    )
                except ValidationError as err:
                    error = str(err)
                    line = f"{name}: refused: {error}"
                except OSError as err:
                    error = f"cannot read {name}: {err.strerror or err}"
                    line = f"{name}: error: {error}"
                except ExchangeError as err:
                    _fail(ctx, f"{name}: {_describe(err, client.target)}")
                if result is not None:
                    line = _submit_summary(name, result)
                    if result.rejected:
                        exit_code = EXIT_REJECTED
                else:
                    exit_code = EXIT_REJECTED
                if as_json:
                    _write_line(_submit_record(name, result, error))
                else:
                    click.echo(line)
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _quiet_broken_pipe(ctx)
    ctx.exit(exit_code)


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
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=60.0,
    show_default=True,
    help="Seconds to wait for the exchange.",
)
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


@click.command(
    epilog="""\b
Examples:
  exchange subscribe --from-beginning --type indicator --limit 100
  exchange subscribe --cursor "$(tail -n1 feed.jsonl | jq -r .cursor)" >> feed.jsonl
"""
)
@_connection_options
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Start with the first object ever accepted (default: only new objects).",
)
@click.option(
    "--cursor",
    metavar="CURSOR",
    help="Resume right after the delivery that carried CURSOR.",
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
@click.pass_context
def subscribe(
    ctx: click.Context,
    *,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    from_beginning: bool,
    cursor: str | None,
    types: tuple[str, ...],
    labels: tuple[str, ...],
    limit: int | None,
) -> None:
    """Stream the objects you may see, one JSON line per delivery.

    Each line holds cursor, submitter, submitter_identity, tlp, accepted_at,
    object_id, object_type, version and the STIX object itself. Save the cursor
    of the last line you handled to resume from it later with --cursor.
    Ctrl-C stops (exit 130).
    """
    if cursor and from_beginning:
        raise click.UsageError("--cursor and --from-beginning exclude each other")
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)
    count = 0
    try:
        with (
            client,
            client.subscribe(
                types=list(types) or None,
                labels=list(labels) or None,
                cursor=cursor or None,
                from_beginning=from_beginning,
            ) as subscription,
        ):
            for delivery in subscription:
                try:
                    record = _delivery_record(delivery)
                except orjson.JSONDecodeError:
                    _fail(ctx, f"the exchange sent {delivery.object_id} as invalid JSON")
                _write_line(record)
                count += 1
                if limit is not None and count >= limit:
                    break
    except ExchangeError as err:
        _fail(ctx, _describe(err, client.target))
    except KeyboardInterrupt:
        ctx.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        _quiet_broken_pipe(ctx)
    ctx.exit(EXIT_OK)
