"""What the partner commands share: connecting through the SDK, saying what went
wrong in one line, and the options they have in common.

The partner commands (``submit``, ``get``, ``sighting``, ``revoke``, ``subscribe``)
are built only on the partner SDK (:mod:`exchange_client`), so what they do is
exactly what a partner's own code can do; they import nothing of the server.

Exit codes: 0 success, 1 connection/authentication/server error or object not
found (one line on stderr), 2 something was rejected (``submit``, ``sighting``,
``revoke``) or the command line is wrong, 130 interrupted (Ctrl-C)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from exchange_client import (
    ExchangeClient,
)

from exchange.cli._options import ca_file_option, cert_file_option, key_file_option, token_option
from exchange.cli._output import fail

DEFAULT_TARGET = "127.0.0.1:50051"


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


def _connect(
    ctx: click.Context,
    target: str,
    token: str | None,
    ca_file: str | None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> ExchangeClient:
    if (not token or not token.strip()) and not (cert_file or key_file):
        fail(
            "no API token: set EXCHANGE_TOKEN or pass --token-file (or --token) "
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
        fail(message)
    except OSError as err:
        fail(f"cannot read {err.filename or 'a TLS file'}: {err.strerror or err}")


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
