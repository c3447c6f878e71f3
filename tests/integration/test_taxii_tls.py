"""TAXII over TLS and mutual TLS, from the settings gRPC uses: a bound client certificate
signs a partner in without a token, and a revoked token is refused as over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from exchange.auth import new_certificate_binding
from tests.certs import CertificateAuthority
from tests.helpers import ServerThread, settings_for

MEDIA = "application/taxii+json;version=2.1"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def server(tmp_path: Path, ca: CertificateAuthority) -> Iterator[ServerThread]:
    tls = ca.mutual_tls()
    settings = settings_for(tmp_path / "data", tls=tls, taxii={"listen": "127.0.0.1:0"})
    srv = ServerThread(settings).start()
    yield srv
    srv.stop()


def test_mutual_tls_and_revocation(server: ServerThread, ca: CertificateAuthority) -> None:
    assert server.server is not None and server.server.taxii is not None
    url = f"https://localhost:{server.server.taxii.port}/exchange/collections/"
    ngo = server.add_partner("harbor-light")
    other = server.add_partner("kestrel-social")
    bound = ca.issue("harbor-light")
    server.run(
        server.server.store.add_credential(new_certificate_binding(ngo.partner_id, bound.pem))
    )
    unbound = ca.issue("stranger")
    accept = {"Accept": MEDIA}
    with requests.Session() as session:
        # Per request: REQUESTS_CA_BUNDLE in the environment would win over session.verify.
        session.trust_env = False
        session.verify = str(ca.cert)
        # A bound certificate alone signs the partner in.
        session.cert = (str(bound.cert), str(bound.key))
        assert session.get(url, headers=accept, timeout=10).status_code == 200
        # A token of another partner with it: refused, as over gRPC.
        mixed = session.get(url, headers=accept, auth=(other.partner_id, other.token), timeout=10)
        assert mixed.status_code == 401
        # An unbound certificate secures the connection; the token signs in.
        session.cert = (str(unbound.cert), str(unbound.key))
        assert session.get(url, headers=accept, timeout=10).status_code == 401
        assert (
            session.get(
                url, headers=accept, auth=(other.partner_id, other.token), timeout=10
            ).status_code
            == 200
        )
        credential = server.run(server.server.store.list_credentials(other.partner_id))[0]
        server.run(
            server.server.store.revoke_credential(other.partner_id, credential.credential_id, 1.0)
        )
        server.server.registry_watch.bump()
        revoked = session.get(url, headers=accept, auth=(other.partner_id, other.token), timeout=10)
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["description"]
