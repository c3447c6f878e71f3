"""`exchange serve --taxii-listen`: TAXII from the server process, with a partner and
token the operator commands made, and an object added over TAXII reaching the gRPC feed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import requests
from exchange_client import ExchangeClient

from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import free_port, indicator

MEDIA = "application/taxii+json;version=2.1"


def test_serve_with_taxii_listen(tmp_path: Path) -> None:
    data = tmp_path / "exchange-data"
    taxii = f"127.0.0.1:{free_port()}"
    server = ServerProcess(data, "--taxii-listen", taxii)
    try:
        added = subprocess.run(
            [
                *(EXCHANGE, "partner", "add", "--data-dir", str(data), "--name", "Harbor Light"),
                *("--sector", "non-profit", "--kind", "ngo", "--quiet"),
                *("--token-out", str(tmp_path / "ngo.token")),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        partner_id = added.stdout.strip()
        token = (tmp_path / "ngo.token").read_text().strip()
        auth = (partner_id, token)
        root = f"http://{taxii}/exchange"
        collections = requests.get(
            f"{root}/collections/", headers={"Accept": MEDIA}, auth=auth, timeout=10
        ).json()["collections"]
        inbox = next(c["id"] for c in collections if c["title"] == "Inbox")
        lure = indicator(None, n=1)
        status = requests.post(
            f"{root}/collections/{inbox}/objects/",
            data=orjson.dumps({"objects": [lure]}),
            headers={"Accept": MEDIA, "Content-Type": MEDIA},
            auth=auth,
            timeout=30,
        )
        assert status.status_code == 202, status.text
        assert status.json()["success_count"] == 1
        with ExchangeClient(server.target, token=token) as client:
            delivery = next(iter(client.subscribe(from_beginning=True)))
            assert delivery.object_id == lure["id"]
        assert f"TAXII 2.1 on http://{taxii}/taxii2/" in server.log.read_text()
    finally:
        server.stop()
