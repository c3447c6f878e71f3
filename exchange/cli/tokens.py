"""``exchange token``: issue, list and revoke credentials, bind client certificates."""

from __future__ import annotations

import time
from typing import IO

import click

from exchange.cli._admin import (
    _EPILOG_WHERE,
    TokenFile,
    Where,
    _admin_options,
    _credential_record,
    _duration,
    _fingerprint,
    _hand_over,
    _run,
    _show_credential,
    _status,
    _token_out_options,
    _when,
)
from exchange.cli._output import print_aligned, write_json_line

# -- exchange token --------------------------------------------------------------------------

_EXPIRES_HELP = "Expire after this long, e.g. 90d, 12h, 2w (default: never)."

__all__ = ["token"]


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
  exchange token issue kestrel-social-4d5e6f --token-out kestrel.token
"""
    + _EPILOG_WHERE,
)
@click.argument("partner_id")
@click.option("--expires", callback=_duration, metavar="DURATION", help=_EXPIRES_HELP)
@_token_out_options
@_admin_options
def token_issue(
    *,
    partner_id: str,
    expires: float | None,
    token_out: TokenFile | None,
    quiet: bool,
    where: Where,
    as_json: bool,
) -> None:
    """Issue a new token for a partner and print it (shown once).

    With --json it prints {"partner_id", "credential_id", "token", "expires_at"}
    ("token_file" instead of "token" with --token-out); with --quiet --token-out
    FILE only the credential id.
    """
    credential, secret = _run(where, lambda backend: backend.issue_token(partner_id, expires))
    expires_at = None if credential.expires_at is None else _when(credential.expires_at)
    record = (
        {
            "partner_id": credential.partner_id,
            "credential_id": credential.credential_id,
            "expires_at": expires_at,
        }
        if as_json
        else None
    )
    pairs = [
        ("partner id", credential.partner_id),
        ("credential id", credential.credential_id),
        ("expires", expires_at or "never"),
    ]
    _hand_over(secret, token_out, quiet, credential.credential_id, record, pairs)


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
            write_json_line(_credential_record(c, now))
        return
    if not credentials:
        click.echo(f"partner {partner_id} has no credentials", err=True)
        return
    print_aligned(
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
