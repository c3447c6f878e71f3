"""Is an indicator's STIX pattern certainly accepted? The slow, certain way: the
exchange's cost limits, stix2patterns' own validator (as stix2 runs it) and the
observable types the exchange allows. A faster version replaces this module."""

from __future__ import annotations

from stix2patterns.validator import run_validator

from exchange.config import Limits
from exchange.stix._pattern import check_pattern_cost, pattern_object_types
from exchange.stix._stix2_stage import _PATTERN_OBJECT_TYPES

__all__ = ["accepted_object_types"]


def accepted_object_types(pattern: str, limits: Limits) -> frozenset[str] | None:
    """The object types ``pattern`` names, when it is certainly accepted by
    check_pattern_cost, run_validator(pattern, "2.1") and the exchange's allowed
    observable types; None when not sure."""
    try:
        check_pattern_cost(pattern, limits)
        if run_validator(pattern, "2.1"):
            return None
    except Exception:  # noqa: BLE001 - refused (Invalid), or stix2patterns failed: not sure
        return None
    types = frozenset(pattern_object_types(pattern))
    return types if types <= _PATTERN_OBJECT_TYPES else None
