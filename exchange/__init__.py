"""The trafficking indicator exchange server.

Follow the data: ``services`` (gRPC) -> ``ingest`` (validate, stamp, persist)
-> ``store`` (object + outbox in one transaction) -> ``relay`` -> ``bus``
(Kafka or embedded) -> ``subscriptions`` -> ``services``. Who may see what is
decided in one place: ``policy``.
"""

__all__: list[str] = []
