"""AdminService: partners, communities and credentials, for partners with the
``admin`` role. Thin: authenticate, check the role, protobuf <-> ``Registry``
(which checks every value)."""

from __future__ import annotations

from typing import Any

import grpc
from exchange_protocol.pb import admin_pb2 as pb
from exchange_protocol.pb import admin_pb2_grpc as pb_grpc

from exchange.auth import Authenticator, require
from exchange.errors import InvalidArgument
from exchange.model import DEFAULT_ROLES, PartnerKind, Role, Tlp
from exchange.registry import Registry
from exchange.services._convert import (
    community_to_pb,
    credential_to_pb,
    kind_from_pb,
    partner_to_pb,
    roles_from_pb,
    tlp_from_pb,
)
from exchange.services._status import guard_unary

__all__ = ["AdminService"]

Context = grpc.aio.ServicerContext[Any, Any]


class AdminService(pb_grpc.AdminServiceServicer):
    def __init__(self, auth: Authenticator, registry: Registry) -> None:
        self._auth = auth
        self._registry = registry

    async def _admin(self, context: Context, action: str) -> Registry:
        """The registry, acting as the calling admin partner (recorded as the actor)."""
        caller = await self._auth.authenticate(
            context.invocation_metadata() or (), context.auth_context()
        )
        require(caller.partner, Role.ADMIN, action)
        return self._registry.acting_as(caller.partner.partner_id)

    # -- partners ---------------------------------------------------------------------

    @guard_unary
    async def AddPartner(
        self, request: pb.AddPartnerRequest, context: Context
    ) -> pb.AddPartnerResponse:
        registry = await self._admin(context, "add partners")
        partner, credential, token = await registry.add_partner(
            request.name,
            kind=kind_from_pb(request.kind) or PartnerKind.OTHER,
            sectors=request.sectors,
            roles=roles_from_pb(request.roles) or DEFAULT_ROLES,
            communities=request.communities,
            default_tlp=tlp_from_pb(request.default_tlp, "default_tlp") or Tlp.AMBER,
            identity_id=request.identity_id or None,
        )
        return pb.AddPartnerResponse(
            partner=partner_to_pb(partner), token=token, credential=credential_to_pb(credential)
        )

    @guard_unary
    async def ListPartners(
        self, request: pb.ListPartnersRequest, context: Context
    ) -> pb.ListPartnersResponse:
        registry = await self._admin(context, "list partners")
        partners = await registry.list_partners()
        return pb.ListPartnersResponse(partners=[partner_to_pb(p) for p in partners])

    @guard_unary
    async def GetPartner(
        self, request: pb.GetPartnerRequest, context: Context
    ) -> pb.GetPartnerResponse:
        registry = await self._admin(context, "look partners up")
        partner = await registry.get_partner(request.partner_id)
        return pb.GetPartnerResponse(partner=partner_to_pb(partner))

    @guard_unary
    async def UpdatePartner(
        self, request: pb.UpdatePartnerRequest, context: Context
    ) -> pb.UpdatePartnerResponse:
        registry = await self._admin(context, "update partners")
        kind = None
        if request.HasField("kind"):
            kind = kind_from_pb(request.kind)
            if kind is None:
                raise _unspecified("kind", "PARTNER_KIND_NGO")
        default_tlp = None
        if request.HasField("default_tlp"):
            default_tlp = tlp_from_pb(request.default_tlp, "default_tlp")
            if default_tlp is None:
                raise _unspecified("default_tlp", "TLP_AMBER")
        partner = await registry.update_partner(
            request.partner_id,
            name=request.name if request.HasField("name") else None,
            kind=kind,
            sectors=request.sectors.values if request.HasField("sectors") else None,
            roles=roles_from_pb(request.roles.values) if request.HasField("roles") else None,
            default_tlp=default_tlp,
            disabled=request.disabled if request.HasField("disabled") else None,
        )
        return pb.UpdatePartnerResponse(partner=partner_to_pb(partner))

    @guard_unary
    async def DisablePartner(
        self, request: pb.DisablePartnerRequest, context: Context
    ) -> pb.DisablePartnerResponse:
        registry = await self._admin(context, "disable partners")
        partner = await registry.disable_partner(request.partner_id)
        return pb.DisablePartnerResponse(partner=partner_to_pb(partner))

    # -- communities ------------------------------------------------------------------

    @guard_unary
    async def AddCommunity(
        self, request: pb.AddCommunityRequest, context: Context
    ) -> pb.AddCommunityResponse:
        registry = await self._admin(context, "add communities")
        community = await registry.add_community(request.name, request.description)
        return pb.AddCommunityResponse(community=community_to_pb(community))

    @guard_unary
    async def ListCommunities(
        self, request: pb.ListCommunitiesRequest, context: Context
    ) -> pb.ListCommunitiesResponse:
        registry = await self._admin(context, "list communities")
        communities = await registry.list_communities()
        return pb.ListCommunitiesResponse(communities=[community_to_pb(c) for c in communities])

    @guard_unary
    async def JoinCommunity(
        self, request: pb.JoinCommunityRequest, context: Context
    ) -> pb.JoinCommunityResponse:
        registry = await self._admin(context, "change community memberships")
        community = await registry.join_community(request.community, request.partner_id)
        return pb.JoinCommunityResponse(community=community_to_pb(community))

    @guard_unary
    async def LeaveCommunity(
        self, request: pb.LeaveCommunityRequest, context: Context
    ) -> pb.LeaveCommunityResponse:
        registry = await self._admin(context, "change community memberships")
        community = await registry.leave_community(request.community, request.partner_id)
        return pb.LeaveCommunityResponse(community=community_to_pb(community))

    # -- credentials ------------------------------------------------------------------

    @guard_unary
    async def IssueToken(
        self, request: pb.IssueTokenRequest, context: Context
    ) -> pb.IssueTokenResponse:
        registry = await self._admin(context, "issue tokens")
        expires_in = (
            request.expires_in.ToNanoseconds() / 1e9 if request.HasField("expires_in") else None
        )
        credential, token = await registry.issue_token(request.partner_id, expires_in)
        return pb.IssueTokenResponse(credential=credential_to_pb(credential), token=token)

    @guard_unary
    async def BindCertificate(
        self, request: pb.BindCertificateRequest, context: Context
    ) -> pb.BindCertificateResponse:
        registry = await self._admin(context, "bind certificates")
        expires_in = (
            request.expires_in.ToNanoseconds() / 1e9 if request.HasField("expires_in") else None
        )
        credential = await registry.bind_certificate(
            request.partner_id, request.certificate_pem, expires_in
        )
        return pb.BindCertificateResponse(credential=credential_to_pb(credential))

    @guard_unary
    async def ListCredentials(
        self, request: pb.ListCredentialsRequest, context: Context
    ) -> pb.ListCredentialsResponse:
        registry = await self._admin(context, "list credentials")
        credentials = await registry.list_credentials(request.partner_id)
        return pb.ListCredentialsResponse(credentials=[credential_to_pb(c) for c in credentials])

    @guard_unary
    async def RevokeCredential(
        self, request: pb.RevokeCredentialRequest, context: Context
    ) -> pb.RevokeCredentialResponse:
        registry = await self._admin(context, "revoke credentials")
        credential = await registry.revoke_credential(request.partner_id, request.credential_id)
        return pb.RevokeCredentialResponse(credential=credential_to_pb(credential))


def _unspecified(field: str, example: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: set but unspecified; expected a value such as {example}")
