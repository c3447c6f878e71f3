"""Probing attacks: what a partner can learn from the exchange's answers, its own audit
view and the headers of its own Kafka topic must not depend on objects it may not see."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from exchange_client import Delivery

from exchange.model import Tlp
from tests.adversarial.harness import BUSES, STORES, Exchange, ExchangeFactory, Partner
from tests.helpers import TLP_IDS, bundle, indicator, stamp, wait_until
from tests.kcat import kcat_read


def sighting(identity: str, sighted: str, tlp: Tlp) -> dict[str, Any]:
    return {
        "type": "sighting",
        "spec_version": "2.1",
        "id": f"sighting--{uuid.uuid4()}",
        "created": stamp(60),
        "modified": stamp(60),
        "created_by_ref": identity,
        "sighting_of_ref": sighted,
        "count": 3,
        "object_marking_refs": [TLP_IDS[tlp]],
    }


def observable(value: str, tlp: Tlp) -> dict[str, Any]:
    """An e-mail address SCO: its id is a UUIDv5 of the value, the same for everyone."""
    namespace = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")  # STIX 2.1's SCO namespace
    canonical = '{"value":"' + value + '"}'
    oid = f"email-addr--{uuid.uuid5(namespace, canonical)}"
    return {
        "type": "email-addr",
        "spec_version": "2.1",
        "id": oid,
        "value": value,
        "object_marking_refs": [TLP_IDS[tlp]],
    }


class Feed:
    """A partner's subscription from the beginning, collected in a thread."""

    def __init__(self, exchange: Exchange, partner: Partner) -> None:
        self.got: list[Delivery] = []
        self._client = exchange.client(partner)
        self._sub = self._client.subscribe(from_beginning=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for delivery in self._sub:
            self.got.append(delivery)

    def ids(self) -> set[str]:
        return {d.object_id for d in self.got}

    def close(self) -> None:
        self._sub.close()
        self._thread.join(10)
        self._client.close()


def _shape(result: Any, ids: dict[str, str]) -> list[tuple[str, str, str]]:
    """A submission's answer with the object ids taken out (they differ by design)."""
    out = []
    for r in result.results:
        text = r.rejection.reason if r.rejection else ""
        for oid, name in ids.items():
            text = text.replace(oid, name)
        out.append((r.outcome, text, r.notice))
    return out


@BUSES
def test_a_sighting_reveals_nothing_of_what_it_sights(
    exchange_factory: ExchangeFactory, bus: str
) -> None:
    exchange = exchange_factory(bus=bus)
    creator = exchange.add_partner("ministry", kind="government")
    curious = exchange.add_partner("curious")
    platform = exchange.add_partner("platform")
    held = indicator(creator.identity, n=1, tlp=Tlp.RED)
    with exchange.client(creator) as client:
        assert client.submit(bundle([held]), recipients=[platform.partner_id]).ok
    unknown = f"indicator--{uuid.uuid4()}"
    answers = []
    with exchange.client(curious) as client:
        for tlp, named in ((Tlp.RED, []), (Tlp.AMBER_STRICT, [platform.partner_id])):
            pair = []
            for target in (held["id"], unknown):
                obj = sighting(curious.identity, target, tlp)
                result = client.submit(bundle([obj]), recipients=named)
                pair.append((obj["id"], result))
            (a_id, a), (b_id, b) = pair
            assert _shape(a, {a_id: "S"}) == _shape(b, {b_id: "S"}), (a, b)
            answers.append(pair)
    (red_held, red_unknown), (strict_held, strict_unknown) = answers
    for _, result in (*answers[0], *answers[1]):
        assert result.ok and len(result.accepted) == 1, result
    # The creator still hears of the sighting of its indicator; the platform of both.
    feeds = {p.name: Feed(exchange, p) for p in (creator, platform, curious)}
    try:
        wait_until(lambda: {red_held[0], strict_held[0]} <= feeds["ministry"].ids(), 30)
        wait_until(lambda: {strict_held[0], strict_unknown[0]} <= feeds["platform"].ids(), 30)
        mine = {red_held[0], red_unknown[0], strict_held[0], strict_unknown[0]}
        wait_until(lambda: mine <= feeds["curious"].ids(), 30)
        assert not {red_unknown[0], strict_unknown[0]} & feeds["ministry"].ids()
        # The submitter's own audit view of both sightings: the same actors and actions.
        with exchange.client(curious) as client:

            def view(object_id: str) -> list[tuple[str, str, str]]:
                return sorted(
                    (e.action, e.actor, e.owner)
                    for e in client.audit_entries(object_id=object_id)
                    if e.action != "audit.query"
                )

            wait_until(lambda: len(view(strict_unknown[0])) >= 3, 30, "deliveries recorded")
            wait_until(lambda: view(strict_held[0]) == view(strict_unknown[0]), 30, "same view")
            assert creator.partner_id not in str(view(strict_held[0]))
    finally:
        for feed in feeds.values():
            feed.close()
    if bus == "kafka":
        # What the curious partner's own Kafka consumer reads on its own topic: the two
        # records' audience and routing headers are the same.
        topic = f"{exchange.topic_prefix}.partner.{curious.partner_id}"
        records = kcat_read(exchange.kafka_bootstrap, topic, expect=4)
        shown = {
            r["key"]: {k: v for k, v in r["headers"] if k in ("audience", "topics")}
            for r in records
        }
        assert shown[red_held[0]] == shown[red_unknown[0]], shown
        assert shown[strict_held[0]] == shown[strict_unknown[0]], shown
        assert creator.partner_id not in str(records)


@STORES
def test_observables_are_held_per_partner_and_never_an_oracle(
    exchange_factory: ExchangeFactory, store: str
) -> None:
    exchange = exchange_factory(store=store)
    hotline = exchange.add_partner("hotline", kind="ngo")
    platform = exchange.add_partner("platform")
    curious = exchange.add_partner("curious")
    # The hotline holds a victim's address under AMBER+STRICT, for nobody else.
    secret = observable("a.victim@example.org", Tlp.AMBER_STRICT)
    with exchange.client(hotline) as client:
        assert client.submit(bundle([secret])).accepted == [secret["id"]]
    # Whether anyone holds the value does not change the answer to another partner.
    fresh = observable("never.shared@example.org", Tlp.GREEN)
    with exchange.client(curious) as client:
        again = client.submit(bundle([dict(secret, object_marking_refs=[TLP_IDS[Tlp.GREEN]])]))
        new = client.submit(bundle([fresh]))
        assert again.accepted == [secret["id"]] and new.accepted == [fresh["id"]]
        assert _shape(again, {secret["id"]: "O"}) == _shape(new, {fresh["id"]: "O"})
        # Its own copy, not the hotline's.
        mine = client.get(secret["id"])
        assert mine.submitter == curious.partner_id and mine.tlp == "green"
    # The platform sees the curious partner's GREEN copy, never the hotline's.
    with exchange.client(platform) as client:
        seen = client.get(secret["id"])
        assert seen.submitter == curious.partner_id
    with exchange.client(hotline) as client:
        assert client.get(secret["id"]).submitter == hotline.partner_id
        # And the hotline may still publish it again: not squatted.
        assert client.submit(bundle([secret])).duplicates == [secret["id"]]
