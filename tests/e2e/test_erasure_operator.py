"""The operator erases (a court order, a data subject's request) with ``exchange erase
--data-dir`` or ``--database`` while a server runs on the same store: the server stops
serving the object, publishes the tombstones and sends the notices; the audit log says
the operator did it and why."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import ExchangeClient, NotFound

from exchange.model import Tlp
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, indicator

SECRET = "Witness statement 4471-QX"


def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [EXCHANGE, *args], capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == code, f"exchange {' '.join(args)} -> {proc.returncode}: {proc}"
    return proc


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The command-line options naming the store: a data directory or a database."""
    if request.param == "sqlite":
        return ["--data-dir", str(tmp_path / "data")]
    url: str = request.getfixturevalue("postgres_url")
    return ["--database", url]


@pytest.fixture
def server(tmp_path: Path, where: list[str]) -> Iterator[ServerProcess]:
    extra = where[2:] if where[0] == "--data-dir" else where
    srv = ServerProcess(tmp_path / "data", *extra)
    yield srv
    srv.stop()


def add_partner(where: list[str], name: str) -> dict[str, Any]:
    doc = orjson.loads(run("partner", "add", "--name", name, "--sector", "non-profit", *where,
                           "--json").stdout)  # fmt: skip
    assert isinstance(doc, dict)
    return doc


def test_the_operator_erases_while_the_server_runs(server: ServerProcess, where: list[str]) -> None:
    ngo = add_partner(where, "Harbor Light")
    platform = add_partner(where, "Kestrel Social")
    lead = indicator(ngo["identity_id"], tlp=Tlp.GREEN, description=SECRET)
    notices: list[Any] = []
    with ExchangeClient(server.target, token=platform["token"]) as c:
        sub = c.subscribe(from_beginning=True)
        timer = threading.Timer(60.0, sub.cancel)
        timer.start()
        try:
            with ExchangeClient(server.target, token=ngo["token"]) as n:
                assert n.submit(bundle([lead])).ok
            for delivery in sub:
                if delivery.erased is None:
                    assert delivery.object_id == lead["id"]
                    erased = orjson.loads(
                        run("erase", str(lead["id"]), "--reason", "court-order", "--json",
                            *where).stdout
                    )  # fmt: skip
                    assert erased["versions"] == [lead["modified"]]
                    continue
                notices.append(delivery)
                break
        finally:
            timer.cancel()
            sub.cancel()
        assert [(d.object_id, d.erased.reason) for d in notices] == [(lead["id"], "court-order")]
        with pytest.raises(NotFound):
            c.get(str(lead["id"]))
    # Again: the same erasure; an id never held: not found.
    again = orjson.loads(
        run("erase", str(lead["id"]), "--reason", "other", "--json", *where).stdout
    )
    assert again["already_erased"] and again["reason"] == "court-order"
    missing = "indicator--5b0a7e34-3b8e-4a5c-9a51-2f3f2d1a0c99"
    assert "no object" in run("erase", missing, "--reason", "other", *where, code=1).stderr
    story = [
        orjson.loads(line)
        for line in run(
            "audit", "log", "--object", str(lead["id"]), "--format", "json", *where
        ).stdout.splitlines()
    ]
    assert ("erase", "operator") in [(e["action"], e["actor"]) for e in story]
    assert SECRET not in orjson.dumps(story).decode()
