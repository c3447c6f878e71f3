"""Partner SDK for the trafficking indicator exchange.

Submit STIX 2.1 bundles and stream the objects you may see::

    from exchange_client import ExchangeClient

    with ExchangeClient(target="exchange.example.org:50051", token="...") as client:
        result = client.submit({"type": "bundle", "id": "bundle--...", "objects": [...]})
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
from exchange_client._models import Delivery, ObjectResult, RejectedObject, SubmitResult

__all__ = [
    "AuthenticationError",
    "BundleInput",
    "Delivery",
    "ExchangeClient",
    "ExchangeError",
    "NotFound",
    "ObjectResult",
    "PermissionDenied",
    "RateLimited",
    "RejectedObject",
    "SubmitResult",
    "Subscription",
    "Unavailable",
    "ValidationError",
]
