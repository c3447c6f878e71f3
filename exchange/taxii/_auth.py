"""TAXII credentials: HTTP Basic (user = partner id, password = token) or Bearer,
and the TLS client certificate, all checked by exchange.auth as gRPC calls are."""

from __future__ import annotations

import base64
import binascii
import ssl

from aiohttp import web

from exchange.auth import Authenticator, Caller
from exchange.errors import Unauthenticated

__all__ = ["authenticate"]

_MAX_AUTHORIZATION = 4096


def _peer_certificate(request: web.Request) -> dict[str, list[bytes]] | None:
    """The TLS peer's certificate as gRPC's auth context names it (PEM)."""
    transport = request.transport
    tls = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(tls, ssl.SSLObject):
        return None
    der = tls.getpeercert(binary_form=True)
    if not der:
        return None
    return {"x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()]}


async def authenticate(auth: Authenticator, request: web.Request) -> Caller:
    """The caller, or Unauthenticated / PermissionDenied as for a gRPC call."""
    header = request.headers.get("Authorization")
    user: str | None = None
    metadata: list[tuple[str, str]] = []
    if header is not None:
        if len(header) > _MAX_AUTHORIZATION:
            raise Unauthenticated("the Authorization header is too long to hold a token")
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (ValueError, binascii.Error):
                raise Unauthenticated(
                    "Basic credentials are not base64 of 'partner-id:token'"
                ) from None
            user, colon, token = decoded.partition(":")
            if not colon or not token:
                raise Unauthenticated(
                    "Basic credentials must be the partner id as user and a token as password"
                )
            metadata.append(("authorization", f"Bearer {token}"))
        elif scheme.lower() == "bearer":
            metadata.append(("authorization", header.strip()))
        else:
            raise Unauthenticated("Authorization must be 'Basic' (partner id, token) or 'Bearer'")
    certificate = _peer_certificate(request)
    if not metadata and certificate is None:
        raise Unauthenticated(
            "missing credentials: send 'Authorization: Basic' with your partner id as user and"
            " a token as password, or 'Authorization: Bearer <token>'"
        )
    caller = await auth.authenticate(metadata, certificate)
    if user and user != caller.partner.partner_id:
        # Same words whether the token is someone else's or the user name is a typo.
        raise Unauthenticated("the user name is not the partner id this token belongs to")
    return caller
