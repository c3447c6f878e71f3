"""``exchange partner|community|token``: the operator's commands.

Each command works on the data directory (``--data-dir``/``--config``; also
while the server runs, which notices the change) or, with ``--target``,
through a running server's AdminService with an admin partner's token. Both
ways go through one ``AdminBackend`` interface: ``Registry`` itself on the
local store, ``RemoteRegistry`` over gRPC; so each command is written once and
every value is checked in one place (``exchange.registry``).

Output is aligned text, or with ``--json`` one JSON object per line. Errors are
one line on stderr (``exchange: ...``) with exit code 1; a wrong command line
exits 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any, NoReturn, TypeVar

import click
import orjson

from exchange import errors
from exchange.cli._admin_backend import AdminBackend, RemoteRegistry
from exchange.cli._options import ca_file_option, token_option
from exchange.config import Settings, load_settings
from exchange.model import (
    DEFAULT_ROLES,
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

__all__ = [
    "community",
    "config_option",
    "data_dir_option",
    "database_option",
    "load_cli_settings",
    "partner",
    "token",
]

T = TypeVar("T")

EXIT_ERROR = 1

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
        _fail(exc.message)


def _fail(message: str) -> NoReturn:
    click.echo(f"exchange: {message}", err=True)
    sys.exit(EXIT_ERROR)


# -- options shared by every command -----------------------------------------------------

_WHERE_OPTIONS = (
    config_option,
    data_dir_option,
    database_option,
    click.option(
        "--target",
        metavar="HOST:PORT",
        help="Work through the exchange server at HOST:PORT (its admin API) instead of"
        " on the data directory; needs an admin partner's --token.",
    ),
    token_option("With --target: the API token of a partner with the 'admin' role."),
    ca_file_option("With --target: PEM root certificates, connect with TLS (default: plaintext)."),
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
) -> Where:
    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE

    if target is None:
        if given("token") or given("ca_file"):
            raise click.UsageError(
                "--token and --ca-file are for --target HOST:PORT; without --target the"
                " command works on the data directory"
            )
        return Where(settings=load_cli_settings(config_file, data_dir=data_dir, database=database))
    if given("data_dir") or given("config_file") or given("database"):
        raise click.UsageError(
            "--data-dir, --database and --config are for working on the store directly;"
            " with --target the server's own data is used"
        )
    if not target.strip():
        raise click.BadParameter("expected HOST:PORT", param_hint="--target")
    if not token or not token.strip():
        _fail("no API token for --target: pass --token or set EXCHANGE_TOKEN")
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
        **kwargs: Any,
    ) -> None:
        ctx = click.get_current_context()
        where = _where(ctx, config_file, data_dir, database, target, token, ca_file)
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


def _json_line(record: dict[str, Any]) -> None:
    click.echo(orjson.dumps(record).decode())


def _fields(pairs: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in pairs) + 2
    for label, value in pairs:
        click.echo(f"{label + ':':<{width}}{value}")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [f"{cell:<{widths[i]}}" for i, cell in enumerate(row[:-1])]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


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
        _json_line(_partner_record(p))
    else:
        _fields(_partner_fields(p))


def _community_record(c: Community) -> dict[str, Any]:
    return {"name": c.name, "description": c.description, "members": list(c.members)}


def _show_community(c: Community, as_json: bool) -> None:
    if as_json:
        _json_line(_community_record(c))
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
        _json_line(_credential_record(c, now))
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


# -- exchange partner ------------------------------------------------------------------------

_EPILOG_WHERE = """
Add --target HOST:PORT --token ADMIN_TOKEN to work through a running server
instead of on the data directory."""


@click.group(
    epilog="""\b
Examples:
  exchange partner add --name "Harbor Light Alliance" --kind ngo --sector non-profit
  exchange partner list
  exchange partner update harbor-light-alliance-1a2b3c --role submit --role subscribe
  exchange partner disable harbor-light-alliance-1a2b3c
  exchange partner list --target exchange.example.org:50051 --token "$ADMIN_TOKEN"
"""
)
def partner() -> None:
    """Register, inspect, change and disable partners.

    Works on the data directory (also while the server runs: it notices the
    change), or with --target through a running server and an admin's token.
    """


@partner.command(
    "add",
    epilog="""\b
