"""Options shared by the ``exchange`` commands, each declared once: where the settings
come from (``--config``, ``--data-dir``, ``--database``), and how to reach a server
(``exchange submit``, ``exchange partner ... --target``, ``exchange audit ... --target``,
``exchange health``): each flag with its environment variable and type; each command
says in its help what the flag means for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from exchange import errors
from exchange.config import Settings, load_settings

__all__ = [
    "ca_file_option",
    "cert_file_option",
    "config_option",
    "data_dir_option",
    "database_option",
    "given_on_command_line",
    "key_file_option",
    "load_cli_settings",
    "target_option",
    "token_option",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def token_option(help_text: str) -> Callable[[_F], _F]:
    return click.option("--token", envvar="EXCHANGE_TOKEN", show_envvar=True, help=help_text)


def _pem_option(flag: str, envvar: str, help_text: str) -> Callable[[_F], _F]:
    return click.option(
        flag,
        envvar=envvar,
        show_envvar=True,
        type=click.Path(exists=True, dir_okay=False),
        help=help_text,
    )


def ca_file_option(help_text: str) -> Callable[[_F], _F]:
    return _pem_option("--ca-file", "EXCHANGE_CA_FILE", help_text)


def cert_file_option(help_text: str) -> Callable[[_F], _F]:
    return _pem_option("--cert-file", "EXCHANGE_CERT_FILE", help_text)


def key_file_option(help_text: str) -> Callable[[_F], _F]:
    return _pem_option("--key-file", "EXCHANGE_KEY_FILE", help_text)


# Where the settings come from: the options of every command that opens the store.
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="EXCHANGE_CONFIG",
    help="TOML settings file (env: EXCHANGE_CONFIG). See docs/configuration.md.",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Where the embedded store keeps its files"
    " (env: EXCHANGE_DATA_DIR; default ./exchange-data).",
)

database_option = click.option(
    "--database",
    metavar="URL",
    help="PostgreSQL instead of the SQLite file in the data directory:"
    " postgresql://USER@HOST:PORT/DATABASE (env: EXCHANGE_DATABASE; the password is best"
    " given as PGPASSWORD).",
)


def load_cli_settings(config_file: str | None, **overrides: Any) -> Settings:
    """Settings for a command; a bad file or value is a usage error (exit 2)."""
    try:
        return load_settings(config_file, overrides=overrides)
    except errors.ExchangeError as exc:
        raise click.UsageError(exc.message) from exc


def target_option(help_text: str) -> Callable[[_F], _F]:
    """--target HOST:PORT: work through a running server instead of on the store."""
    return click.option("--target", metavar="HOST:PORT", help=help_text)


def given_on_command_line(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was typed (not taken from a default or variable)."""
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
