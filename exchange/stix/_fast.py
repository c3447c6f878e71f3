"""The fast path of validation: the same answer as the full path, for the objects
it can be certain of, in a small fraction of the time.

Why: ``stix2.parse`` (~640 µs for a typical indicator, most of it the pattern
grammar) plus the exchange's own checks (~100 µs) make validation the ingest
bottleneck; most submitted objects are plain, valid ones.

How equality with the full path (``validate._validate_one``) is ensured:

* It only ever accepts. Whenever it is not certain, it answers None and the
  caller runs the full path, which makes every decision to refuse and words every
  reason, unchanged.
* It accepts an object only if every check of the full path certainly passes:
  the exchange's own (``validate._check``, ``_json_checks``, ``check_after_parse``,
  reproduced here in their accepting form) and stix2's (per property, the checkers
  ``_fast_schema`` compiles from stix2's own class definitions, each stricter than
  both stix2's ``clean`` and the exchange's type checks; per class, its rules
  between properties, as reviewed in stix2 3.0.2).
* What it returns is built exactly as ``_check`` builds it: the same stamping of
  ``created_by_ref`` and the default TLP marking on a copy, the body as
  ``orjson.dumps`` of that copy, every ValidObject field from the same expressions.
* ``tests/unit/test_fast_validate.py`` compares the two paths field for field (the
  body bytes included) on valid objects of every type and on mutations of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson
from stix2.registry import STIX2_OBJ_MAPS

from exchange.config import Limits
from exchange.model import Tlp, ValidObject
from exchange.stix._explain import EXTENSION_CLASSES
from exchange.stix._fast_pattern import accepted_object_types
from exchange.stix._fast_rules import instant
from exchange.stix._fast_schema import (
    Budget,
    Schema,
    check_fields,
    schema_for,
    selectors_found,
)
from exchange.stix.tlp import TLP_BY_MARKING_ID, TLP_EXTENSION_DEFINITION_ID, marking_id
from exchange.stix.vocab import SCO_EXTENSION_TYPES, is_stix_id

__all__ = ["accepted", "compiled", "fast_validate", "version_label"]

# The same snapshot as exchange.stix.validate takes, at the same time (it imports
# this module): types registered later are never fast.
_MAPS = STIX2_OBJ_MAPS["2.1"]
_CLASSES: Mapping[str, Any] = MappingProxyType(
    {
        **{t: c for t, c in _MAPS["objects"].items() if t != "bundle"},
        **dict(_MAPS["observables"]),
    }
)
_SDO_TYPES = frozenset(t for t in _MAPS["objects"] if t != "bundle")
# Every property name, hash algorithm and extension key is shorter: with a smaller
# max_string_length, check_json would have names to refuse.
_LONGEST_NAME = 250
# The TLP markings the exchange stamps on: stix2 takes each (checked at import).
_STAMPED_TLP_OK = all(is_stix_id(marking_id(tlp), "marking-definition") for tlp in Tlp)


def fast_validate(  # noqa: PLR0911, PLR0912 - one early "not sure" per check
    obj: Any, index: int, submitter: str, default_tlp: Tlp, limits: Limits
) -> ValidObject | None:
    """Exactly what validate._validate_one(obj, index, submitter, default_tlp, limits)
    returns, when that is a ValidObject and this can be certain of it; None otherwise."""
    if type(obj) is not dict:
        return None
    obj_type = obj.get("type")
    if type(obj_type) is not str or obj_type not in _CLASSES:
        return None
    schema = schema_for(obj_type, _CLASSES[obj_type])
    if (
        schema is None
        or "id" not in obj
        or limits.max_string_length < _LONGEST_NAME
        or limits.max_depth < 1
        or not _STAMPED_TLP_OK
    ):
        return None
    properties = schema.cls._properties
    is_sdo = obj_type in _SDO_TYPES
    if is_sdo and not _required_by_exchange(obj, obj_type, properties):
        return None

    # Every property, as check_json, check_types and stix2 take it.
    budget = Budget(limits.max_string_length, limits.max_depth)
    if (
        not check_fields(schema, obj, budget, 1)
        or budget.containers > limits.max_json_containers + 1
    ):
        return None

    # The exchange's own rules.
    if obj_type == "marking-definition" and obj["id"] in TLP_BY_MARKING_ID:
        return None
    if "extensions" in obj and not _extensions_belong(obj["extensions"], obj_type):
        return None
    if "confidence" in obj and not 0 <= obj["confidence"] <= 100:  # an int by now
        return None
    if "granular_markings" in obj and not _granular_ok(obj):
        return None
    one_level, tlp = _tlp_level(obj)
    if not one_level:
        return None
    stamp_tlp = tlp is None
    has_creator = is_sdo and "created_by_ref" in properties
    stamp_creator = has_creator and "created_by_ref" not in obj
    if has_creator and not stamp_creator and obj["created_by_ref"] != submitter:
        return None
    if stamp_creator and not is_stix_id(submitter, "identity"):
        return None  # stix2 would read the stamped id: not sure
    if stamp_tlp and "object_marking_refs" not in properties:
        return None

    stored = obj
    level = default_tlp if tlp is None else tlp
    if stamp_creator or stamp_tlp:
        stored = dict(obj)
        if stamp_creator:
            stored["created_by_ref"] = submitter
        if stamp_tlp:
            stored["object_marking_refs"] = [
                *obj.get("object_marking_refs", ()),
                marking_id(default_tlp),
            ]
    body = orjson.dumps(stored)
    if len(body) > limits.max_object_bytes:
        return None

    # What stix2 checks beyond each property, and check_after_parse.
    if obj_type == "indicator" and not _pattern_ok(obj, limits):
        return None
    if not _not_modified_before_created(obj, properties):
        return None

    creator = stored["created_by_ref"] if has_creator else submitter
    return accepted(obj, obj_type, creator=creator, tlp=level, body=body, index=index)


def accepted(
    obj: dict[str, Any], obj_type: str, *, creator: str, tlp: Tlp, body: bytes, index: int
) -> ValidObject:
    """The ValidObject of an accepted ``obj`` (stored as ``body``): one construction for
    both paths, so that they cannot differ in it."""
    return ValidObject(
        object_id=obj["id"],
        object_type=obj_type,
        version=version_label(obj),
        created_by_ref=creator,
        tlp=tlp,
        body=body,
        index=index,
        labels=tuple(obj.get("labels", ())),
        revoked=bool(obj.get("revoked")),
        spec_version=obj.get("spec_version", "2.1"),
        # Either path has checked it is an identifier by now.
        refers_to=str(obj["sighting_of_ref"]) if obj_type == "sighting" else "",
    )


def _required_by_exchange(obj: dict[str, Any], obj_type: str, properties: Any) -> bool:
    """validate._check_spec_version and _check_defaulted_required, for an SDO/SRO."""
    if obj.get("spec_version") != "2.1" or "created" not in obj:
        return False
    if "modified" in properties and "modified" not in obj:
        return False
    return obj_type != "indicator" or "valid_from" in obj


def _extensions_belong(extensions: dict[str, Any], obj_type: str) -> bool:
    """validate._check_extensions: registered SCO extensions on their own type only."""
    return all(
        key != TLP_EXTENSION_DEFINITION_ID
        and key in EXTENSION_CLASSES
        and SCO_EXTENSION_TYPES.get(key) == obj_type
        for key in extensions
    )


def _granular_ok(obj: dict[str, Any]) -> bool:
    # No TLP on parts of an object (validate._check_tlp), and selectors stix2 finds.
    return all(
        marking.get("marking_ref") not in TLP_BY_MARKING_ID for marking in obj["granular_markings"]
    ) and selectors_found(obj)


def _tlp_level(obj: dict[str, Any]) -> tuple[bool, Tlp | None]:
    """validate._check_tlp: whether the markings name at most one TLP level, and that
    level (None when there is none: the default is stamped on)."""
    level: Tlp | None = None
    for ref in obj.get("object_marking_refs", ()):
        found = TLP_BY_MARKING_ID.get(ref)
        if found is not None:
            if level is not None and found is not level:
                return False, None
            level = found
    return True, level


def _pattern_ok(obj: dict[str, Any], limits: Limits) -> bool:
    """A STIX pattern of the 2.1 grammar (stix2 reads no pattern_version as 2.1) that
    stix2patterns, the exchange's cost limits and its allowed object types accept."""
    if obj["pattern_type"] != "stix" or obj.get("pattern_version", "2.1") != "2.1":
        return False  # other languages and versions: the full path decides
    return accepted_object_types(obj["pattern"], limits) is not None


def _not_modified_before_created(obj: dict[str, Any], properties: Any) -> bool:
    """check_after_parse: modified no earlier than created, as the instants stix2 reads."""
    if "created" not in obj or "modified" not in obj:
        return True
    created = instant(obj["created"], properties["created"])
    modified = instant(obj["modified"], properties["modified"])
    return created is not None and modified is not None and modified >= created


def version_label(obj: dict[str, Any]) -> str:
    """The version an answer names: ``modified``, else ``created`` (if short enough)."""
    for name in ("modified", "created"):
        value = obj.get(name)
        if isinstance(value, str) and len(value) <= 64:
            return value
    return ""


def compiled(obj_type: str) -> Schema | None:
    """The compiled schema of a type (for tests: which types are ever fast)."""
    cls = _CLASSES.get(obj_type)
    return None if cls is None else schema_for(obj_type, cls)
