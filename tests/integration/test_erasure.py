"""Erase through real gRPC, on both buses: the creator erases, the object is gone from
look-ups and replays, the answer carries the audit receipt, a replay of an erased
version is refused while a newer version is taken; who may not erase learns nothing
(PermissionDenied only for an object the caller may see, NotFound word for word like an
object that does not exist)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from exchange_client import ExchangeClient, NotFound, PermissionDenied, verify_receipt

from exchange.model import Tlp
from tests.helpers import (
    ServerThread,
    bundle,
    indicator,
    settings_for,
    stamp,
)

SECRET = "+15550199-ERASE-ME-7Q"


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    bootstrap = request.getfixturevalue("tansu") if request.param == "kafka" else None
    srv = ServerThread(settings_for(tmp_path / "data", bootstrap)).start()
    yield srv
    srv.stop()


def lead(identity: str, *, tlp: Tlp = Tlp.GREEN, modified: str | None = None) -> dict[str, object]:
    return indicator(
        identity,
        tlp=tlp,
        object_id="indicator--0b6b9a5e-1c1a-4f3e-9d55-8f2f4b1e7a10",
        modified=modified,
        description=f"Recruiter's number {SECRET}",
    )


def test_the_creator_erases_and_the_object_is_gone(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social", sector="technology")
    first = lead(ngo.identity)
    second = lead(ngo.identity, modified=stamp(60))
    with ExchangeClient(server.target, token=ngo.token) as c:
        assert c.submit(bundle([first, second])).ok
        sighting = c.report_sighting(str(first["id"]))
        assert sighting.ok
        done = c.erase(str(first["id"]), reason="victim-data")

        assert done.object_id == first["id"]
        assert done.versions == [first["modified"], second["modified"]]
        assert (done.reason, done.already_erased) == ("victim-data", False)
        assert done.referenced_by == [sighting.accepted[0]]
        entry = orjson.loads(done.receipt.entry)
        assert (entry["action"], entry["detail"]["reason"]) == ("erase", "victim-data")
        assert SECRET.encode() not in done.receipt.entry
        proof = c.inclusion_proof(done.receipt.log_index)
        assert proof.checkpoint is not None
        verify_receipt(done.receipt, proof, proof.checkpoint, c.public_key())

        with pytest.raises(NotFound):
            c.get(str(first["id"]))
        # Asking again answers with the erasure made (a retry after a lost answer).
        again = c.erase(str(first["id"]), reason="other")
        assert again.already_erased and again.reason == "victim-data"
        assert again.receipt == done.receipt
        # A replay of an erased version is refused; a newer version is taken.
        replay = c.submit(bundle([second]))
        assert not replay.ok
        assert "erased" in replay.rejected[0].reason
        newer = lead(ngo.identity, modified=stamp(120))
        assert c.submit(bundle([newer])).ok
        assert c.get(str(first["id"])).version == newer["modified"]
    with ExchangeClient(server.target, token=platform.token) as c:
        assert c.get(str(first["id"])).version == newer["modified"]


def test_others_may_not_erase_and_learn_nothing(server: ServerThread) -> None:
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social", sector="technology")
    ministry = server.add_partner("labour-ministry", sector="government")
    seen = lead(ngo.identity)  # green: everyone may see it
    hidden = indicator(ngo.identity, tlp=Tlp.RED, description=SECRET)
    with ExchangeClient(server.target, token=ngo.token) as c:
        assert c.submit(bundle([seen])).ok
        assert c.submit(bundle([hidden]), recipients=[platform.partner_id]).ok
    with ExchangeClient(server.target, token=ministry.token) as c:
        with pytest.raises(PermissionDenied, match="only its creator"):
            c.erase(str(seen["id"]), reason="inaccurate")
        # Not entitled to it: the very answer an object that does not exist gets.
        with pytest.raises(NotFound) as hidden_err:
            c.erase(str(hidden["id"]), reason="inaccurate")
        missing = "indicator--5b0a7e34-3b8e-4a5c-9a51-2f3f2d1a0c99"
        with pytest.raises(NotFound) as missing_err:
            c.erase(missing, reason="inaccurate")
        assert str(hidden_err.value).replace(str(hidden["id"]), "X") == str(
            missing_err.value
        ).replace(missing, "X")
        with pytest.raises(ValueError, match="reason must be one of"):
            c.erase(str(seen["id"]), reason="because I said so")
    with (
        ExchangeClient(server.target, token=platform.token) as c,
        pytest.raises(PermissionDenied),
    ):
        c.erase(str(hidden["id"]), reason="inaccurate")
    with ExchangeClient(server.target, token=ngo.token) as c:
        assert c.get(str(seen["id"])).object_id == seen["id"]
        assert c.get(str(hidden["id"])).object_id == hidden["id"]
