"""Admission counts a call against a partner only for a credential that is good now:
a stolen token, once revoked (or expired, or its partner disabled), cannot take the
places its partner needs, even though admission remembers tokens it has seen; it is
refused before its request is read, as are made-up tokens and calls without any."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from exchange.auth import Authenticator, RegistryWatch, new_token_credential
from exchange.errors import Unauthenticated
from exchange.metrics import Metrics
from exchange.model import Partner, PartnerKind
from exchange.quota import NO_TOKEN, PartnerQuota
from exchange.services._admission import Admission, CallKind
from exchange.store.sqlite import SqliteStore

PARTNER = Partner(
    "ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44", kind=PartnerKind.NGO
)
LOOKUP = "/exchange.v1.ExchangeService/GetObject"


@dataclasses.dataclass
class _Details:  # what gRPC gives an interceptor
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    instance = SqliteStore(tmp_path / "exchange.sqlite3")
    await instance.open()
    try:
        yield instance
    finally:
        await instance.close()


async def _admit(admission: Admission, token: str | None) -> Any:
    async def behaviour(request: Any, context: Any) -> None:
        return None

    async def continuation(details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(behaviour)

    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    details = _Details(LOOKUP, metadata)
    return await admission.intercept_service(continuation, details)  # type: ignore[arg-type]


async def test_only_credentials_good_now_count_against_their_partner(
    store: SqliteStore,
) -> None:
    now = [1_000.0]
    kept, kept_token = new_token_credential(PARTNER.partner_id, now=now[0])
    await store.add_partner(PARTNER, kept)
    stolen, stolen_token = new_token_credential(PARTNER.partner_id, now=now[0])
    await store.add_credential(stolen)
    expiring, expiring_token = new_token_credential(PARTNER.partner_id, now=now[0], expires_in_s=60)
    await store.add_credential(expiring)
    watch = RegistryWatch(store)
    calls = PartnerQuota(
        10, setting="limits.max_calls_per_partner", what="calls", metrics=Metrics()
    )
    admission = Admission(
        store, dict.fromkeys(CallKind, calls), watch, certificates=False, clock=lambda: now[0]
    )
    held = [await _admit(admission, token) for token in (kept_token, stolen_token, expiring_token)]
    assert calls.in_progress(PARTNER.partner_id) == 3  # each remembered now

    # Revoked (the registry changes), expired (time passes): no longer counted, nor
    # are made-up tokens or calls without one.
    await store.revoke_credential(PARTNER.partner_id, stolen.credential_id, at=now[0])
    watch.bump()
    now[0] += 120
    for token in (stolen_token, expiring_token, "xt_made_up", None):
        for _ in range(20):
            held.append(await _admit(admission, token))
    assert calls.in_progress(PARTNER.partner_id) == 3
    assert calls.in_progress(NO_TOKEN) == 0
    held.append(await _admit(admission, kept_token))
    assert calls.in_progress(PARTNER.partner_id) == 4

    # A disabled partner's calls count for no one either (the handler refuses them).
    await store.update_partner(dataclasses.replace(PARTNER, disabled=True))
    watch.bump()
    for _ in range(20):
        held.append(await _admit(admission, kept_token))
    assert calls.in_progress(PARTNER.partner_id) == 4
    assert calls.in_progress(NO_TOKEN) == 0
    # Calls end (their behaviours are dropped): every place is given back.
    held.clear()
    assert calls.in_progress(PARTNER.partner_id) == 0


async def test_without_a_token_a_certificate_may_sign_in_calls_are_counted_together(
    store: SqliteStore,
) -> None:
    calls = PartnerQuota(3, setting="limits.max_calls_per_partner", what="calls", metrics=Metrics())
    admission = Admission(
        store, dict.fromkeys(CallKind, calls), RegistryWatch(store), certificates=True
    )
    held = [await _admit(admission, None) for _ in range(5)]
    assert calls.in_progress(NO_TOKEN) == 3  # the others were refused, unread
    held.clear()
    assert calls.in_progress(NO_TOKEN) == 0


async def test_a_known_token_needs_no_query_until_the_registry_changes(
    store: SqliteStore,
) -> None:
    credential, token = new_token_credential(PARTNER.partner_id, now=1_000.0)
    await store.add_partner(PARTNER, credential)
    queries = 0
    read = store.credential

    async def counted(*args: Any) -> Any:
        nonlocal queries
        queries += 1
        return await read(*args)

    store.credential = counted  # type: ignore[method-assign,assignment]
    watch = RegistryWatch(store, interval_s=0.01)
    watch.start()
    auth = Authenticator(store, watch)
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        for _ in range(5):
            assert (await auth.authenticate(metadata)).partner.partner_id == PARTNER.partner_id
        assert queries == 1
        with pytest.raises(Unauthenticated):  # unknown tokens are never kept
            await auth.authenticate((("authorization", "Bearer tix_made_up"),))
        # Revoked by another process (the CLI on the data directory: no bump here):
        # refused as soon as the watch sees the registry change.
        seen = watch.generation
        await store.revoke_credential(PARTNER.partner_id, credential.credential_id, at=1_001.0)
        async with asyncio.timeout(10):
            while watch.generation == seen:  # noqa: ASYNC110 (nothing to wait on but it)
                await asyncio.sleep(0.01)
        with pytest.raises(Unauthenticated, match="revoked"):
            await auth.authenticate(metadata)
    finally:
        await watch.close()
