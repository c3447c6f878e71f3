"""What a Subscribe stream's ending says beyond its status code.

A stream the exchange ends with ``UNAVAILABLE`` and the trailing-metadata key
:data:`RESUME_KEY` is not a failure: the exchange asks the subscriber to open the
stream again at once, from the cursor of the last message it handled (nothing is
missed or repeated). It does so when the partner's communities changed, and with
them the topics its stream reads. The value names the reason (:data:`TOPICS_CHANGED`;
a client should accept any value). Without the key, ``UNAVAILABLE`` is an outage
(restart, shutdown, network): reopen after a backoff.

A key, not the wording of the status details: the details are for people and may
change; every gRPC client can read trailing metadata.
"""

from __future__ import annotations

__all__ = ["RESUME_KEY", "TOPICS_CHANGED"]

RESUME_KEY = "exchange-resume"
"""Trailing-metadata key of a Subscribe stream ended so that it be reopened at once."""

TOPICS_CHANGED = "topics-changed"
"""The partner's communities changed, and with them the topics of its stream."""
