"""Connection options of the commands that talk to a server (``exchange submit``,
``exchange partner ... --target``, ``exchange audit ... --target``, ``exchange health``):
one declaration of each flag, its environment variable and its type; each command
says in its help what the flag means for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["ca_file_option", "cert_file_option", "key_file_option", "token_option"]

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
