"""TAXII 2.1 endpoints (OASIS TAXII 2.1 CS01, section 4-5): thin handlers over the
pipeline modules, like the gRPC servicers (services/exchange.py)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson
from aiohttp import web

from exchange.audit.entries import Action, Event
from exchange.audit.recorder import AuditRecorder
from exchange.auth import Authenticator, Caller
from exchange.errors import InvalidBundle
from exchange.ingest import Ingest
from exchange.model import Partner
from exchange.quota import PartnerQuota
from exchange.store import Store
from exchange.taxii._auth import authenticate
from exchange.taxii._collections import TaxiiCollection, collection_of, collections_of
from exchange.taxii._errors import TaxiiError
from exchange.taxii._media import STIX_MEDIA_TYPE, TAXII_MEDIA_TYPE, check_content_type
from exchange.taxii._paging import date_added, encode_next
from exchange.taxii._reads import Page, lookup_recorded, read_page, requested
from exchange.taxii._status import Statuses, status_resource

__all__ = ["API_ROOT", "Handlers", "taxii_response"]

API_ROOT = "exchange"


def taxii_response(
    doc: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return taxii_bytes(orjson.dumps(doc), status, headers)


def taxii_bytes(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=body, status=status, headers={"Content-Type": TAXII_MEDIA_TYPE, **(headers or {})}
    )


def _paged(page: Page, key: str, listed: bytes) -> bytes:
    """An envelope-shaped answer: ``more``, ``next`` when there is more, and the list."""
    head: dict[str, object] = {"more": page.next_seq is not None}
    if page.next_seq is not None:
        head["next"] = encode_next(page.next_seq)
    # The stored bodies are compact JSON already: joined, never decoded again.
    return orjson.dumps(head)[:-1] + b',"' + key.encode() + b'":[' + listed + b"]}"


@dataclass(frozen=True, slots=True)
class Handlers:
    auth: Authenticator
    ingest: Ingest
    store: Store
    recorder: AuditRecorder
    statuses: Statuses
    max_content_length: int
    # The partner quotas gRPC admission uses (limits.max_calls_per_partner,
    # limits.max_submissions_per_partner): one budget whichever protocol a partner uses.
    calls: PartnerQuota
    submissions: PartnerQuota

    def routes(self) -> list[web.RouteDef]:
        root = f"/{API_ROOT}"
        collection = root + "/collections/{collection}"
        return [
            web.get("/taxii2/", self.discovery),
            web.get(root + "/", self.api_root),
            web.get(root + "/collections/", self.collections),
            web.get(collection + "/", self.collection),
            web.get(collection + "/objects/", self.objects),
            web.post(collection + "/objects/", self.add_objects),
            web.get(collection + "/objects/{object}/", self.object),
            web.get(collection + "/objects/{object}/versions/", self.versions),
            web.get(collection + "/manifest/", self.manifest),
            web.get(root + "/status/{status}/", self.status),
        ]

    async def _caller(self, request: web.Request) -> Caller:
        return await authenticate(self.auth, request)

    async def _collection(
        self, request: web.Request, *, write: bool = False
    ) -> tuple[Partner, TaxiiCollection]:
        partner = (await self._caller(request)).partner
        found = _found(partner, request)
        if write and not found.can_write(partner):
            raise TaxiiError(
                403,
                "Forbidden",
                f"partner {partner.partner_id} may not add objects to collection {found.id}"
                " (its can_write is false: the 'submit' role is needed, and only the inbox and"
                " community collections take objects)",
            )
        if not write and not found.can_read(partner):
            raise TaxiiError(
                403,
                "Forbidden",
                f"partner {partner.partner_id} may not read collection {found.id} (its"
                " can_read is false: the 'subscribe' role is needed, and the inbox is write"
                " only)",
            )
        return partner, found

    # -- discovery, API root, collections ----------------------------------------------
    async def discovery(self, request: web.Request) -> web.Response:
        await self._caller(request)
        root = f"{request.scheme}://{request.host}/{API_ROOT}/"
        return taxii_response(
            {
                "title": "Trafficking indicator exchange",
                "description": "STIX 2.1 indicators shared under each submitter's rules"
                " (TLP 2.0, communities, named partners).",
                "default": root,
                "api_roots": [root],
            }
        )

    async def api_root(self, request: web.Request) -> web.Response:
        await self._caller(request)
        return taxii_response(
            {
                "title": "Exchange",
                "description": "Your collections: what you may receive, your inbox, and one"
                " per community you belong to.",
                "versions": [TAXII_MEDIA_TYPE],
                "max_content_length": self.max_content_length,
            }
        )

    async def collections(self, request: web.Request) -> web.Response:
        partner = (await self._caller(request)).partner
        return taxii_response(
            {"collections": [c.resource(partner) for c in collections_of(partner)]}
        )

    async def collection(self, request: web.Request) -> web.Response:
        partner = (await self._caller(request)).partner
        return taxii_response(_found(partner, request).resource(partner))

    # -- reads ---------------------------------------------------------------------------
    async def _page(
        self, request: web.Request, object_id: str | None = None, default_version: str = "last"
    ) -> tuple[Partner, Page]:
        """A page of the collection the request names, within the partner's call quota;
        for one object (``object_id``) a LOOKUP entry, and 404 when it is not there."""
        partner, collection = await self._collection(request)
        query = requested(request.query, object_id=object_id, default_version=default_version)
        with self.calls.hold(partner.partner_id):
            page = await read_page(self.store, partner, collection, query)
        if object_id is not None:
            await lookup_recorded(self.recorder, partner, object_id, page.items)
            if not page.items and query.after_seq == 0:
                raise self._no_object(partner, object_id)
        return partner, page

    async def objects(self, request: web.Request) -> web.Response:
        return self._objects_answer(*await self._page(request))

    async def object(self, request: web.Request) -> web.Response:
        return self._objects_answer(*await self._page(request, request.match_info["object"]))

    def _objects_answer(self, partner: Partner, page: Page) -> web.Response:
        # What a Subscribe stream records for the same versions (a DELIVER entry).
        self.recorder.note_deliveries(partner.partner_id, page.items, time.time(), "taxii")
        body = _paged(page, "objects", b",".join(s.obj.body for s in page.items))
        return taxii_bytes(body, headers=page.headers())

    async def versions(self, request: web.Request) -> web.Response:
        _, page = await self._page(request, request.match_info["object"], "all")
        listed = b",".join(orjson.dumps(s.obj.version) for s in page.items)
        return taxii_bytes(_paged(page, "versions", listed), headers=page.headers())

    async def manifest(self, request: web.Request) -> web.Response:
        partner, page = await self._page(request)
        # Ids and versions, no content: one LOOKUP entry saying how many were listed.
        self.recorder.note(
            [
                Event(
                    Action.LOOKUP,
                    partner.partner_id,
                    time.time(),
                    detail={"channel": "taxii.manifest", "listed": len(page.items)},
                )
            ]
        )
        listed = b",".join(
            orjson.dumps(
                {
                    "id": s.obj.object_id,
                    "date_added": date_added(s.accepted_at),
                    "version": s.obj.version,
                    "media_type": STIX_MEDIA_TYPE,
                }
            )
            for s in page.items
        )
        return taxii_bytes(_paged(page, "objects", listed), headers=page.headers())

    @staticmethod
    def _no_object(partner: Partner, object_id: str) -> TaxiiError:
        # The same words whether it does not exist or the caller may not see it.
        return TaxiiError(
            404,
            "Not Found",
            f"no object {object_id[:300]} in this collection that partner"
            f" {partner.partner_id} may see",
        )

    # -- writes --------------------------------------------------------------------------
    async def add_objects(self, request: web.Request) -> web.Response:
        partner, collection = await self._collection(request, write=True)
        check_content_type(request.headers.get("Content-Type"))
        # Counted before the body is read, as gRPC admission counts a Submit.
        await self.submissions.enter(partner.partner_id)
        try:
            raw = await request.read()
            results = await self.ingest.submit(partner, _bundle_of(raw), collection.audience())
        finally:
            self.submissions.leave(partner.partner_id)
        status = status_resource(results)
        self.statuses.keep(partner.partner_id, status)
        return taxii_response(status, status=202)

    async def status(self, request: web.Request) -> web.Response:
        partner = (await self._caller(request)).partner
        wanted = request.match_info["status"]
        found = self.statuses.get(partner.partner_id, wanted)
        if found is None:
            raise TaxiiError(
                404, "Not Found", f"no status {wanted[:80]} for partner {partner.partner_id}"
            )
        return taxii_response(found)


def _found(partner: Partner, request: web.Request) -> TaxiiCollection:
    wanted = request.match_info["collection"]
    found = collection_of(partner, wanted)
    if found is None:
        # The same answer for a community the caller is not in as for no collection.
        raise TaxiiError(
            404, "Not Found", f"no collection {wanted[:80]} for partner {partner.partner_id}"
        )
    return found


def _bundle_of(raw: bytes) -> bytes:
    """The STIX bundle of a TAXII envelope, for the Submit pipeline (which checks the
    objects and the bundle's limits itself)."""
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidBundle(
            f"the request body is not JSON ({exc}); send a TAXII envelope"
        ) from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("objects"), list):
        raise InvalidBundle(
            'the request body is not a TAXII envelope: expected {"objects": [STIX objects]}'
        )
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": envelope["objects"]}
    try:
        return orjson.dumps(bundle)
    except orjson.JSONEncodeError:
        # orjson writes at most 254 levels (it reads 1,024): no STIX object needs either.
        raise InvalidBundle(
            "an object in the envelope is nested more than 250 levels deep (arrays and"
            " objects inside one another); no STIX object needs that many"
        ) from None
