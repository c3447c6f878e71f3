"""Test support: STIX fixtures shaped like the partners' data, a server running
in a background thread, and waiting on conditions with a deadline."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import requests
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc

from exchange import policy
from exchange.auth import new_token_credential
from exchange.config import Settings, load_settings
from exchange.model import Community, Partner, Tlp
from exchange.server import ExchangeServer
from exchange.stix.tlp import TLP_BY_MARKING_ID, marking_id
from exchange.subscriptions import Cursor
from exchange.taxii._collections import RECEIVED_ID as TAXII_RECEIVED

T = TypeVar("T")

TLP_IDS = {tlp: marking_id(tlp) for tlp in Tlp}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until true; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.02)


# -- STIX fixtures ------------------------------------------------------------------

_PATTERNS = (
    "[x-phone-number:value = '+1555{n:07d}']",
    "[cryptocurrency-wallet:address = 'bc1q{n:032x}']",
    "[domain-name:value = 'lucky-invest-{n}.example']",
    "[url:value = 'https://jobs-{n}.example/apply']",
    "[user-account:account_login = 'recruiter_{n}']",
)


def stamp(seconds: int = 0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1767225600 + seconds)) + ".000Z"


def indicator(
    identity: str | None,
    *,
    n: int = 0,
    tlp: Tlp | None = Tlp.GREEN,
    labels: Iterable[str] = ("trafficking:recruitment",),
    modified: str | None = None,
    object_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    created = stamp(n)
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": object_id or f"indicator--{uuid.uuid4()}",
        "created": created,
        "modified": modified or created,
        "name": f"Recruitment lure #{n}",
        "indicator_types": ["malicious-activity"],
        "pattern": _PATTERNS[n % len(_PATTERNS)].format(n=n),
        "pattern_type": "stix",
        "valid_from": created,
        "labels": list(labels),
        "confidence": 70,
    }
    if identity is not None:
        obj["created_by_ref"] = identity
    if tlp is not None:
        obj["object_marking_refs"] = [TLP_IDS[tlp]]
    obj.update(extra)
    return obj


def bundle(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": list(objects)}


def mixed_indicators(identity: str, count: int, seed: int = 1) -> list[dict[str, Any]]:
    """Indicators with every TLP level a submission can carry without naming
    recipients (TLP:RED needs them), like a partner's monthly bulk export."""
    rng = random.Random(seed)
    levels = [tlp for tlp in Tlp if tlp is not Tlp.RED]
    return [indicator(identity, n=i, tlp=rng.choice(levels)) for i in range(count)]


# -- a server in a background thread ----------------------------------------------


@dataclass(frozen=True)
class PartnerCredentials:
    partner: Partner
    token: str

    @property
    def partner_id(self) -> str:
        return self.partner.partner_id

    @property
    def identity(self) -> str:
        return self.partner.identity_id


def settings_for(data_dir: Path, kafka_bootstrap: str | None = None, **overrides: Any) -> Settings:
    kafka: dict[str, Any] = {}
    if kafka_bootstrap:
        kafka = {
            "bootstrap": kafka_bootstrap,
            "enable_idempotence": False,
            "partitions": 2,
        }
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "listen": "127.0.0.1:0",
        "validation_workers": 1,
        "topic_prefix": f"t{uuid.uuid4().hex[:10]}",
        "relay": {"poll_interval_s": 0.2},
        "kafka": kafka,
        # Off unless a test asks: the embedded default's fixed port would be shared.
        "taxii": {"listen": ""},
    }
    base.update(overrides)
    return load_settings(None, environ={}, overrides=base)


