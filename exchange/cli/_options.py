"""Options shared by the ``exchange`` commands, each declared once: where the settings
come from (``--config``, ``--data-dir``, ``--database``), and how to reach a server
(``exchange submit``, ``exchange partner ... --target``, ``exchange audit ... --target``,
``exchange health``): each flag with its environment variable and type; each command
says in its help what the flag means for it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from exchange import errors
from exchange.cli._output import fail
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
    "require_store",
    "target_option",
    "token_option",
]

_F = TypeVar("_F", bound=Callable[..., Any])


_VISIBLE_IN_PS = (
    " A token given with --token shows in the process list (ps) to other users of this"
    " machine: prefer EXCHANGE_TOKEN or --token-file."
)


# A token is ~50 characters; a file much larger is not a token file (or is /dev/zero).
_MAX_TOKEN_FILE_BYTES = 4096


def _read_token_file(ctx: click.Context, path: str) -> str:
    try:
        with Path(path).open("rb") as file:
            data = file.read(_MAX_TOKEN_FILE_BYTES + 1)
        if len(data) > _MAX_TOKEN_FILE_BYTES:
            raise click.BadParameter(
                f"{path} is over {_MAX_TOKEN_FILE_BYTES:,} bytes: not a token file",
                ctx,
                param_hint="--token-file",
            )
        token = data.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise click.BadParameter(
            f"cannot read {path}: {reason}", ctx, param_hint="--token-file"
        ) from None
    if not token or len(token.split()) != 1:
        raise click.BadParameter(
            f"{path} must hold one token (a line such as tix_...)", ctx, param_hint="--token-file"
        )
    return token


def token_option(help_text: str) -> Callable[[_F], _F]:
    """--token TOKEN (env EXCHANGE_TOKEN) and --token-file FILE (env EXCHANGE_TOKEN_FILE):
    the command receives ``token``, the first of --token, --token-file, EXCHANGE_TOKEN,
    EXCHANGE_TOKEN_FILE that is set."""

    def decorate(command: _F) -> _F:
        @functools.wraps(command)
        def wrapper(*args: Any, token: str | None, token_file: str | None, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            if token_file is not None:
                if given_on_command_line(ctx, "token") and given_on_command_line(ctx, "token_file"):
                    raise click.UsageError("--token and --token-file exclude each other")
                # A file named on the command line wins over a token from the environment.
                if token is None or given_on_command_line(ctx, "token_file"):
                    token = _read_token_file(ctx, token_file)
            ctx.params["token"] = token  # for commands that read their options from ctx
            return command(*args, token=token, **kwargs)

        decorated = click.option(
            "--token-file",
            metavar="FILE",
            envvar="EXCHANGE_TOKEN_FILE",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            help="Read the API token from FILE (its first line).",
        )(wrapper)
        return click.option(  # type: ignore[return-value]
            "--token",
            metavar="TOKEN",
            envvar="EXCHANGE_TOKEN",
            show_envvar=True,
            help=help_text + _VISIBLE_IN_PS,
        )(decorated)

    return decorate


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


def require_store(settings: Settings, *, what_else: str) -> None:
    """Refuse to work on a data directory that holds no store: a command run from the
    wrong directory would otherwise create a new, empty exchange there, silently (a
    token issued into it is unknown to the running server)."""
    if settings.database or settings.sqlite_path.is_file():
        return
    fail(
        f"no exchange store in {settings.data_path.resolve()} (the data directory: --data-dir,"
        " EXCHANGE_DATA_DIR or data_dir in --config; default ./exchange-data in the current"
        f" directory): pass the data directory `exchange serve` uses, {what_else}",
    )


def target_option(help_text: str) -> Callable[[_F], _F]:
    """--target HOST:PORT: work through a running server instead of on the store."""
    return click.option("--target", metavar="HOST:PORT", help=help_text)


def given_on_command_line(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was typed (not taken from a default or variable)."""
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
