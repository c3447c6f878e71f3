"""Mutual TLS: a client certificate bound to a partner signs it in, through the real
server and the SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange_client import AuthenticationError, ExchangeClient, ExchangeError

from exchange.auth import new_certificate_binding
from tests.certs import CertificateAuthority
from tests.helpers import PartnerCredentials, ServerThread, bundle, indicator, settings_for


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def server(tmp_path: Path, ca: CertificateAuthority) -> Iterator[ServerThread]:
    tls = ca.mutual_tls()
    srv = ServerThread(settings_for(tmp_path / "data", tls=tls)).start()
    yield srv
    srv.stop()


def bind(server: ServerThread, who: PartnerCredentials, pem: bytes) -> str:
    assert server.server is not None
    credential = new_certificate_binding(who.partner_id, pem)
    server.run(server.server.store.add_credential(credential))
    return credential.credential_id


def connect(
    server: ServerThread, ca: CertificateAuthority, cert: str, token: str | None = None
) -> ExchangeClient:
    issued = ca.dir / f"{cert}.pem", ca.dir / f"{cert}.key"
    return ExchangeClient(
        f"localhost:{server.port}",
        token=token,
        ca_file=ca.cert,
        cert_file=issued[0],
        key_file=issued[1],
    )


def test_a_bound_certificate_signs_the_partner_in_without_a_token(
    server: ServerThread, ca: CertificateAuthority
) -> None:
    ngo = server.add_partner("harbor-light")
    credential_id = bind(server, ngo, ca.issue("harbor-light").pem)
    ind = indicator(ngo.identity)
    with connect(server, ca, "harbor-light") as client:
        assert client.submit(bundle([ind])).accepted == [ind["id"]]
        # Revoking the binding takes effect on the next call.
        assert server.server is not None
        server.run(server.server.store.revoke_credential(ngo.partner_id, credential_id, 1.0))
        with pytest.raises(AuthenticationError, match="revoked"):
            client.submit(bundle([indicator(ngo.identity)]))


def test_an_unbound_certificate_needs_a_token(
    server: ServerThread, ca: CertificateAuthority
) -> None:
    ngo = server.add_partner("harbor-light")
    ca.issue("stranger")
    with connect(server, ca, "stranger") as client, pytest.raises(AuthenticationError):
        client.submit(bundle([indicator(ngo.identity)]))
    with connect(server, ca, "stranger", token=ngo.token) as client:
        assert client.submit(bundle([indicator(ngo.identity)])).ok


def test_a_token_and_a_certificate_of_different_partners_are_refused(
    server: ServerThread, ca: CertificateAuthority
) -> None:
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social")
    bind(server, ngo, ca.issue("harbor-light").pem)
    with (
        connect(server, ca, "harbor-light", token=platform.token) as client,
        pytest.raises(AuthenticationError, match="different partners"),
    ):
        client.submit(bundle([indicator(ngo.identity)]))


def test_without_a_client_certificate_the_connection_is_refused(
    server: ServerThread, ca: CertificateAuthority
) -> None:
    ngo = server.add_partner("harbor-light")
    with (
        ExchangeClient(f"localhost:{server.port}", token=ngo.token, ca_file=ca.cert) as client,
        pytest.raises(ExchangeError),
    ):
        client.submit(bundle([indicator(ngo.identity)]), timeout=5)