async def _end_leftover_tasks() -> None:
    """What ``asyncio.run`` does as ``exchange serve`` ends: cancel the tasks still
    pending and wait for them, so none is destroyed with the loop."""
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class ServerThread:
    """An ExchangeServer on its own event loop in a thread, so that tests can use
    the blocking SDK against it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: ExchangeServer | None = None
        self.port = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout_s)

    def start(self) -> ServerThread:
        self._thread.start()
        self.server = ExchangeServer(self.settings)
        self.port = self.run(self.server.start())
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_partner(
        self, name: str, *, identity: str | None = None, **fields: Any
    ) -> PartnerCredentials:
        """Register a partner on the server's store (``fields``: Partner fields, and
        ``sector`` for a one-sector partner)."""
        assert self.server is not None
        partner = Partner(
            partner_id=f"{name}-{uuid.uuid4().hex[:6]}",
            name=name,
            sectors=(fields.pop("sector", "non-profit"),),
            identity_id=identity or f"identity--{uuid.uuid4()}",
            **fields,
        )
        credential, token = new_token_credential(partner.partner_id)
        self.run(self.server.store.add_partner(partner, credential))
        return PartnerCredentials(partner, token)

    def add_community(self, name: str, *members: PartnerCredentials) -> str:
        assert self.server is not None
        self.run(self.server.store.add_community(Community(name)))
        for member in members:
            self.run(self.server.store.join_community(name, member.partner_id))
        return name

    def partner(self, who: PartnerCredentials) -> Partner:
        """The partner as the registry says now (memberships included)."""
        assert self.server is not None
        found = self.run(self.server.store.get_partner(who.partner_id))
        assert found is not None
        return found

    def wait_published(self, timeout_s: float = 30.0) -> None:
        """Wait until the relay has published everything accepted so far."""
        assert self.server is not None
        store = self.server.store
        wait_until(lambda: not self.run(store.pending_outbox(1)), timeout_s, "the relay to publish")

    def drain(
        self, who: PartnerCredentials, timeout_s: float = 30.0
    ) -> list[exchange_pb2.Delivery]:
        """Everything ``who`` receives when it subscribes from the beginning, up to
        all that was accepted before this call: reads until the stream's cursor has
        passed the relay's position on every topic of the partner (a condition, not
        a pause), failing after ``timeout_s``."""
        assert self.server is not None
        store = self.server.store
        self.wait_published(timeout_s)
        now = self.run(store.relay_positions(policy.subscription_topics(self.partner(who))))
        got: list[exchange_pb2.Delivery] = []
        with grpc.insecure_channel(self.target) as channel:
            call = exchange_pb2_grpc.ExchangeServiceStub(channel).Subscribe(
                exchange_pb2.SubscribeRequest(from_beginning=True),
                metadata=(("authorization", f"Bearer {who.token}"),),
                timeout=timeout_s,
            )
            for response in call:
                got += response.deliveries
                at = Cursor.decode(response.cursor).positions
                if all(at.get(tp, (-1, -1))[0] >= offset for tp, offset in now.items()):
                    break
            call.cancel()  # type: ignore[no-untyped-call]
        return got

    def taxii_received(self, who: PartnerCredentials, limit: int = 50) -> list[tuple[str, str]]:
        """(id, version) of every version in ``who``'s TAXII "Received" collection, paging
        with ``next`` (the server must have been started with taxii.listen)."""
        assert self.server is not None and self.server.taxii is not None
        url = (
            f"http://127.0.0.1:{self.server.taxii.port}/exchange/collections/"
            f"{TAXII_RECEIVED}/objects/"
        )
        params = {"limit": str(limit), "match[version]": "all"}
        got: list[tuple[str, str]] = []
        with requests.Session() as session:
            while True:
                response = session.get(
                    url,
                    params=params,
                    auth=(who.partner_id, who.token),
                    headers={"Accept": "application/taxii+json;version=2.1"},
                    timeout=30,
                )
                response.raise_for_status()
                page = response.json()
                got += [(o["id"], o.get("modified", "")) for o in page.get("objects", [])]
                if not page.get("more"):
                    return got
                params["next"] = page["next"]

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.server is not None:
            self.run(self.server.stop(grace_s=1.0))
            self.server = None
        self.run(_end_leftover_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def restarted(self) -> ServerThread:
        """Stop this server and start a new one on the same data (and a new port)."""
        self.stop()
        return ServerThread(self.settings).start()


def partner_export(identity: str, name: str, indicators: int = 30, seed: int = 7) -> dict[str, Any]:
    """A bundle shaped like a partner's bulk export: its identity, indicators of
    every TLP, an infrastructure they point to, relationships and a report."""
    ident = {
        "type": "identity",
        "spec_version": "2.1",
        "id": identity,
        "created": stamp(),
        "modified": stamp(),
        "name": name,
        "identity_class": "organization",
        "sectors": ["non-profit"],
    }
    inds = mixed_indicators(identity, indicators, seed=seed)
    infra = {
        "type": "infrastructure",
        "spec_version": "2.1",
        "id": f"infrastructure--{uuid.uuid4()}",
        "created": stamp(),
        "modified": stamp(),
        "created_by_ref": identity,
        "name": "Recruitment front network",
        "infrastructure_types": ["hosting-malware"],
        "object_marking_refs": [TLP_IDS[Tlp.AMBER]],
    }
    rels = [
        {
            "type": "relationship",
            "spec_version": "2.1",
            "id": f"relationship--{uuid.uuid4()}",
            "created": stamp(),
            "modified": stamp(),
            "created_by_ref": identity,
            "relationship_type": "indicates",
            "source_ref": ind["id"],
            "target_ref": infra["id"],
            "object_marking_refs": [TLP_IDS[Tlp.GREEN]],
        }
        for ind in inds[:5]
    ]
    report = {
        "type": "report",
        "spec_version": "2.1",
        "id": f"report--{uuid.uuid4()}",
        "created": stamp(86400),
        "modified": stamp(86400),
        "created_by_ref": identity,
        "name": f"{name} monthly recruitment-lure summary",
        "report_types": ["threat-report"],
        "published": stamp(86400),
        "object_refs": [i["id"] for i in inds[:10]],
        "object_marking_refs": [TLP_IDS[Tlp.CLEAR]],
    }
    return bundle([ident, *inds, infra, *rels, report])


def tlp_of(obj: dict[str, Any], default: Tlp = Tlp.AMBER) -> Tlp:
    refs = [
        TLP_BY_MARKING_ID[m] for m in obj.get("object_marking_refs", ()) if m in TLP_BY_MARKING_ID
    ]
    return refs[0] if refs else default