Examples:
  exchange partner add --name "Harbor Light Alliance" --kind ngo --sector non-profit
  exchange partner add --name "Kestrel Social" --kind tech --sector technology \\
      --sector communications --community sea-taskforce --json
  exchange partner add --name "Exchange Operations" --sector non-profit --role admin
"""
    + _EPILOG_WHERE,
)
@click.option("--name", required=True, help="The organisation's name.")
@click.option("--sector", "sectors", multiple=True, required=True, help=_SECTOR_HELP)
@click.option(
    "--kind",
    type=_KINDS,
    default=PartnerKind.OTHER.value,
    show_default=True,
    help="What kind of organisation it is (submitters may exclude kinds).",
)
@click.option(
    "--role",
    "roles",
    type=_ROLES,
    multiple=True,
    help="What it may do; repeat for several. Default: submit and subscribe.",
)
@click.option(
    "--community",
    "communities",
    multiple=True,
    help="A community to join (it must exist); repeat for several.",
)
@click.option(
    "--identity-id",
    help="Keep an existing STIX identity (identity--UUID); default: a new one.",
)
@click.option(
    "--default-tlp",
    default="amber",
    show_default=True,
    callback=_tlp_option,
    help="TLP given to this partner's objects that carry no TLP marking.",
)
@_admin_options
def partner_add(
    *,
    name: str,
    sectors: tuple[str, ...],
    kind: str,
    roles: tuple[str, ...],
    communities: tuple[str, ...],
    identity_id: str | None,
    default_tlp: Tlp,
    where: Where,
    as_json: bool,
) -> None:
    """Register a partner and print its first token (shown once, stored only as a hash).

    With --json it prints {"partner_id", "identity_id", "token"}.
    """
    new, _credential, secret = _run(
        where,
        lambda backend: backend.add_partner(
            name,
            kind=PartnerKind(kind.lower()),
            sectors=sectors,
            roles=[Role(r.lower()) for r in roles] or DEFAULT_ROLES,
            communities=communities,
            default_tlp=default_tlp,
            identity_id=identity_id,
        ),
    )
    if as_json:
        _json_line({"partner_id": new.partner_id, "identity_id": new.identity_id, "token": secret})
        return
    _fields([*_partner_fields(new), ("token", secret)])
    _token_once()


@partner.command("list", epilog=_EPILOG_WHERE)
@_admin_options
def partner_list(*, where: Where, as_json: bool) -> None:
    """List every partner, disabled ones too, oldest first."""
    partners = _run(where, lambda backend: backend.list_partners())
    if as_json:
        for p in partners:
            _json_line(_partner_record(p))
        return
    if not partners:
        click.echo("no partners yet; add one with: exchange partner add", err=True)
        return
    _table(
        ("PARTNER ID", "KIND", "ROLES", "TLP", "STATUS", "SECTORS", "NAME"),
        [
            (
                p.partner_id,
                p.kind.value,
                ",".join(sorted(r.value for r in p.roles)),
                p.default_tlp.value,
                "disabled" if p.disabled else "enabled",
                ",".join(p.sectors),
                p.name,
            )
            for p in partners
        ],
    )


@partner.command("show", epilog=_EPILOG_WHERE)
@click.argument("partner_id")
@_admin_options
def partner_show(*, partner_id: str, where: Where, as_json: bool) -> None:
    """Show one partner: identity, kind, sectors, roles, communities, status."""
    _show_partner(_run(where, lambda backend: backend.get_partner(partner_id)), as_json)


@partner.command(
    "update",
    epilog="""\b
Examples:
  exchange partner update kestrel-social-4d5e6f --kind tech --default-tlp green
  exchange partner update kestrel-social-4d5e6f --role submit --role subscribe --role audit
  exchange partner update kestrel-social-4d5e6f --enable
