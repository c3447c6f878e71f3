"""Is this valid STIX 2.1, and may this partner publish it? One answer per object.

The stix2 library does the full check (``stix2.parse``), but it is lenient in
ways that matter once we store the *submitted* JSON rather than the library's
rewrite of it: it coerces types (``"labels": "x"`` becomes a list, ``"revoked":
"false"`` becomes False, ``1`` becomes ``"1"``), fills in missing ``created``,
``modified``, ``valid_from`` and ``spec_version``, takes any timestamp
``strptime`` can read, and lets custom content in through unregistered
extensions and the ``custom_properties`` keyword. The checks before and after
``stix2.parse`` close those gaps, cheaply, so the stored body is exactly what
was checked.

A refused object's answer names every problem found in it (one per top-level
property, at most ``MAX_PROBLEMS``, the rest counted), so that a partner can fix
them all in one go: each check adds its problem and the next one runs. Whether an
object is refused does not depend on that: the checks are the ones that always
ran, in the same order (the first problem is the one named alone before), and
``exchange.stix._stix2_stage`` only looks further into objects already refused.

Pure: no I/O, picklable arguments and results (runs in a process pool).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson
import stix2
from stix2.registry import STIX2_OBJ_MAPS

from exchange.config import Limits
from exchange.model import Problem, Rejection, Tlp, ValidObject
from exchange.stix._explain import (
    EXTENSION_CLASSES,
    NO_CUSTOM,
    REDEFINE_TLP,
    kind,
    missing_reason,
    printable,
    short,
)
from exchange.stix._fast import accepted, fast_validate, version_label
from exchange.stix._invalid import Invalid, Problems
from exchange.stix._json_checks import check_json, check_types
from exchange.stix._pattern import check_pattern_cost
from exchange.stix._stix2_stage import check_after_parse, explained, more_problems
from exchange.stix.tlp import TLP_BY_MARKING_ID, TLP_EXTENSION_DEFINITION_ID, marking_id
from exchange.stix.vocab import SCO_EXTENSION_TYPES, is_stix_id

__all__ = ["MAX_PROBLEMS", "validate_objects", "validate_objects_counted"]

# Problems named in one rejection; the rest are counted. Enough to fix an object in
# one go, few enough that a bundle of broken objects gets a bounded answer.
MAX_PROBLEMS = 10

# Snapshot of the spec-defined classes, taken at import: anything registered
# later (custom types) stays refused here even if stix2 would accept it.
# The extension classes, which every stage needs, are in _explain.EXTENSION_CLASSES.
_MAPS = STIX2_OBJ_MAPS["2.1"]
_SDO_CLASSES: Mapping[str, Any] = MappingProxyType(
    {t: c for t, c in _MAPS["objects"].items() if t != "bundle"}
)
_SCO_CLASSES: Mapping[str, Any] = MappingProxyType(dict(_MAPS["observables"]))
# SDOs, SROs, marking-definition, language-content, extension-definition; never SCOs.
_HAS_CREATED_BY_REF = frozenset(
    t for t, c in _SDO_CLASSES.items() if "created_by_ref" in c._properties
)
# Keyword arguments of stix2's constructors: as property names they would switch
# its checks off (custom_properties turns allow_custom on), so never pass them.
_STIX2_KEYWORDS = frozenset({"custom_properties", "allow_custom", "interoperability"})


def validate_objects(
    objects: Sequence[Any],
    *,
    start_index: int = 0,
    submitter_identity: str,
    default_tlp: Tlp,
    limits: Limits,
) -> list[ValidObject | Rejection]:
    """Check each object; one ValidObject or Rejection per input, in input order.

    ``index`` of each result is ``start_index`` + its position, so a large bundle
    can be split across workers and the answers still name the right object.
    """
    return validate_objects_counted(
        objects,
        start_index=start_index,
        submitter_identity=submitter_identity,
        default_tlp=default_tlp,
        limits=limits,
    )[0]


def validate_objects_counted(
    objects: Sequence[Any],
    *,
    start_index: int = 0,
    submitter_identity: str,
    default_tlp: Tlp,
    limits: Limits,
) -> tuple[list[ValidObject | Rejection], int]:
    """``validate_objects``, and how many of the objects the fast path decided
    (``exchange.stix._fast``: the same answer, for the valid objects it can be
    certain of; the others take the full path)."""
    results: list[ValidObject | Rejection] = []
    fast = 0
    for pos, obj in enumerate(objects):
        index = start_index + pos
        try:
            result = fast_validate(obj, index, submitter_identity, default_tlp, limits)
        except Exception:  # noqa: BLE001 - never expected; the full path then decides
            result = None
        if result is None:
            results.append(_validate_one(obj, index, submitter_identity, default_tlp, limits))
        else:
            results.append(result)
            fast += 1
    return results, fast


def _validate_one(
    obj: Any, index: int, submitter: str, default_tlp: Tlp, limits: Limits
) -> ValidObject | Rejection:
    object_id = f"objects[{index}]"
    version = ""
    problems = Problems()
    try:
        if not isinstance(obj, dict):
            raise Invalid("", f"a STIX object (a JSON object), got {kind(obj)}")
        oid = obj.get("id")
        if isinstance(oid, str) and len(oid) <= 300:  # longer is not an id; keep reports short
            object_id = oid
        version = version_label(obj)
        valid = _check(obj, index, submitter, default_tlp, limits, problems=problems)
        if valid is not None:
            return valid
    except Invalid as exc:  # nothing more of this object is looked at
        problems.found.append(exc)
    # Last resort: no input, however hostile, escapes as an exception.
    except Exception as exc:  # noqa: BLE001 - becomes a per-object rejection
        if not problems:  # else it is refused already, for the problems found
            problems.found.append(
                Invalid(
                    "",
                    "a STIX 2.1 object the validator can check; checking it failed with "
                    f"{type(exc).__name__}: {short(str(exc), 200)}",
                )
            )
    return _rejection(problems.found, printable(object_id), index, printable(version))


def _rejection(found: list[Invalid], object_id: str, index: int, version: str) -> Rejection:
    # Reasons quote submitted text: keep them short and on one visible line.
    listed = tuple(
        Problem(printable(short(p.prop, 200)), printable(short(p.expected, 500)))
        for p in found[:MAX_PROBLEMS]
    )
    first = listed[0]
    return Rejection(
        object_id,
        first.property,
        first.expected,
        index,
        version,
        # The first limit passed, if any: the object went past it.
        next((p.limit for p in found if p.limit), ""),
        problems=listed if len(found) > 1 else (),
        more_problems=max(0, len(found) - MAX_PROBLEMS),
    )


def _check(
    obj: dict[str, Any],
    index: int,
    submitter: str,
    default_tlp: Tlp,
    limits: Limits,
    *,
    problems: Problems,
) -> ValidObject | None:
    """The object as it will be stored, or None with ``problems`` saying why not.

    The checks run in the order they always have, so the first problem is the one
    reported alone before; an Invalid raised ends the checks (the object is beyond
    what the exchange looks into, or its type is unknown).
    """
    obj_type = _check_type_name(obj)
    oid = problems.run(_check_id, obj, obj_type)
    check_json(obj, limits, problems)
    cls = _check_type(obj_type)
    problems.run(_check_spec_version, obj, obj_type)
    problems.run(_check_defaulted_required, obj, obj_type, cls)
    if obj_type == "marking-definition" and oid in TLP_BY_MARKING_ID:
        problems.add(Invalid("id", REDEFINE_TLP))
    problems.run(_check_extensions, obj, obj_type)
    if keywords := _STIX2_KEYWORDS.intersection(obj):
        problems.add(Invalid(", ".join(sorted(keywords)), NO_CUSTOM))

    stamp_creator = problems.run(_check_creator, obj, obj_type, submitter) or False
    tlp, stamp_tlp = problems.run(_check_tlp, obj, default_tlp) or (default_tlp, False)
    problems.run(_check_confidence, obj)
    check_types(obj, cls, problems)

    stored = obj
    if stamp_creator or stamp_tlp:
        stored = dict(obj)
        if stamp_creator:
            stored["created_by_ref"] = submitter
        if stamp_tlp:
            stored["object_marking_refs"] = [*obj.get("object_marking_refs", ()), marking_id(tlp)]
    # Serialised before stix2 sees it: the stored body is the submission, byte for byte
    # in every string, whatever the library does with its own copy.
    body = _serialised(stored, problems)
    if len(body) > limits.max_object_bytes:
        problems.add(
            Invalid(
                "",
                f"an object of at most {limits.max_object_bytes:,} bytes as compact JSON"
                f" (limits.max_object_bytes: anything larger could not be published), got"
                f" {len(body):,}",
                "limits.max_object_bytes",
            )
        )
    pattern_parsable = True
    if obj_type == "indicator" and stored.get("pattern_type") == "stix":
        problems.run(check_pattern_cost, stored.get("pattern"), limits)
        pattern_parsable = not problems.faulted("pattern")

    if problems:
        more_problems(stored, cls, problems, pattern_parsable=pattern_parsable)
        return None
    try:
        parsed = stix2.parse(stored, allow_custom=False, version="2.1")
    except Exception as exc:  # noqa: BLE001 - stix2 raises many types; explain() names them
        problems.add(explained(exc, stored, cls))
        # The pattern, when at fault, was parsed once already.
        more_problems(stored, cls, problems, pattern_parsable=not problems.faulted("pattern"))
        return None
    check_after_parse(stored, parsed, obj_type, problems)
    if problems:
        return None

    creator = stored["created_by_ref"] if obj_type in _HAS_CREATED_BY_REF else submitter
    return accepted(obj, obj_type, creator=creator, tlp=tlp, body=body, index=index)


def _serialised(stored: dict[str, Any], problems: Problems) -> bytes:
    if not problems:
        return orjson.dumps(stored)
    try:
        return orjson.dumps(stored)
    except orjson.JSONEncodeError:  # its JSON is at fault, as check_json said: size unknown
        return b""


def _check_creator(obj: dict[str, Any], obj_type: str, submitter: str) -> bool:
    """Whether the submitter's identity must be stamped on as created_by_ref."""
    if obj_type not in _HAS_CREATED_BY_REF:
        return False
    if "created_by_ref" not in obj:
        return True
    if obj["created_by_ref"] != submitter:
        raise Invalid(
            "created_by_ref",
            f"the submitter's own identity {submitter}; objects are published "
            "under the identity of the partner that submits them",
        )
    return False


