"""Idle Subscribe streams sleep until something concerns them: records, their heartbeat,
a registry change, the exchange shutting down. With a heartbeat far longer than each
test's deadline, only the wake-up can end these streams in time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange_client import AuthenticationError, ExchangeClient, ExchangeError, Subscription

from exchange.auth import new_token_credential
from tests.helpers import ServerThread, settings_for, wait_until

HEARTBEAT_S = 120.0
# Well under the heartbeat: what only a wake-up can meet.
DEADLINE_S = 20.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(
        settings_for(tmp_path / "data", subscriptions={"heartbeat_s": HEARTBEAT_S})
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def follow(sub: Subscription) -> tuple[threading.Thread, list[BaseException]]:
    """Read ``sub`` on a thread of its own until it ends; what it ended with."""
    ended: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in sub:
                pass
        except BaseException as exc:
            ended.append(exc)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    # Established once the first message (its starting cursor) arrived.
    wait_until(lambda: sub.last_cursor is not None, DEADLINE_S, "the stream to start")
    return reader, ended


def test_an_idle_stream_ends_soon_after_its_token_is_revoked_elsewhere(
    server: ServerThread,
) -> None:
    # Revoked in the store, as the CLI on the data directory would: the registry watch
    # notices and wakes the idle stream, which re-checks its caller.
    assert server.server is not None
    store = server.server.store
    partner = server.add_partner("kestrel-social")
    credential, token = new_token_credential(partner.partner_id)
    server.run(store.add_credential(credential))
    with ExchangeClient(server.target, token=token) as client:
        reader, ended = follow(client.subscribe(reconnect=False))
        server.run(store.revoke_credential(partner.partner_id, credential.credential_id, 1.0))
        reader.join(DEADLINE_S)
        assert not reader.is_alive(), "the idle stream did not end after the revocation"
        assert ended and isinstance(ended[0], AuthenticationError), ended


def test_an_idle_stream_ends_at_once_when_the_exchange_begins_to_shut_down(
    server: ServerThread,
) -> None:
    assert server.server is not None
    partner = server.add_partner("kestrel-social")
    with ExchangeClient(server.target, token=partner.token) as client:
        reader, ended = follow(client.subscribe(reconnect=False))
        server.server.subscriptions.begin_shutdown()
        reader.join(DEADLINE_S)
        assert not reader.is_alive(), "the idle stream did not end when shutting down"
        assert ended and isinstance(ended[0], ExchangeError), ended
        assert "shutting down" in str(ended[0])
