"""``exchange get``, ``exchange sighting`` and ``exchange revoke``: one object at a time."""

from __future__ import annotations

from datetime import datetime
from typing import NoReturn

import click
from exchange_client import (
    ExchangeError,
    NotFound,
    SubmitResult,
    ValidationError,
)

from exchange.cli._output import ExitCode, describe_error, fail, quiet_broken_pipe, write_json_line
from exchange.cli._partner import (
    TLP_NAMES,
    _audience_options,
    _connect,
    _connection_options,
    _json_option,
    _object_id_argument,
    _timeout_option,
)
from exchange.cli._time import parse_time

__all__ = ["get", "revoke", "sighting"]


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
        fail(f"{which}: not found (or not visible to you)")
    except ExchangeError as err:
        fail(describe_error(err, client.target))
    except KeyboardInterrupt:
        ctx.exit(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        quiet_broken_pipe()
    ctx.exit(ExitCode.OK)


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
        write_json_line(
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
            fail(f"{what} rejected: {reason or 'the exchange gave no result'}", ExitCode.REJECTED)
        ctx.exit(ExitCode.REJECTED)
    if not as_json:
        state = done if outcome == "accepted" else "already recorded (duplicate)"
        click.echo(f"{object_id}: {state} (version {first.version})")
        if first.notice:
            click.echo(f"  notice: {first.notice}")
    ctx.exit(ExitCode.OK)


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
    callback=parse_time,
    help="When you first saw it (ISO 8601; naive means UTC).",
)
@click.option(
    "--last-seen",
    metavar="TIME",
    callback=parse_time,
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
        fail(f"{indicator_id}: not found (or not visible to you)")
    except ValidationError as err:
        fail(f"sighting refused: {err}", ExitCode.REJECTED)
    except ValueError as err:  # the SDK's own checks (e.g. TLP:RED without recipients)
        fail(str(err), ExitCode.REJECTED)
    except ExchangeError as err:
        fail(describe_error(err, client.target))
    except KeyboardInterrupt:
        ctx.exit(ExitCode.INTERRUPTED)
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
        fail(f"{object_id}: not found (or not visible to you)")
    except ValidationError as err:
        fail(f"revocation refused: {err}", ExitCode.REJECTED)
    except ExchangeError as err:
        fail(describe_error(err, client.target))
    except KeyboardInterrupt:
        ctx.exit(ExitCode.INTERRUPTED)
    _single_result(ctx, "revocation", result, as_json, "revoked")