# -- shape, identity, type ---------------------------------------------------


def _check_type_name(obj: dict[str, Any]) -> str:
    obj_type = obj.get("type")
    if not isinstance(obj_type, str):
        raise Invalid("type", f"a string naming the STIX object type, got {kind(obj_type)}")
    return obj_type


def _check_id(obj: dict[str, Any], obj_type: str) -> str:
    oid = obj.get("id")
    if not isinstance(oid, str):
        raise Invalid("id", f'a string "{short(obj_type, 60)}--<UUID>", got {kind(oid)}')
    if not is_stix_id(oid, obj_type):
        raise Invalid(
            "id",
            f'"{short(obj_type, 60)}--" followed by a lower-case RFC 4122 UUID '
            f'(the prefix must be the object\'s type), got "{short(oid)}"',
        )
    return oid


def _check_type(obj_type: str) -> Any:
    cls = _SDO_CLASSES.get(obj_type) or _SCO_CLASSES.get(obj_type)
    if cls is not None:
        return cls
    if obj_type == "bundle":
        raise Invalid("type", "a STIX object; a bundle cannot be nested inside a bundle")
    raise Invalid(
        "type",
        f'a STIX 2.1 object type such as "indicator", "identity" or "relationship"; '
        f'"{short(obj_type)}" is not one, and custom object types are not accepted',
    )


