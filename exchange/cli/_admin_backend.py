"""The operator's backend for ``exchange partner|community|token``: one interface
(``AdminBackend``) with two implementations, ``exchange.registry.Registry`` on the
local store and ``RemoteRegistry`` over a server's AdminService, so that every
command is written once (``exchange.cli.admin``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

import grpc
from exchange_protocol.pb import admin_pb2 as pb
from exchange_protocol.pb import admin_pb2_grpc as pb_grpc

from exchange import errors
from exchange.model import (
    DEFAULT_ROLES,
    Community,
    Credential,
    Partner,
    PartnerKind,
    Role,
    Tlp,
)
from exchange.services._convert import (
    KIND_TO_PB,
    ROLE_TO_PB,
    TLP_TO_PB,
    community_from_pb,
    credential_from_pb,
    duration_pb,
    partner_from_pb,
)

__all__ = ["REMOTE_TIMEOUT_S", "AdminBackend", "RemoteRegistry"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

REMOTE_TIMEOUT_S = 30.0


# -- the backend: the registry here, or a server's AdminService -----------------------------


class AdminBackend(Protocol):
    """The registry operations a command needs; ``Registry`` is the local one."""

    async def add_partner(
        self,
        name: str,
        *,
        kind: PartnerKind = ...,
        sectors: Iterable[str],
        roles: Iterable[Role] = ...,
        communities: Iterable[str] = ...,
        default_tlp: Tlp = ...,
        identity_id: str | None = ...,
    ) -> tuple[Partner, Credential, str]: ...

    async def get_partner(self, partner_id: str) -> Partner: ...

    async def list_partners(self) -> list[Partner]: ...

    async def update_partner(
        self,
        partner_id: str,
        *,
        name: str | None = ...,
        kind: PartnerKind | None = ...,
        sectors: Iterable[str] | None = ...,
        roles: Iterable[Role] | None = ...,
        default_tlp: Tlp | None = ...,
        disabled: bool | None = ...,
    ) -> Partner: ...

    async def disable_partner(self, partner_id: str) -> Partner: ...

    async def add_community(self, name: str, description: str = ...) -> Community: ...

    async def list_communities(self) -> list[Community]: ...

    async def join_community(self, name: str, partner_id: str) -> Community: ...

    async def leave_community(self, name: str, partner_id: str) -> Community: ...

    async def issue_token(
        self, partner_id: str, expires_in_s: float | None = ...
    ) -> tuple[Credential, str]: ...

    async def bind_certificate(
        self, partner_id: str, pem: bytes, expires_in_s: float | None = ...
    ) -> Credential: ...

    async def list_credentials(self, partner_id: str) -> list[Credential]: ...

    async def revoke_credential(self, partner_id: str, credential_id: str) -> Credential: ...


class RemoteRegistry:
    """``AdminBackend`` through a server's AdminService (needs an admin token)."""

    def __init__(
        self,
        target: str,
        token: str,
        root_certificates: bytes | None = None,
        timeout_s: float = REMOTE_TIMEOUT_S,
    ) -> None:
        self._target = target
        self._timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),)
        if root_certificates is None:
            self._channel = grpc.aio.insecure_channel(target)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.aio.secure_channel(target, credentials)
        self._stub = pb_grpc.AdminServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req
    ) -> Resp:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _remote_error(exc, self._target) from None

    async def add_partner(
        self,
        name: str,
        *,
        kind: PartnerKind = PartnerKind.OTHER,
        sectors: Iterable[str],
        roles: Iterable[Role] = DEFAULT_ROLES,
        communities: Iterable[str] = (),
        default_tlp: Tlp = Tlp.AMBER,
        identity_id: str | None = None,
    ) -> tuple[Partner, Credential, str]:
        request = pb.AddPartnerRequest(
            name=name,
            identity_id=identity_id or "",
            kind=KIND_TO_PB[kind],
            sectors=sectors,
            roles=[ROLE_TO_PB[r] for r in roles],
            communities=communities,
            default_tlp=TLP_TO_PB[default_tlp],
        )
        reply = await self._call(self._stub.AddPartner, request)
        return partner_from_pb(reply.partner), credential_from_pb(reply.credential), reply.token

    async def get_partner(self, partner_id: str) -> Partner:
        request = pb.GetPartnerRequest(partner_id=partner_id)
        return partner_from_pb((await self._call(self._stub.GetPartner, request)).partner)

    async def list_partners(self) -> list[Partner]:
        reply = await self._call(self._stub.ListPartners, pb.ListPartnersRequest())
        return [partner_from_pb(p) for p in reply.partners]

    async def update_partner(
        self,
        partner_id: str,
        *,
        name: str | None = None,
        kind: PartnerKind | None = None,
        sectors: Iterable[str] | None = None,
        roles: Iterable[Role] | None = None,
        default_tlp: Tlp | None = None,
        disabled: bool | None = None,
    ) -> Partner:
        request = pb.UpdatePartnerRequest(partner_id=partner_id)
        if name is not None:
            request.name = name
        if kind is not None:
            request.kind = KIND_TO_PB[kind]
        if sectors is not None:
            request.sectors.values.extend(sectors)
            request.sectors.SetInParent()
        if roles is not None:
            request.roles.values.extend(ROLE_TO_PB[r] for r in roles)
            request.roles.SetInParent()
        if default_tlp is not None:
            request.default_tlp = TLP_TO_PB[default_tlp]
        if disabled is not None:
            request.disabled = disabled
        return partner_from_pb((await self._call(self._stub.UpdatePartner, request)).partner)

    async def disable_partner(self, partner_id: str) -> Partner:
        request = pb.DisablePartnerRequest(partner_id=partner_id)
        return partner_from_pb((await self._call(self._stub.DisablePartner, request)).partner)

    async def add_community(self, name: str, description: str = "") -> Community:
        request = pb.AddCommunityRequest(name=name, description=description)
        return community_from_pb((await self._call(self._stub.AddCommunity, request)).community)

    async def list_communities(self) -> list[Community]:
        reply = await self._call(self._stub.ListCommunities, pb.ListCommunitiesRequest())
        return [community_from_pb(c) for c in reply.communities]

    async def join_community(self, name: str, partner_id: str) -> Community:
        request = pb.JoinCommunityRequest(community=name, partner_id=partner_id)
        return community_from_pb((await self._call(self._stub.JoinCommunity, request)).community)

    async def leave_community(self, name: str, partner_id: str) -> Community:
        request = pb.LeaveCommunityRequest(community=name, partner_id=partner_id)
        reply = await self._call(self._stub.LeaveCommunity, request)
        return community_from_pb(reply.community)

    async def issue_token(
        self, partner_id: str, expires_in_s: float | None = None
    ) -> tuple[Credential, str]:
        request = pb.IssueTokenRequest(partner_id=partner_id)
        if expires_in_s is not None:
            request.expires_in.CopyFrom(duration_pb(expires_in_s))
        reply = await self._call(self._stub.IssueToken, request)
        return credential_from_pb(reply.credential), reply.token

    async def bind_certificate(
        self, partner_id: str, pem: bytes, expires_in_s: float | None = None
    ) -> Credential:
        request = pb.BindCertificateRequest(partner_id=partner_id, certificate_pem=pem)
        if expires_in_s is not None:
            request.expires_in.CopyFrom(duration_pb(expires_in_s))
        reply = await self._call(self._stub.BindCertificate, request)
        return credential_from_pb(reply.credential)

    async def list_credentials(self, partner_id: str) -> list[Credential]:
        request = pb.ListCredentialsRequest(partner_id=partner_id)
        reply = await self._call(self._stub.ListCredentials, request)
        return [credential_from_pb(c) for c in reply.credentials]

    async def revoke_credential(self, partner_id: str, credential_id: str) -> Credential:
        request = pb.RevokeCredentialRequest(partner_id=partner_id, credential_id=credential_id)
        reply = await self._call(self._stub.RevokeCredential, request)
        return credential_from_pb(reply.credential)


_REMOTE_ERRORS: dict[grpc.StatusCode, type[errors.ExchangeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
}


def _remote_error(exc: grpc.aio.AioRpcError, target: str) -> errors.ExchangeError:
    """The server's answer as the error the local registry would have raised."""
    code, details = exc.code(), exc.details() or ""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.Unavailable(f"cannot reach the exchange at {target}: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.Unauthenticated(
            f"authentication failed: {details} (check --token / EXCHANGE_TOKEN)"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDenied(f"permission denied: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return errors.ExchangeError(
            f"the exchange at {target} does not offer the admin API; is it an older version?"
        )
    if code in _REMOTE_ERRORS:
        return _REMOTE_ERRORS[code](details)
    return errors.ExchangeError(f"{code.name}: {details}")
