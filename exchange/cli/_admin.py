"""What ``exchange partner|community|token`` share: where a command works, its
options, and how registry records are shown.

Each command works on the data directory (``--data-dir``/``--config``; also
while the server runs, which notices the change) or, with ``--target``,
through a running server's AdminService with an admin partner's token. Both
ways go through one ``AdminBackend`` interface: ``Registry`` itself on the
local store, ``RemoteRegistry`` over gRPC; so each command is written once and
every value is checked in one place (``exchange.registry``).

Output is aligned text, or with ``--json`` one JSON object per line. Errors are
one line on stderr (``exchange: ...``) with exit code 1; a wrong command line
exits 2."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from exchange import errors
from exchange.cli._admin_backend import AdminBackend, RemoteRegistry
from exchange.cli._options import (
    ca_file_option,
    config_option,
    data_dir_option,
    database_option,
    given_on_command_line,
    load_cli_settings,
    require_store,
    target_option,
    token_option,
)
from exchange.cli._output import fail, write_json_line
from exchange.config import Settings
from exchange.model import (
    Community,
    Credential,
    CredentialKind,
    Partner,
    PartnerKind,
    Role,
    Tlp,
)
from exchange.registry import Registry, parse_duration
from exchange.stix import parse_tlp
from exchange.store import open_store

T = TypeVar("T")


# -- where a command works --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Where:
    """Where a command works: the local data directory, or a server."""

    settings: Settings | None = None
    target: str | None = None
    token: str = ""
    ca_file: str | None = None


@contextlib.asynccontextmanager
async def open_backend(where: Where) -> AsyncIterator[AdminBackend]:
    if where.target is not None:
        roots = None
        if where.ca_file is not None:
            try:
                with open(where.ca_file, "rb") as file:  # noqa: ASYNC230 (a small file, once)
                    roots = file.read()
            except OSError as exc:
                raise errors.InvalidArgument(
                    f"cannot read the CA file {where.ca_file}: {exc.strerror or exc}"
                ) from None
        remote = RemoteRegistry(where.target, where.token, roots)
        try:
            yield remote
        finally:
            await remote.close()
        return
    assert where.settings is not None
    store = open_store(where.settings)
    await store.open()
    try:
        yield Registry(store)
    finally:
        await store.close()


def _run(where: Where, operation: Callable[[AdminBackend], Awaitable[T]]) -> T:
    async def run() -> T:
        async with open_backend(where) as backend:
            return await operation(backend)

    try:
        return asyncio.run(run())
    except errors.ExchangeError as exc:
        fail(exc.message)


# -- options shared by every command -----------------------------------------------------

_WHERE_OPTIONS = (
    config_option,
    data_dir_option,
    database_option,
    target_option(
        "Work through the exchange server at HOST:PORT (its admin API) instead of"
        " on the data directory; needs an admin partner's --token."
    ),
    token_option("With --target: the API token of a partner with the 'admin' role."),
    ca_file_option("With --target: PEM root certificates, connect with TLS (default: plaintext)."),
    click.option(
        "--init",
        is_flag=True,
        help="Create the store in the data directory if it holds none (without it a missing"
        " store is an error: the directory is probably not the server's).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line."),
)


def _where(
    ctx: click.Context,
    config_file: str | None,
    data_dir: str | None,
    database: str | None,
    target: str | None,
    token: str | None,
    ca_file: str | None,
    init: bool,
) -> Where:
    def given(name: str) -> bool:
        return given_on_command_line(ctx, name)

    if target is None:
        if given("token") or given("token_file") or given("ca_file"):
            raise click.UsageError(
                "--token, --token-file and --ca-file are for --target HOST:PORT; without"
                " --target the command works on the data directory"
            )
        settings = load_cli_settings(config_file, data_dir=data_dir, database=database)
        if not init:
            require_store(
                settings,
                what_else="work through the server with --target, or say --init to"
                " create a new store there",
            )
        return Where(settings=settings)
    if given("data_dir") or given("config_file") or given("database") or init:
        raise click.UsageError(
            "--data-dir, --database, --config and --init are for working on the store directly;"
            " with --target the server's own data is used"
        )
    if not target.strip():
        raise click.BadParameter("expected HOST:PORT", param_hint="--target")
    if not token or not token.strip():
        fail("no API token for --target: set EXCHANGE_TOKEN or pass --token-file (or --token)")
    return Where(target=target.strip(), token=token.strip(), ca_file=ca_file)


def _admin_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Add the --config/--data-dir/--database/--target/--token/--ca-file/--json options; the
    command receives ``where`` and ``as_json``."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        config_file: str | None,
        data_dir: str | None,
        database: str | None,
        target: str | None,
        token: str | None,
        ca_file: str | None,
        init: bool,
        **kwargs: Any,
    ) -> None:
        ctx = click.get_current_context()
        where = _where(ctx, config_file, data_dir, database, target, token, ca_file, init)
        fn(*args, where=where, **kwargs)

    command: Callable[..., None] = wrapper
    for option in reversed(_WHERE_OPTIONS):
        command = option(command)
    return command


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except errors.InvalidArgument as exc:
        raise click.BadParameter(exc.message) from None


def _tlp_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Tlp | None:
    if value is None:
        return None
    try:
        return parse_tlp(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_KINDS = click.Choice([k.value for k in PartnerKind], case_sensitive=False)
_ROLES = click.Choice([r.value for r in Role], case_sensitive=False)
_SECTOR_HELP = (
    "STIX industry-sector-ov word, e.g. non-profit, technology, government-national,"
    " financial-services; repeat for several."
)

# -- output ------------------------------------------------------------------------------


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _fields(pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in pairs) + 2
    for label, value in pairs:
        click.echo(f"{label + ':':<{width}}{value}")


def _partner_record(p: Partner) -> dict[str, Any]:
    return {
        "partner_id": p.partner_id,
        "name": p.name,
        "identity_id": p.identity_id,
        "kind": p.kind.value,
        "sectors": list(p.sectors),
        "roles": sorted(r.value for r in p.roles),
        "communities": sorted(p.communities),
        "default_tlp": p.default_tlp.value,
        "disabled": p.disabled,
    }


def _partner_fields(p: Partner) -> list[tuple[str, str]]:
    return [
        ("partner id", p.partner_id),
        ("name", p.name),
        ("identity", p.identity_id),
        ("kind", p.kind.value),
        ("sectors", ", ".join(p.sectors)),
        ("roles", ", ".join(sorted(r.value for r in p.roles)) or "-"),
        ("communities", ", ".join(sorted(p.communities)) or "-"),
        ("default tlp", p.default_tlp.value),
        ("status", "disabled" if p.disabled else "enabled"),
    ]


def _show_partner(p: Partner, as_json: bool) -> None:
    if as_json:
        write_json_line(_partner_record(p))
    else:
        _fields(_partner_fields(p))


def _community_record(c: Community) -> dict[str, Any]:
    return {"name": c.name, "description": c.description, "members": list(c.members)}


def _show_community(c: Community, as_json: bool) -> None:
    if as_json:
        write_json_line(_community_record(c))
    else:
        _fields(
            [
                ("community", c.name),
                ("description", c.description or "-"),
                ("members", ", ".join(c.members) or "-"),
            ]
        )


def _status(c: Credential, now: float) -> str:
    if c.revoked_at is not None:
        return "revoked"
    if c.problem(now) is not None:
        return "expired"
    return "active"


def _fingerprint(c: Credential) -> str | None:
    return c.digest.hex() if c.kind is CredentialKind.CERTIFICATE else None


def _credential_record(c: Credential, now: float) -> dict[str, Any]:
    return {
        "credential_id": c.credential_id,
        "partner_id": c.partner_id,
        "kind": c.kind.value,
        "status": _status(c, now),
        "created_at": _when(c.created_at),
        "expires_at": None if c.expires_at is None else _when(c.expires_at),
        "revoked_at": None if c.revoked_at is None else _when(c.revoked_at),
        "fingerprint": _fingerprint(c),
    }


def _show_credential(c: Credential, as_json: bool) -> None:
    now = time.time()
    if as_json:
        write_json_line(_credential_record(c, now))
        return
    pairs = [
        ("credential id", c.credential_id),
        ("partner id", c.partner_id),
        ("kind", c.kind.value),
        ("status", _status(c, now)),
        ("created", _when(c.created_at)),
        ("expires", _when(c.expires_at) if c.expires_at is not None else "never"),
    ]
    if c.revoked_at is not None:
        pairs.append(("revoked", _when(c.revoked_at)))
    fingerprint = _fingerprint(c)
    if fingerprint is not None:
        pairs.append(("fingerprint", fingerprint))
    _fields(pairs)


def _token_once() -> None:
    click.echo("The token is shown once; give it to the partner over a secure channel.", err=True)


# -- handing a new token over: printed once, or written to a file only its owner reads ------


class TokenFile:
    """``--token-out FILE``: created (mode 0600, never overwritten) before the registry
    changes, so that a token is not issued only to be lost; removed again when the
    change fails."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise click.BadParameter(
                f"{path} exists; a token file is never overwritten", param_hint="--token-out"
            ) from None
        except OSError as err:
            raise click.BadParameter(
                f"cannot create {path}: {err.strerror or err}", param_hint="--token-out"
            ) from None

    def write(self, secret: str) -> None:
        assert self._fd is not None
        os.write(self._fd, (secret + "\n").encode())
        os.close(self._fd)
        self._fd = None
        click.echo(f"The token is in {self.path} (readable only by you).", err=True)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _token_out_options(fn: Callable[..., None]) -> Callable[..., None]:
    """--token-out FILE and -q/--quiet for the commands that create a token; the command
    receives ``token_out`` (a :class:`TokenFile` or ``None``) and ``quiet``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, token_out: str | None, quiet: bool, **kwargs: Any) -> None:
        if quiet and token_out is None:
            raise click.UsageError(
                "--quiet prints only the id: give --token-out FILE to keep the token"
            )
        file = TokenFile(token_out) if token_out is not None else None
        try:
            fn(*args, token_out=file, quiet=quiet, **kwargs)
        finally:
            if file is not None:
                file.discard()  # only when the command failed before writing

    command = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        help="Print only the new id (for scripts: ID=$(exchange ...)); needs --token-out.",
    )(wrapper)
    return click.option(
        "--token-out",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="Write the new token to FILE (created readable only by you, never overwritten)"
        " instead of printing it: it then shows neither on screen nor in logs.",
    )(command)


def _hand_over(
    secret: str,
    token_out: TokenFile | None,
    quiet: bool,
    new_id: str,
    record: dict[str, Any] | None,
    pairs: Sequence[tuple[str, str]],
) -> None:
    """Print what a command that created a token shows: ``record`` as JSON (``None``: text
    with ``pairs``), the id alone with --quiet; the token goes to --token-out or is shown."""
    if token_out is not None:
        token_out.write(secret)
    if quiet:
        click.echo(new_id)
    elif record is not None:
        if token_out is None:
            record["token"] = secret
        else:
            record["token_file"] = token_out.path
        write_json_line(record)
    elif token_out is None:
        _fields([*pairs, ("token", secret)])
        _token_once()
    else:
        _fields(pairs)


_EPILOG_WHERE = """
Add --target HOST:PORT --token ADMIN_TOKEN to work through a running server
instead of on the data directory."""