def _check_spec_version(obj: dict[str, Any], obj_type: str) -> None:
    if "spec_version" not in obj:
        if obj_type in _SDO_CLASSES:
            raise Invalid(
                "spec_version",
                '"2.1"; the property is required on this object type and the '
                "exchange accepts STIX 2.1 only",
            )
        return
    found = obj["spec_version"]
    if found != "2.1":
        shown = f'"{short(found)}"' if isinstance(found, str) else kind(found)
        raise Invalid("spec_version", f'"2.1"; the exchange accepts STIX 2.1 only, got {shown}')


def _check_defaulted_required(obj: dict[str, Any], obj_type: str, cls: Any) -> None:
    """Properties STIX 2.1 requires but stix2 would silently fill in with "now"."""
    if obj_type not in _SDO_CLASSES:
        return
    required = ["created"]
    if "modified" in cls._properties:
        required.append("modified")
    if obj_type == "indicator":
        required.append("valid_from")
    missing = [name for name in required if name not in obj]
    if missing:
        raise Invalid(", ".join(missing), missing_reason(missing))


def _check_extensions(obj: dict[str, Any], obj_type: str) -> None:
    if "extensions" not in obj:
        return
    extensions = obj["extensions"]
    if not isinstance(extensions, dict):
        raise Invalid("extensions", f"a JSON object keyed by extension id, got {kind(extensions)}")
    for key in extensions:
        if key == TLP_EXTENSION_DEFINITION_ID:
            raise Invalid(f"extensions.{key}", REDEFINE_TLP)
        owner = SCO_EXTENSION_TYPES.get(key)
        if owner is None or key not in EXTENSION_CLASSES:
            # stix2 accepts any extension-definition--<uuid> unchecked, and with a
            # toplevel-property-extension then lets any extra property through.
            raise Invalid(
                f"extensions.{short(key)}",
                "a registered extension; this one is not registered with the exchange, "
                "and custom content is accepted only through a registered extension",
            )
        if owner != obj_type:
            raise Invalid(f"extensions.{key}", f"{key} belongs on {owner} objects, not {obj_type}")


