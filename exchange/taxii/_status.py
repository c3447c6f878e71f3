"""TAXII status resources: the answer to an add-objects request, kept per partner so
that nobody else can read it. Submissions are synchronous (an object is committed or
refused before the answer), so a status is complete when it is made."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from datetime import UTC, datetime

from exchange.model import ObjectOutcome, ObjectResult

__all__ = ["MAX_STATUSES_PER_PARTNER", "Statuses", "status_resource"]

# Statuses kept per partner (the oldest go first); they live in this process's memory.
MAX_STATUSES_PER_PARTNER = 1000


def _message(result: ObjectResult) -> str:
    if result.rejection is not None:
        return result.rejection.message
    if result.outcome is ObjectOutcome.DUPLICATE:
        return "duplicate: this version is already held"
    return result.notice or "accepted"


def status_resource(results: list[ObjectResult]) -> dict[str, object]:
    def detail(r: ObjectResult) -> dict[str, str]:
        return {"id": r.object_id, "version": r.version, "message": _message(r)}

    # A duplicate is a success for TAXII: the server holds that version.
    successes = [detail(r) for r in results if r.outcome is not ObjectOutcome.REJECTED]
    failures = [detail(r) for r in results if r.outcome is ObjectOutcome.REJECTED]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "id": str(uuid.uuid4()),
        "status": "complete",
        "request_timestamp": now,
        "total_count": len(results),
        "success_count": len(successes),
        "successes": successes,
        "failure_count": len(failures),
        "failures": failures,
        "pending_count": 0,
        "pendings": [],
    }


class Statuses:
    def __init__(self, per_partner: int = MAX_STATUSES_PER_PARTNER) -> None:
        self._per_partner = per_partner
        self._kept: dict[str, OrderedDict[str, dict[str, object]]] = {}

    def keep(self, partner_id: str, status: dict[str, object]) -> None:
        kept = self._kept.setdefault(partner_id, OrderedDict())
        kept[str(status["id"])] = status
        while len(kept) > self._per_partner:
            kept.popitem(last=False)

    def get(self, partner_id: str, status_id: str) -> dict[str, object] | None:
        kept = self._kept.get(partner_id)
        return None if kept is None else kept.get(status_id)
