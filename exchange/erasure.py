"""Erase: take an object back from everyone (no grpc here).

Its creator erases its object (a partner erases its own copy of an observable); the
operator, working on the store directly, erases every copy (a court order, a data
subject's request, retention). The store removes the bodies and queues the erasure
in one transaction; the relay then publishes tombstones and every stream that may
have delivered a version sends a notice. Who may do what is decided here:

- the creator (the copy's partner): its copy is erased; asking again answers with
  the last erasure (``already_erased``), so that a retry after a lost answer is safe;
- a partner that may see the object but did not create it: PermissionDenied;
- a partner that may not see it: NotFound, word for word what an object that does not
  exist gets, so that asking reveals nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from exchange import policy
from exchange.audit.entries import OPERATOR
from exchange.errors import InvalidArgument, NotFound, PermissionDenied
from exchange.model import EraseReason, Erasure, Partner
from exchange.store import ObjectStore

__all__ = ["ErasureOutcome", "check_object_id", "erase", "erase_reason"]

# A STIX id is type--UUID: far below this. Keeps refusals (and what they quote) small.
_MAX_ID = 256


@dataclass(frozen=True, slots=True)
class ErasureOutcome:
    # One per copy erased (an operator's erasure of an observable held by several
    # partners erases each copy); those of the first erasure when already_erased.
    erasures: tuple[Erasure, ...]
    already_erased: bool = False

    @property
    def versions(self) -> list[str]:
        return [v.version for e in self.erasures for v in e.versions]


def erase_reason(code: str) -> EraseReason:
    """The reason a code names; InvalidArgument listing the codes for anything else
    (free text is refused: it would travel to every recipient and stay in the log)."""
    try:
        return EraseReason(code)
    except ValueError:
        codes = ", ".join(r.value for r in EraseReason)
        raise InvalidArgument(
            f"reason {code[:40]!r} is not a reason code; use one of: {codes}"
        ) from None


def check_object_id(object_id: str) -> None:
    if not object_id:
        raise InvalidArgument("object_id is empty; pass the STIX id of the object to erase")
    if len(object_id) > _MAX_ID or not object_id.isprintable():
        raise InvalidArgument(
            f"object_id is not a STIX id (type--UUID, printable, at most {_MAX_ID} characters)"
        )


async def erase(
    store: ObjectStore,
    partner: Partner | None,
    object_id: str,
    reason: EraseReason,
    *,
    at: float | None = None,
    on_erased: Callable[[list[Erasure]], None] | None = None,
) -> ErasureOutcome:
    """Erase ``object_id`` for ``partner`` (its copy), or for the operator (None: every
    copy). ``on_erased`` is told of what was erased (so that this process holds back
    records of it at once, before the relay's tombstones reach its readers)."""
    check_object_id(object_id)
    copy_of = None if partner is None else partner.partner_id
    by = OPERATOR if partner is None else partner.partner_id
    done = await store.erase_object(
        object_id, by=by, reason=reason, at=time.time() if at is None else at, copy_of=copy_of
    )
    if done:
        if on_erased is not None:
            on_erased(done)
        return ErasureOutcome(tuple(done))
    earlier = await store.erasures_of(object_id, copy_of)
    if earlier:
        last = earlier[-1].erased_at
        return ErasureOutcome(tuple(e for e in earlier if e.erased_at == last), True)
    if partner is not None:
        copies = await store.object_copies(object_id)
        if any(policy.may_receive(partner, c.audience) for c in copies):
            raise PermissionDenied(
                f"partner {partner.partner_id} did not create {object_id}: only its creator"
                " (or the operator) may erase it; ask its creator, or report a sighting"
            )
        raise NotFound(f"no object {object_id} that partner {partner.partner_id} may see")
    raise NotFound(f"no object {object_id} is held")