# -- provenance and TLP --------------------------------------------------------


def _check_tlp(obj: dict[str, Any], default_tlp: Tlp) -> tuple[Tlp, bool]:
    """The object's TLP level, and whether the default must be stamped on it."""
    levels: list[Tlp] = []
    if "object_marking_refs" in obj:
        refs = obj["object_marking_refs"]
        if not isinstance(refs, list) or not refs:
            raise Invalid(
                "object_marking_refs",
                f"a non-empty list of marking-definition ids, got {kind(refs)}",
            )
        for i, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise Invalid(
                    f"object_marking_refs[{i}]", f"a marking-definition id, got {kind(ref)}"
                )
        for ref in refs:
            level = TLP_BY_MARKING_ID.get(ref)
            if level is not None and level not in levels:
                levels.append(level)
    if len(levels) > 1:
        raise Invalid(
            "object_marking_refs",
            "at most one TLP level per object, got "
            + " and ".join(level.value.upper() for level in levels),
        )
    granular = obj.get("granular_markings")
    if isinstance(granular, list) and any(
        isinstance(g, dict)
        and isinstance(g.get("marking_ref"), str)
        and g["marking_ref"] in TLP_BY_MARKING_ID
        for g in granular
    ):
        # The exchange shares an object whole; a stricter TLP on one property would
        # be delivered to everyone entitled to the object's level.
        raise Invalid(
            "granular_markings",
            "no TLP marking on parts of an object; the exchange shares each object "
            "whole under one TLP level, so set it in object_marking_refs",
        )
    if levels:
        return levels[0], False
    return default_tlp, True


def _check_confidence(obj: dict[str, Any]) -> None:
    # stix2 does not range-check confidence, and bool would pass as an int.
    if "confidence" not in obj:
        return
    value = obj["confidence"]
    if type(value) is not int or not 0 <= value <= 100:
        shown = str(value) if type(value) in (int, float) else kind(value)
        raise Invalid("confidence", f"an integer from 0 to 100, got {short(shown)}")
