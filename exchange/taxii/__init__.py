"""TAXII 2.1 beside gRPC: the same credentials, policy, pipeline and audit log
(docs/taxii.md)."""

from exchange.taxii._app import TaxiiServer
from exchange.taxii._paging import MAX_LIMIT

__all__ = ["MAX_LIMIT", "TaxiiServer"]