"""
    + _EPILOG_WHERE,
)
@click.argument("partner_id")
@click.option("--name", help="A new name (the partner id stays).")
@click.option("--kind", type=_KINDS, help="A new kind of organisation.")
@click.option("--sector", "sectors", multiple=True, help="Replace the sectors; repeat for several.")
@click.option(
    "--role", "roles", type=_ROLES, multiple=True, help="Replace the roles; repeat for several."
)
@click.option(
    "--default-tlp", callback=_tlp_option, help="A new TLP for objects without a marking."
)
@click.option("--enable", is_flag=True, help="Re-enable a disabled partner.")
@_admin_options
def partner_update(
    *,
    partner_id: str,
    name: str | None,
    kind: str | None,
    sectors: tuple[str, ...],
    roles: tuple[str, ...],
    default_tlp: Tlp | None,
    enable: bool,
    where: Where,
    as_json: bool,
) -> None:
    """Change a partner; options not given stay as they are.

    Lists (--sector, --role) replace the current ones. Memberships change with
    `exchange community join|leave`.
    """
    updated = _run(
        where,
        lambda backend: backend.update_partner(
            partner_id,
            name=name,
            kind=None if kind is None else PartnerKind(kind.lower()),
            sectors=sectors or None,
            roles=[Role(r.lower()) for r in roles] or None,
            default_tlp=default_tlp,
            disabled=False if enable else None,
        ),
    )
    _show_partner(updated, as_json)


@partner.command("disable", epilog=_EPILOG_WHERE)
@click.argument("partner_id")
@_admin_options
def partner_disable(*, partner_id: str, where: Where, as_json: bool) -> None:
    """Disable a partner: its calls and open streams fail, it receives nothing.

    Its tokens stay as they are; `exchange partner update ID --enable` undoes this.
    """
    _show_partner(_run(where, lambda backend: backend.disable_partner(partner_id)), as_json)


# -- exchange community ----------------------------------------------------------------------


@click.group(
    epilog="""\b
Examples:
  exchange community add sea-taskforce --description "South-East Asia task force"
  exchange community join sea-taskforce --partner kestrel-social-4d5e6f
  exchange community list
"""
)
def community() -> None:
    """Create communities and manage their members.

    A community is a named group of partners that TLP:AMBER objects can be
    shared with. Works on the data directory, or with --target through a
    running server and an admin's token.
    """


@community.command("add", epilog=_EPILOG_WHERE)
@click.argument("name")
@click.option("--description", default="", help="What the community is for.")
@_admin_options
def community_add(*, name: str, description: str, where: Where, as_json: bool) -> None:
    """Create a community called NAME.

    NAME: 1-63 lower-case letters, digits and '-', starting and ending with a
    letter or digit (it is part of bus topic names), e.g. sea-taskforce.
    """
    _show_community(_run(where, lambda backend: backend.add_community(name, description)), as_json)


@community.command("list", epilog=_EPILOG_WHERE)
@_admin_options
def community_list(*, where: Where, as_json: bool) -> None:
    """List every community with its members."""
    communities = _run(where, lambda backend: backend.list_communities())
    if as_json:
        for c in communities:
            _json_line(_community_record(c))
        return
    if not communities:
        click.echo("no communities yet; add one with: exchange community add NAME", err=True)
        return
    _table(
        ("NAME", "MEMBERS", "DESCRIPTION"),
        [(c.name, ",".join(c.members) or "-", c.description) for c in communities],
    )


_partner_option = click.option(
    "--partner", "partner_id", required=True, metavar="PARTNER_ID", help="The partner's id."
)


@community.command("join", epilog=_EPILOG_WHERE)
@click.argument("name")
@_partner_option
@_admin_options
def community_join(*, name: str, partner_id: str, where: Where, as_json: bool) -> None:
    """Make a partner a member of community NAME (joining twice changes nothing)."""
    _show_community(_run(where, lambda backend: backend.join_community(name, partner_id)), as_json)


@community.command("leave", epilog=_EPILOG_WHERE)
@click.argument("name")
@_partner_option
@_admin_options
def community_leave(*, name: str, partner_id: str, where: Where, as_json: bool) -> None:
    """End a partner's membership of community NAME."""
    _show_community(_run(where, lambda backend: backend.leave_community(name, partner_id)), as_json)


# -- exchange token --------------------------------------------------------------------------

_EXPIRES_HELP = "Expire after this long, e.g. 90d, 12h, 2w (default: never)."


