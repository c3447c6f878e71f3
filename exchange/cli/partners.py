"""``exchange partner`` and ``exchange community``: register partners, group them."""

from __future__ import annotations

import click

from exchange.cli._admin import (
    _EPILOG_WHERE,
    _KINDS,
    _ROLES,
    _SECTOR_HELP,
    TokenFile,
    Where,
    _admin_options,
    _community_record,
    _hand_over,
    _partner_fields,
    _partner_record,
    _run,
    _show_community,
    _show_partner,
    _tlp_option,
    _token_out_options,
)
from exchange.cli._output import print_aligned, write_json_line
from exchange.model import (
    DEFAULT_ROLES,
    PartnerKind,
    Role,
    Tlp,
)

__all__ = ["community", "partner"]


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
  NGO=$(exchange partner add --name "Harbor Light" --sector non-profit --token-out ngo.token -q)
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
@_token_out_options
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
    token_out: TokenFile | None,
    quiet: bool,
    where: Where,
    as_json: bool,
) -> None:
    """Register a partner and print its first token (shown once, stored only as a hash).

    With --json it prints {"partner_id", "identity_id", "token"} ("token_file"
    instead of "token" with --token-out); with --quiet --token-out FILE only the
    partner id, e.g. NGO=$(exchange partner add ... --token-out ngo.token -q).
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
    record = {"partner_id": new.partner_id, "identity_id": new.identity_id} if as_json else None
    _hand_over(secret, token_out, quiet, new.partner_id, record, _partner_fields(new))


@partner.command("list", epilog=_EPILOG_WHERE)
@_admin_options
def partner_list(*, where: Where, as_json: bool) -> None:
    """List every partner, disabled ones too, oldest first."""
    partners = _run(where, lambda backend: backend.list_partners())
    if as_json:
        for p in partners:
            write_json_line(_partner_record(p))
        return
    if not partners:
        click.echo("no partners yet; add one with: exchange partner add", err=True)
        return
    print_aligned(
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
            write_json_line(_community_record(c))
        return
    if not communities:
        click.echo("no communities yet; add one with: exchange community add NAME", err=True)
        return
    print_aligned(
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
