"""Partner SDK for the trafficking indicator exchange.

Submit STIX 2.1 bundles and stream the objects you may see::

    from exchange_client import ExchangeClient

    with ExchangeClient(target="exchange.example.org:50051", token="...") as client:
        bundle = {"type": "bundle", "id": "bundle--...", "objects": [...]}
        result = client.submit(bundle)  # who receives it: decided by its TLP
        client.submit(bundle, communities="sea-taskforce", exclude_kinds=["government"])
        summary = client.submit_many(objects, batch_size=500, on_progress=print)
        indicator = client.get("indicator--...")  # one object, if you may see it
        for delivery in client.subscribe(from_beginning=True):  # reconnects by itself
            print(delivery.object_id, delivery.tlp)

The same with asyncio::

    from exchange_client import AsyncExchangeClient

    async with AsyncExchangeClient() as client:
        result = await client.submit(bundle)
        async for delivery in client.subscribe(from_beginning=True):
            print(delivery.object_id)

Every accepted object comes with a receipt: its entry in the exchange's audit
log, which anyone can check offline against a signed checkpoint::

    receipt = result.results[0].receipt
    proof = client.inclusion_proof(receipt.log_index)  # with the latest checkpoint
    verify_receipt(receipt, proof, proof.checkpoint, public_key_pem)  # or ReceiptError

and that the log still holds a checkpoint you kept (not truncated, not rewritten)::

    kept = Checkpoint.from_json(saved)  # saved = client.checkpoint().to_json(), earlier
    latest = client.check_consistency(kept, public_key_pem)  # or ConsistencyError

Every failed call raises an :class:`ExchangeError` subclass.
"""

from exchange_protocol.checkpoint import Checkpoint, CheckpointError

from exchange_client._aio import AsyncExchangeClient, AsyncSubscription
from exchange_client._bundle import BundleInput
from exchange_client._client import ExchangeClient, Subscription
from exchange_client._consistency import ConsistencyError, verify_consistency
from exchange_client._errors import (
    AuthenticationError,
    ExchangeError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unavailable,
    ValidationError,
)
from exchange_client._models import (
    ERASE_REASONS,
    AuditedVersion,
    AuditEntry,
    BatchError,
    Delivery,
    EraseResult,
    InclusionProof,
    ObjectResult,
    PartnerKind,
    Problem,
    Receipt,
    RejectedObject,
    SubmitProgress,
    SubmitResult,
    SubmitSummary,
    VerifyResult,
)
from exchange_client._objects import TLP_AMBER, TLP_AMBER_STRICT, TLP_CLEAR, TLP_GREEN, TLP_RED
from exchange_client._receipts import ReceiptError, verify_receipt

__all__ = [
    "ERASE_REASONS",
    "TLP_AMBER",
    "TLP_AMBER_STRICT",
    "TLP_CLEAR",
    "TLP_GREEN",
    "TLP_RED",
    "AsyncExchangeClient",
    "AsyncSubscription",
    "AuditEntry",
    "AuditedVersion",
    "AuthenticationError",
    "BatchError",
    "BundleInput",
    "Checkpoint",
    "CheckpointError",
    "ConsistencyError",
    "Delivery",
    "EraseResult",
    "ExchangeClient",
    "ExchangeError",
    "InclusionProof",
    "NotFound",
    "ObjectResult",
    "PartnerKind",
    "PermissionDenied",
    "Problem",
    "RateLimited",
    "Receipt",
    "ReceiptError",
    "RejectedObject",
    "SubmitProgress",
    "SubmitResult",
    "SubmitSummary",
    "Subscription",
    "Unavailable",
    "ValidationError",
    "VerifyResult",
    "verify_consistency",
    "verify_receipt",
]
