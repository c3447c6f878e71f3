"""Partner SDK for the trafficking indicator exchange.

Submit STIX 2.1 bundles and stream the objects you may see::

    from exchange_client import ExchangeClient

    with ExchangeClient(target="exchange.example.org:50051", token="...") as client:
        bundle = {"type": "bundle", "id": "bundle--...", "objects": [...]}
        result = client.submit(bundle)  # who receives it: decided by its TLP
        client.submit(bundle, communities="sea-taskforce", exclude_kinds=["government"])
        indicator = client.get("indicator--...")  # one object, if you may see it
        for delivery in client.subscribe(from_beginning=True):
            print(delivery.object_id, delivery.tlp)

Every failed call raises an :class:`ExchangeError` subclass.
"""

from exchange_client._bundle import BundleInput
from exchange_client._client import ExchangeClient, Subscription
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
    Delivery,
    ObjectResult,
    PartnerKind,
    RejectedObject,
    SubmitResult,
)

__all__ = [
    "AuthenticationError",
    "BundleInput",
    "Delivery",
    "ExchangeClient",
    "ExchangeError",
    "NotFound",
    "ObjectResult",
    "PartnerKind",
    "PermissionDenied",
    "RateLimited",
    "RejectedObject",
    "SubmitResult",
    "Subscription",
    "Unavailable",
    "ValidationError",
]
