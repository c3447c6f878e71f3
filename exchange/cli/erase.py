"""``exchange erase``: take an object back from everyone, as its creator (through the
server) or as the operator (on the store: a court order, a data subject's request)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import click
from exchange_client import ExchangeError, NotFound, PermissionDenied

from exchange import errors
from exchange.cli._options import (
    config_option,
    data_dir_option,
    database_option,
    load_cli_settings,
    require_store,
)
from exchange.cli._options import given_on_command_line as _given
from exchange.cli._output import ExitCode, describe_error, fail, write_json_line
from exchange.cli._partner import (
    _connect,
    _connection_options,
    _json_option,
    _object_id_argument,
    _timeout_option,
)
from exchange.erasure import erase as erase_object
from exchange.model import EraseReason
from exchange.store import open_store

__all__ = ["erase"]

_REASONS = [r.value for r in EraseReason]


@click.command(
    epilog="""\b
Examples:
  # A hotline's number turned out to be a victim's: take it back from everyone.
  exchange erase indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f --reason victim-data
  # The operator, for a court order (any partner's object, every copy):
  exchange erase indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f --reason court-order \\
      --data-dir /var/lib/exchange

\b
Reasons: victim-data, informant-data, inaccurate, court-order, data-subject-request,
retention, expired, other. See docs/erasure.md for what erasure reaches and what it
cannot (copies partners already made).
"""
)
@click.argument("object_id")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(_REASONS),
    metavar="CODE",
    help="Why, as a code (never free text: it goes to every recipient and stays in the audit log).",
)
@_connection_options
@config_option
@data_dir_option
@database_option
@_json_option(
    'One JSON line: {"object_id", "versions", "reason", "erased_at", "log_index",'
    ' "already_erased", "referenced_by"}.'
)
@_timeout_option("Seconds to wait for the exchange.")
@click.pass_context
def erase(
    ctx: click.Context,
    *,
    object_id: str,
    reason: str,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    config_file: str | None,
    data_dir: str | None,
    database: str | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Erase an object, every version of it, from the exchange.

    Its content leaves the exchange's store, its outbox and its Kafka topics
    (tombstones), replays, look-ups and TAXII stop returning it, and every
    partner that may have received it gets an erasure notice on its stream
    (`exchange subscribe` prints it). The audit log keeps that it was shared, with
    whom and when it was erased, never what it said. A new version may be
    published later; the erased versions are never taken again.

    \b
    As a partner (default): through the exchange, with your token; you may erase
    the objects you created (your own copy of an observable).
    As the operator (--data-dir or --database): on the store, any object, every
    copy. The running server publishes the tombstones and notices within a
    second or two (or at its next start).

    Exits 1 when the object does not exist or is not visible to you, 2 when it is
    not yours to erase.
    """
    object_id = _object_id_argument(object_id)
    if _given(ctx, "data_dir") or _given(ctx, "database") or _given(ctx, "config_file"):
        settings = load_cli_settings(config_file, data_dir=data_dir, database=database)
        require_store(settings, what_else="or erase through the server with --target")
        result = _as_operator(settings, object_id, EraseReason(reason))
    else:
        result = _as_partner(
            ctx, object_id, reason, target, token, ca_file, cert_file, key_file, timeout
        )
    _report(result, as_json)


def _as_operator(settings: Any, object_id: str, reason: EraseReason) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        store = open_store(settings)
        await store.open()
        try:
            outcome = await erase_object(store, None, object_id, reason)
            first = outcome.erasures[0]
            return {
                "object_id": object_id,
                "versions": outcome.versions,
                "reason": first.reason.value,
                "erased_at": first.erased_at,
                "log_index": first.audit_index,
                "already_erased": outcome.already_erased,
                "referenced_by": sorted({o for e in outcome.erasures for o, _ in e.referenced_by}),
            }
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except errors.ExchangeError as exc:  # NotFound among them: exit 1, its words
        fail(exc.message)


def _as_partner(
    ctx: click.Context,
    object_id: str,
    reason: str,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    timeout: float,
) -> dict[str, Any]:
    client = _connect(ctx, target, token, ca_file, cert_file, key_file)
    try:
        with client:
            done = client.erase(object_id, reason=reason, timeout=timeout)
    except NotFound:
        fail(f"{object_id}: not found (or not visible to you)")
    except PermissionDenied as err:
        fail(f"erasure refused: {err}", ExitCode.REJECTED)
    except ExchangeError as err:
        fail(describe_error(err, client.target))
    except KeyboardInterrupt:
        ctx.exit(ExitCode.INTERRUPTED)
    return {
        "object_id": done.object_id,
        "versions": done.versions,
        "reason": done.reason,
        "erased_at": done.erased_at.timestamp(),
        "log_index": done.receipt.log_index,
        "already_erased": done.already_erased,
        "referenced_by": done.referenced_by,
    }


def _report(result: dict[str, Any], as_json: bool) -> None:
    at = datetime.fromtimestamp(result["erased_at"], UTC)
    if as_json:
        write_json_line({**result, "erased_at": at.isoformat().replace("+00:00", "Z")})
        return
    versions = result["versions"]
    state = "was already erased" if result["already_erased"] else "erased"
    click.echo(
        f"{result['object_id']}: {state} ({len(versions)} version"
        f"{'s' if len(versions) != 1 else ''}, reason {result['reason']}) at"
        f" {at:%Y-%m-%d %H:%M:%S} UTC; audit entry {result['log_index']}"
    )
    if result["referenced_by"]:
        click.echo("  referred to by (review them: revoke or erase what should go too):")
        for oid in result["referenced_by"]:
            click.echo(f"    {oid}")