@click.group(
    epilog="""\b
Examples:
  exchange token issue kestrel-social-4d5e6f --expires 90d
  exchange token list kestrel-social-4d5e6f
  exchange token revoke kestrel-social-4d5e6f tok_0a1b2c3d4e
  exchange token bind-cert kestrel-social-4d5e6f kestrel-client.pem --expires 52w
"""
)
def token() -> None:
    """Issue, list and revoke a partner's tokens and client certificates.

    Secrets are shown once and stored only as hashes. A revoked credential
    fails from the next call on, open streams included. Works on the data
    directory, or with --target through a running server and an admin's token.
    """


@token.command(
    "issue",
    epilog="""\b
Examples:
  exchange token issue kestrel-social-4d5e6f
  exchange token issue kestrel-social-4d5e6f --expires 90d --json
"""
    + _EPILOG_WHERE,
)
@click.argument("partner_id")
@click.option("--expires", callback=_duration, metavar="DURATION", help=_EXPIRES_HELP)
@_admin_options
def token_issue(*, partner_id: str, expires: float | None, where: Where, as_json: bool) -> None:
    """Issue a new token for a partner and print it (shown once).

    With --json it prints {"partner_id", "credential_id", "token", "expires_at"}.
    """
    credential, secret = _run(where, lambda backend: backend.issue_token(partner_id, expires))
    if as_json:
        _json_line(
            {
                "partner_id": credential.partner_id,
                "credential_id": credential.credential_id,
                "token": secret,
                "expires_at": None
                if credential.expires_at is None
                else _when(credential.expires_at),
            }
        )
        return
    _fields(
        [
            ("partner id", credential.partner_id),
            ("credential id", credential.credential_id),
            ("expires", "never" if credential.expires_at is None else _when(credential.expires_at)),
            ("token", secret),
        ]
    )
    _token_once()


@token.command("list", epilog=_EPILOG_WHERE)
@click.argument("partner_id")
@_admin_options
def token_list(*, partner_id: str, where: Where, as_json: bool) -> None:
    """List a partner's tokens and certificates, revoked and expired ones too
    (never the secrets)."""
    credentials = _run(where, lambda backend: backend.list_credentials(partner_id))
    now = time.time()
    if as_json:
        for c in credentials:
            _json_line(_credential_record(c, now))
        return
    if not credentials:
        click.echo(f"partner {partner_id} has no credentials", err=True)
        return
    _table(
        ("CREDENTIAL ID", "KIND", "STATUS", "CREATED", "EXPIRES", "FINGERPRINT"),
        [
            (
                c.credential_id,
                c.kind.value,
                _status(c, now),
                _when(c.created_at),
                _when(c.expires_at) if c.expires_at is not None else "never",
                _fingerprint(c) or "-",
            )
            for c in credentials
        ],
    )


@token.command("revoke", epilog=_EPILOG_WHERE)
@click.argument("partner_id")
@click.argument("credential_id")
@_admin_options
def token_revoke(*, partner_id: str, credential_id: str, where: Where, as_json: bool) -> None:
    """Revoke a token or certificate (CREDENTIAL_ID from `exchange token list`).

    Calls using it fail from the next one on; streams open with it end.
    Revoking twice keeps the first revocation time.
    """
    _show_credential(
        _run(where, lambda backend: backend.revoke_credential(partner_id, credential_id)),
        as_json,
    )


@token.command(
    "bind-cert",
    epilog="""\b
Example:
  exchange token bind-cert kestrel-social-4d5e6f kestrel-client.pem --expires 52w
"""
    + _EPILOG_WHERE,
)
@click.argument("partner_id")
@click.argument("cert_file", type=click.File("rb"))
@click.option("--expires", callback=_duration, metavar="DURATION", help=_EXPIRES_HELP)
@_admin_options
def token_bind_cert(
    *,
    partner_id: str,
    cert_file: IO[bytes],
    expires: float | None,
    where: Where,
    as_json: bool,
) -> None:
    """Let a partner sign in with the TLS client certificate in CERT_FILE (PEM, "-"
    for stdin); its SHA-256 fingerprint is what is bound."""
    pem = cert_file.read()
    _show_credential(
        _run(where, lambda backend: backend.bind_certificate(partner_id, pem, expires)),
        as_json,
    )
