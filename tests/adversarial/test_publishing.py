"""Attacks on publishing: whatever the exchange accepts, it can publish, and no object
can stop the outbox for everyone else."""

from __future__ import annotations

import threading

from exchange_client import Delivery

from exchange.model import Tlp
from tests.adversarial.harness import BUSES, ExchangeFactory
from tests.helpers import bundle, indicator, wait_until


@BUSES
def test_a_large_object_is_refused_or_published_and_never_blocks_the_outbox(
    exchange_factory: ExchangeFactory, bus: str
) -> None:
    exchange = exchange_factory(bus=bus)
    attacker = exchange.add_partner("attacker")
    honest = exchange.add_partner("honest")
    reader = exchange.add_partner("reader")
    # The defect's object: 1.5 MB of labels, legal STIX, far under max_bundle_bytes.
    huge = indicator(attacker.identity, n=1, labels=[f"{i}:" + "x" * 99_990 for i in range(15)])
    # Just under limits.max_object_bytes, with labels far too long for a record header.
    large = indicator(attacker.identity, n=2, labels=[f"{i}:" + "y" * 99_990 for i in range(9)])
    with exchange.client(attacker) as client:
        refused = client.submit(bundle([huge]))
        (rejection,) = refused.rejected
        assert "limits.max_object_bytes" in rejection.reason
        assert client.submit(bundle([large])).accepted == [large["id"]]
    later = [indicator(honest.identity, n=10 + n, tlp=Tlp.GREEN) for n in range(5)]
    with exchange.client(honest) as client:
        assert client.submit(bundle(later)).ok
    got: list[Delivery] = []
    with exchange.client(reader) as client:
        feed = client.subscribe(from_beginning=True)
        thread = threading.Thread(target=lambda: got.extend(feed), daemon=True)
        thread.start()
        try:
            wanted = {large["id"]} | {o["id"] for o in later}
            wait_until(lambda: wanted <= {d.object_id for d in got}, 60, "every object delivered")
        finally:
            feed.close()
            thread.join(10)
    (delivered,) = [d for d in got if d.object_id == large["id"]]
    assert delivered.object["labels"] == large["labels"]
    assert exchange.metric("exchange_relay_set_aside_rows_total") == 0
    assert exchange.metric("exchange_limit_refusals_total", limit="limits.max_object_bytes") == 1
