"""The partner SDK against a real exchange: the sync and async clients agree;
submit_many reports progress; revocations and sightings reach who they should;
a subscription survives a server restart without gap or repeat."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exchange_client import (
    TLP_AMBER,
    AsyncExchangeClient,
    Delivery,
    ExchangeClient,
    ExchangeError,
    SubmitProgress,
    SubmitResult,
)

from exchange.model import Tlp
from tests.helpers import (
    PartnerCredentials,
    ServerThread,
    bundle,
    free_port,
    indicator,
    settings_for,
    wait_until,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(settings_for(tmp_path / "data")).start()
    yield srv
    srv.stop()


@pytest.fixture
def ngo(server: ServerThread) -> PartnerCredentials:
    return server.add_partner("harbor-light")


@pytest.fixture
def platform(server: ServerThread) -> PartnerCredentials:
    return server.add_partner("kestrel-social", sector="technology")


def sync_client(server: ServerThread, who: PartnerCredentials) -> ExchangeClient:
    return ExchangeClient(server.target, token=who.token, timeout=30)


def async_client(server: ServerThread, who: PartnerCredentials) -> AsyncExchangeClient:
    return AsyncExchangeClient(server.target, token=who.token, timeout=30)


def outcomes(result: SubmitResult) -> list[tuple[str, str, str]]:
    return [(r.object_id, r.version, r.outcome) for r in result.results]


def first_n(server: ServerThread, who: PartnerCredentials, n: int, **kwargs: Any) -> list[Delivery]:
    """The first ``n`` deliveries of a sync subscription (fails after a deadline)."""
    got: list[Delivery] = []
    with sync_client(server, who) as c, c.subscribe(**kwargs) as sub:
        timer = threading.Timer(30.0, sub.close)
        timer.start()
        try:
            for delivery in sub:
                got.append(delivery)
                if len(got) >= n:
                    break
        finally:
            timer.cancel()
    assert len(got) == n, f"expected {n} deliveries, got {len(got)}"
    return got


async def first_n_async(
    server: ServerThread, who: PartnerCredentials, n: int, **kwargs: Any
) -> list[Delivery]:
    got: list[Delivery] = []
    async with async_client(server, who) as c, c.subscribe(**kwargs) as sub:
        async with asyncio.timeout(30):
            async for delivery in sub:
                got.append(delivery)
                if len(got) >= n:
                    break
    return got


def view(deliveries: list[Delivery]) -> list[tuple[str, str, str, str, bytes]]:
    return [(d.object_id, d.version, d.submitter, d.cursor, d.object_json) for d in deliveries]


# -- the two clients agree --------------------------------------------------------------


async def test_sync_and_async_clients_give_the_same_results(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    first = [indicator(ngo.identity, n=i, tlp=Tlp.GREEN) for i in range(4)]
    more = [indicator(ngo.identity, n=10 + i, tlp=Tlp.CLEAR) for i in range(6)]

    def sync_side() -> tuple[SubmitResult, SubmitResult, Any, Delivery]:
        with sync_client(server, ngo) as c:
            accepted = c.submit(bundle(first))
            again = c.submit(bundle(first))
            many = c.submit_many(more, batch_size=4)
            return accepted, again, many, c.get(first[0]["id"])

    accepted, sync_again, sync_many, sync_get = await asyncio.to_thread(sync_side)
    assert accepted.ok and len(accepted.accepted) == 4
    async with async_client(server, ngo) as c:
        async_again = await c.submit(bundle(first))
        async_many = await c.submit_many(more, batch_size=4)
        async_get = await c.get(first[0]["id"])
    # Submitted a second and third time: duplicates, the same from either client.
    assert outcomes(async_again) == outcomes(sync_again)
    assert {o for _, _, o in outcomes(sync_again)} == {"duplicate"}
    assert sync_many.accepted == [o["id"] for o in more]
    assert async_many.duplicates == sync_many.accepted
    assert async_many.batches == sync_many.batches == 2
    assert view([async_get]) == view([sync_get])
    assert sync_get.object["id"] == first[0]["id"]

    everything = len(first) + len(more)
    sync_feed = await asyncio.to_thread(first_n, server, platform, everything, from_beginning=True)
    async_feed = await first_n_async(server, platform, everything, from_beginning=True)
    assert view(async_feed) == view(sync_feed)
    assert [d.object_id for d in sync_feed] == [o["id"] for o in (*first, *more)]


# -- submit_many ------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_submit_many_reports_progress_and_sums_up(
    server: ServerThread, ngo: PartnerCredentials, flavour: str
) -> None:
    objects = [indicator(ngo.identity, n=i, tlp=Tlp.GREEN) for i in range(23)]
    objects[7]["confidence"] = 250  # rejected, the rest of its batch accepted
    seen: list[SubmitProgress] = []
    if flavour == "sync":
        with sync_client(server, ngo) as c:
            summary = c.submit_many(objects, batch_size=5, on_progress=seen.append)
    else:

        async def run() -> Any:
            async with async_client(server, ngo) as c:
                return await c.submit_many(objects, batch_size=5, on_progress=seen.append)

        summary = asyncio.run(run())
    assert [p.objects_done for p in seen] == [5, 10, 15, 20, 23]
    assert all(p.total == 23 for p in seen)
    assert seen[-1].objects_sent == 23
    assert [p.accepted for p in seen] == [5, 9, 14, 19, 22]
    assert seen[-1].rejected == 1 and seen[-1].duplicates == 0
    assert seen[-1].fraction == 1.0
    assert len(summary.accepted) == 22 and not summary.ok
    (rejected,) = summary.rejected
    assert rejected.object_id == objects[7]["id"] and rejected.property == "confidence"
    assert [r.object_id for r in summary.results] == [o["id"] for o in objects]
    assert summary.batches == 5 and not summary.errors


def test_submit_many_from_a_generator_has_no_total(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    seen: list[SubmitProgress] = []
    objects = (indicator(ngo.identity, n=i, tlp=Tlp.GREEN) for i in range(7))
    with sync_client(server, ngo) as c:
        summary = c.submit_many(objects, batch_size=3, on_progress=seen.append)
    assert [(p.objects_done, p.total) for p in seen] == [(3, None), (6, None), (7, None)]
    assert summary.ok and len(summary.accepted) == 7


def test_submit_accepts_a_list_of_objects_and_a_path(
    server: ServerThread, ngo: PartnerCredentials, tmp_path: Path
) -> None:
    listed = [indicator(ngo.identity, n=i) for i in range(2)]
    path = tmp_path / "bundle.json"
    filed = indicator(ngo.identity, n=5)
    path.write_text(json.dumps(bundle([filed])))
    with sync_client(server, ngo) as c:
        assert c.submit(listed).accepted == [o["id"] for o in listed]
        assert c.submit(path).accepted == [filed["id"]]


# -- revoke and sightings ----------------------------------------------------------------


def test_revoke_reaches_a_partner_that_received_the_object(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    original = indicator(ngo.identity, tlp=Tlp.AMBER)
    with sync_client(server, ngo) as c:
        assert c.submit(bundle([original]), recipients=platform.partner_id).ok
    (received,) = first_n(server, platform, 1, from_beginning=True)
    assert received.object_id == original["id"]

    with sync_client(server, ngo) as c:
        result = c.revoke(original["id"])
    assert result.ok and result.accepted == [original["id"]]

    (revoked,) = first_n(server, platform, 1, cursor=received.cursor)
    assert revoked.object_id == original["id"]
    assert revoked.object["revoked"] is True
    assert revoked.version > received.version
    assert revoked.version.endswith("Z") and len(revoked.version) == len("2026-01-01T00:00:00.000Z")
    unchanged = {k: v for k, v in revoked.object.items() if k not in {"revoked", "modified"}}
    assert unchanged == {k: v for k, v in received.object.items() if k != "modified"}


def test_only_the_creator_can_revoke(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    original = indicator(ngo.identity, tlp=Tlp.GREEN)
    with sync_client(server, ngo) as c:
        assert c.submit(bundle([original])).ok
    with sync_client(server, platform) as c:
        result = c.revoke(original["id"])
    assert not result.ok and [r.object_id for r in result.rejected] == [original["id"]]


async def test_report_sighting_reaches_the_indicators_creator(
    server: ServerThread, ngo: PartnerCredentials, platform: PartnerCredentials
) -> None:
    seen_indicator = indicator(ngo.identity, tlp=Tlp.GREEN)
    async with async_client(server, ngo) as c:
        assert (await c.submit(bundle([seen_indicator]))).ok
    async with async_client(server, platform) as c:
        result = await c.report_sighting(
            seen_indicator["id"],
            count=3,
            first_seen="2026-01-02T10:00:00Z",
            last_seen="2026-01-03T10:00:00.5+00:00",
            description="seen in 3 job ads",
        )
    assert result.ok and len(result.accepted) == 1
    sighting_id = result.accepted[0]
    assert sighting_id.startswith("sighting--")
    got = await first_n_async(server, ngo, 2, from_beginning=True)
    assert [d.object_id for d in got] == [seen_indicator["id"], sighting_id]
    sighting = got[1]
    assert sighting.tlp == "amber" and sighting.submitter == platform.partner_id
    assert sighting.object["sighting_of_ref"] == seen_indicator["id"]
    assert sighting.object["count"] == 3
    assert sighting.object["first_seen"] == "2026-01-02T10:00:00.000Z"
    assert sighting.object["last_seen"] == "2026-01-03T10:00:00.500Z"
    assert sighting.object["object_marking_refs"] == [TLP_AMBER]


# -- reconnecting across a restart -------------------------------------------------------


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[list[ServerThread]]:
    """A server on a fixed port (a one-element list: the test swaps in the restarted one)."""
    settings = settings_for(tmp_path / "data", listen=f"127.0.0.1:{free_port()}")
    holder = [ServerThread(settings).start()]
    yield holder
    holder[0].stop()


def _submit(server: ServerThread, who: PartnerCredentials, start: int, count: int) -> list[str]:
    objects = [indicator(who.identity, n=start + i, tlp=Tlp.GREEN) for i in range(count)]
    with sync_client(server, who) as c:
        result = c.submit(bundle(objects))
    assert result.ok
    return [o["id"] for o in objects]


class _FeedReader:
    """A partner's subscription consumed in a thread, by the sync client or the asyncio
    one (on the thread's own loop), until :meth:`stop`; what arrived, what failed."""

    def __init__(
        self,
        server: ServerThread,
        partner: PartnerCredentials,
        flavour: str,
        **subscribe: Any,
    ) -> None:
        self.received: list[str] = []
        self.reconnects: list[ExchangeError] = []
        self.failures: list[BaseException] = []
        self.subscriptions: list[Any] = []
        self._stop = threading.Event()
        self._server, self._partner, self._subscribe = server, partner, subscribe
        runner = self._sync if flavour == "sync" else lambda: asyncio.run(self._async())
        self._thread = threading.Thread(target=self._consume, args=(runner,), daemon=True)
        self._thread.start()

    def _on_reconnect(self, attempt: int, error: ExchangeError) -> None:
        self.reconnects.append(error)

    def _consume(self, runner: Any) -> None:
        try:
            runner()
        except BaseException as exc:  # reported by the test
            self.failures.append(exc)

    def _sync(self) -> None:
        with sync_client(self._server, self._partner) as c:
            sub = c.subscribe(
                from_beginning=True, on_reconnect=self._on_reconnect, **self._subscribe
            )
            self.subscriptions.append(sub)

            def close_when_done() -> None:
                self._stop.wait(60)
                sub.close()

            threading.Thread(target=close_when_done, daemon=True).start()
            for delivery in sub:
                self.received.append(delivery.object_id)

    async def _async(self) -> None:
        async with async_client(self._server, self._partner) as c:
            sub = c.subscribe(
                from_beginning=True, on_reconnect=self._on_reconnect, **self._subscribe
            )
            self.subscriptions.append(sub)
            closer = asyncio.create_task(asyncio.to_thread(self._stop.wait, 60))
            closer.add_done_callback(lambda _: sub.close())
            async for delivery in sub:
                self.received.append(delivery.object_id)

    def has(self, count: int) -> bool:
        return len(self.received) >= count or bool(self.failures)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_subscription_survives_a_restart_without_gap_or_repeat(
    restartable: list[ServerThread], flavour: str
) -> None:
    server = restartable[0]
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social", sector="technology")
    submitted = _submit(server, ngo, 0, 10)
    reader = _FeedReader(server, platform, flavour, max_backoff=0.5)
    try:
        wait_until(lambda: reader.has(10), 30, "the first deliveries")
        server = restartable[0] = server.restarted()
        submitted += _submit(server, ngo, 10, 10)
        wait_until(lambda: reader.has(20), 30, "deliveries after restart")
        # Nothing more arrives: no repeat after catching up.
        submitted += _submit(server, ngo, 20, 1)
        wait_until(lambda: reader.has(21), 30, "a live delivery")
    finally:
        reader.stop()
    assert not reader.failures, reader.failures
    assert reader.received == submitted
    assert reader.reconnects
    assert all(error.code == "UNAVAILABLE" for error in reader.reconnects)


# -- the exchange asks to resume: communities changed under an open stream ------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_joining_a_community_mid_stream_resumes_quietly_without_gap_or_repeat(
    server: ServerThread,
    ngo: PartnerCredentials,
    platform: PartnerCredentials,
    flavour: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="exchange_client")
    community = server.add_community("sea-taskforce", ngo)

    def shared(start: int, count: int, tlp: Tlp, communities: list[str]) -> list[str]:
        objects = [indicator(ngo.identity, n=start + i, tlp=tlp) for i in range(count)]
        with sync_client(server, ngo) as c:
            assert c.submit(bundle(objects), communities=communities).ok
        return [o["id"] for o in objects]

    public = shared(0, 3, Tlp.GREEN, [])
    members_only = shared(10, 2, Tlp.AMBER, [community])  # not for the platform, yet
    reader = _FeedReader(server, platform, flavour, connect_timeout=10)
    try:
        wait_until(lambda: reader.has(3), 30, "the public objects")
        assert server.server is not None
        server.run(server.server.store.join_community(community, platform.partner_id))
        # The stream is reopened with the community's topic: its history arrives.
        wait_until(lambda: reader.has(5), 30, "the community's objects")
        later = shared(20, 2, Tlp.GREEN, []) + shared(30, 2, Tlp.AMBER, [community])
        wait_until(lambda: reader.has(9), 30, "the later objects")
        # One more, live: nothing was repeated while catching up.
        last = shared(40, 1, Tlp.GREEN, [])
        wait_until(lambda: reader.has(10), 30, "a live delivery")
    finally:
        reader.stop()
    received = reader.received
    assert not reader.failures, reader.failures
    assert received[:3] == public
    assert len(received) == len(set(received)) == 10, received
    assert set(received) == {*public, *members_only, *later, *last}
    # A normal event: no on_reconnect, one reopen, a debug line.
    assert reader.reconnects == []
    assert reader.subscriptions[0].reconnects == 1
    resumed = [r for r in caplog.records if "asked to resume" in r.getMessage()]
    assert [r.levelno for r in resumed] == [logging.DEBUG]
    assert "communities changed" in resumed[0].getMessage()
