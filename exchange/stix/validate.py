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

Pure: no I/O, picklable arguments and results (runs in a process pool).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson
import stix2
from stix2 import exceptions as stix_errors
from stix2 import properties as stix_props
from stix2.registry import STIX2_OBJ_MAPS
from stix2.v21.common import MarkingProperty

from exchange.config import Limits
from exchange.model import Rejection, Tlp, ValidObject
from exchange.stix.tlp import TLP_BY_MARKING_ID, TLP_EXTENSION_DEFINITION_ID, marking_id
from exchange.stix.vocab import SCO_EXTENSION_TYPES, TRAFFICKING_OBSERVABLE_TYPES, is_stix_id

__all__ = ["validate_objects"]

# Snapshot of the spec-defined classes, taken at import: anything registered
# later (custom types) stays refused here even if stix2 would accept it.
_MAPS = STIX2_OBJ_MAPS["2.1"]
_SDO_CLASSES: Mapping[str, Any] = MappingProxyType(
    {t: c for t, c in _MAPS["objects"].items() if t != "bundle"}
)
_SCO_CLASSES: Mapping[str, Any] = MappingProxyType(dict(_MAPS["observables"]))
_EXTENSION_CLASSES: Mapping[str, Any] = MappingProxyType(dict(_MAPS["extensions"]))
# SDOs, SROs, marking-definition, language-content, extension-definition; never SCOs.
_HAS_CREATED_BY_REF = frozenset(
    t for t, c in _SDO_CLASSES.items() if "created_by_ref" in c._properties
)
_PATTERN_OBJECT_TYPES = frozenset(_SCO_CLASSES) | TRAFFICKING_OBSERVABLE_TYPES
# Keyword arguments of stix2's constructors: as property names they would switch
# its checks off (custom_properties turns allow_custom on), so never pass them.
_STIX2_KEYWORDS = frozenset({"custom_properties", "allow_custom", "interoperability"})

_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z")
# STIX pattern string literals ('...' with \' and \\ escapes) may hold ':'; outside
# them a ':' only ever follows an object type.
_PATTERN_STRING = re.compile(r"'(?:[^'\\]|\\.)*'", re.DOTALL)
_PATTERN_OBJECT_TYPE = re.compile(r"([A-Za-z0-9_-]+)\s*:")
_ORDERING = re.compile(r"'(\w+)' must be (?:greater|later) than (or equal to )?'(\w+)'")

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson can write back
_SHOWN = 80  # characters of submitted text quoted back in a reason
_NO_CUSTOM = (
    "no custom properties; STIX 2.1 allows custom content only through a registered extension"
)
_REDEFINE_TLP = (
    "predefined TLP marking definitions are built in and cannot be redefined; "
    "reference them in object_marking_refs"
)


_Checker = Callable[[Any, str], None]  # (value, property path); raises _Invalid


class _Invalid(Exception):
    """One reason to refuse an object; becomes a Rejection."""

    def __init__(self, prop: str, expected: str) -> None:
        super().__init__(expected)
        self.prop = prop
        self.expected = expected


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
    return [
        _validate_one(obj, start_index + pos, submitter_identity, default_tlp, limits)
        for pos, obj in enumerate(objects)
    ]


def _validate_one(
    obj: Any, index: int, submitter: str, default_tlp: Tlp, limits: Limits
) -> ValidObject | Rejection:
    object_id = f"objects[{index}]"
    version = ""
    try:
        if not isinstance(obj, dict):
            raise _Invalid("", f"a STIX object (a JSON object), got {_kind(obj)}")
        oid = obj.get("id")
        if isinstance(oid, str) and len(oid) <= 300:  # longer is not an id; keep reports short
            object_id = oid
        version = _version_label(obj)
        return _check(obj, index, submitter, default_tlp, limits)
    except _Invalid as exc:
        prop, expected = exc.prop, exc.expected
    except Exception as exc:  # last resort: no input, however hostile, escapes as an exception
        prop = ""
        expected = (
            "a STIX 2.1 object the validator can check; checking it failed with "
            f"{type(exc).__name__}: {_short(str(exc), 200)}"
        )
    # Reasons quote submitted text: keep them short and on one visible line.
    return Rejection(
        _printable(object_id),
        _printable(_short(prop, 200)),
        _printable(_short(expected, 500)),
        index,
        _printable(version),
    )


def _check(
    obj: dict[str, Any], index: int, submitter: str, default_tlp: Tlp, limits: Limits
) -> ValidObject:
    obj_type, oid = _check_identity(obj)
    _check_json(obj, limits)
    cls = _check_type(obj_type)
    _check_spec_version(obj, obj_type)
    _check_defaulted_required(obj, obj_type, cls)
    if obj_type == "marking-definition" and oid in TLP_BY_MARKING_ID:
        raise _Invalid("id", _REDEFINE_TLP)
    _check_extensions(obj, obj_type)
    if keywords := _STIX2_KEYWORDS.intersection(obj):
        raise _Invalid(", ".join(sorted(keywords)), _NO_CUSTOM)

    stamp_creator = False
    if obj_type in _HAS_CREATED_BY_REF:
        if "created_by_ref" not in obj:
            stamp_creator = True
        elif obj["created_by_ref"] != submitter:
            raise _Invalid(
                "created_by_ref",
                f"the submitter's own identity {submitter}; objects are published "
                "under the identity of the partner that submits them",
            )
    tlp, stamp_tlp = _check_tlp(obj, default_tlp)
    _check_confidence(obj)
    _check_types(obj, cls, "")

    stored = obj
    if stamp_creator or stamp_tlp:
        stored = dict(obj)
        if stamp_creator:
            stored["created_by_ref"] = submitter
        if stamp_tlp:
            stored["object_marking_refs"] = [*obj.get("object_marking_refs", ()), marking_id(tlp)]
    # Serialised before stix2 sees it: the stored body is the submission, byte for byte
    # in every string, whatever the library does with its own copy.
    body = orjson.dumps(stored)

    try:
        parsed = stix2.parse(stored, allow_custom=False, version="2.1")
    except Exception as exc:
        raise _explain(exc, stored, cls) from None
    _check_after_parse(stored, parsed, obj_type)

    return ValidObject(
        object_id=oid,
        object_type=obj_type,
        version=_version_label(obj),
        created_by_ref=stored["created_by_ref"] if obj_type in _HAS_CREATED_BY_REF else submitter,
        tlp=tlp,
        body=body,
        index=index,
        labels=tuple(obj.get("labels", ())),
        revoked=bool(obj.get("revoked")),
        spec_version=obj.get("spec_version", "2.1"),
    )


# -- shape, identity, type ---------------------------------------------------


def _check_identity(obj: dict[str, Any]) -> tuple[str, str]:
    obj_type = obj.get("type")
    if not isinstance(obj_type, str):
        raise _Invalid("type", f"a string naming the STIX object type, got {_kind(obj_type)}")
    oid = obj.get("id")
    if not isinstance(oid, str):
        raise _Invalid("id", f'a string "{_short(obj_type, 60)}--<UUID>", got {_kind(oid)}')
    if not is_stix_id(oid, obj_type):
        raise _Invalid(
            "id",
            f'"{_short(obj_type, 60)}--" followed by a lower-case RFC 4122 UUID '
            f'(the prefix must be the object\'s type), got "{_short(oid)}"',
        )
    return obj_type, oid


def _check_type(obj_type: str) -> Any:
    cls = _SDO_CLASSES.get(obj_type) or _SCO_CLASSES.get(obj_type)
    if cls is not None:
        return cls
    if obj_type == "bundle":
        raise _Invalid("type", "a STIX object; a bundle cannot be nested inside a bundle")
    raise _Invalid(
        "type",
        f'a STIX 2.1 object type such as "indicator", "identity" or "relationship"; '
        f'"{_short(obj_type)}" is not one, and custom object types are not accepted',
    )


def _check_spec_version(obj: dict[str, Any], obj_type: str) -> None:
    if "spec_version" not in obj:
        if obj_type in _SDO_CLASSES:
            raise _Invalid(
                "spec_version",
                '"2.1"; the property is required on this object type and the '
                "exchange accepts STIX 2.1 only",
            )
        return
    found = obj["spec_version"]
    if found != "2.1":
        shown = f'"{_short(found)}"' if isinstance(found, str) else _kind(found)
        raise _Invalid("spec_version", f'"2.1"; the exchange accepts STIX 2.1 only, got {shown}')


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
        raise _Invalid(", ".join(missing), _missing_reason(missing))


def _check_extensions(obj: dict[str, Any], obj_type: str) -> None:
    if "extensions" not in obj:
        return
    extensions = obj["extensions"]
    if not isinstance(extensions, dict):
        raise _Invalid(
            "extensions", f"a JSON object keyed by extension id, got {_kind(extensions)}"
        )
    for key in extensions:
        if key == TLP_EXTENSION_DEFINITION_ID:
            raise _Invalid(f"extensions.{key}", _REDEFINE_TLP)
        owner = SCO_EXTENSION_TYPES.get(key)
        if owner is None or key not in _EXTENSION_CLASSES:
            # stix2 accepts any extension-definition--<uuid> unchecked, and with a
            # toplevel-property-extension then lets any extra property through.
            raise _Invalid(
                f"extensions.{_short(key)}",
                "a registered extension; this one is not registered with the exchange, "
                "and custom content is accepted only through a registered extension",
            )
        if owner != obj_type:
            raise _Invalid(f"extensions.{key}", f"{key} belongs on {owner} objects, not {obj_type}")


# -- provenance and TLP --------------------------------------------------------


def _check_tlp(obj: dict[str, Any], default_tlp: Tlp) -> tuple[Tlp, bool]:
    """The object's TLP level, and whether the default must be stamped on it."""
    levels: list[Tlp] = []
    if "object_marking_refs" in obj:
        refs = obj["object_marking_refs"]
        if not isinstance(refs, list) or not refs:
            raise _Invalid(
                "object_marking_refs",
                f"a non-empty list of marking-definition ids, got {_kind(refs)}",
            )
        for i, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise _Invalid(
                    f"object_marking_refs[{i}]", f"a marking-definition id, got {_kind(ref)}"
                )
        for ref in refs:
            level = TLP_BY_MARKING_ID.get(ref)
            if level is not None and level not in levels:
                levels.append(level)
    if len(levels) > 1:
        raise _Invalid(
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
        raise _Invalid(
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
        shown = str(value) if type(value) in (int, float) else _kind(value)
        raise _Invalid("confidence", f"an integer from 0 to 100, got {_short(shown)}")


# -- JSON-level checks -----------------------------------------------------------


def _check_json(obj: dict[str, Any], limits: Limits) -> None:
    """String lengths, nesting depth, and values orjson can write back unchanged.

    Iterative, so no input can exhaust the stack; paths are built only for
    containers and for the value that fails.
    """
    max_len = limits.max_string_length
    max_depth = limits.max_depth
    stack: list[tuple[Any, str, int]] = [(obj, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > max_depth:
            raise _Invalid(path, f"nesting no deeper than {max_depth} levels")
        pairs: Iterable[tuple[str | int, Any]]
        if isinstance(node, dict):
            _check_keys(node, path, max_len)
            pairs = node.items()
        else:
            pairs = enumerate(node)
        for key, value in pairs:
            if type(value) is str and len(value) <= max_len:
                continue  # the common case, kept cheap
            if isinstance(value, dict | list):
                stack.append((value, _join(path, key), depth + 1))
            elif problem := _scalar_problem(value, max_len):
                raise _Invalid(_join(path, key), problem)


def _check_keys(node: dict[Any, Any], path: str, max_len: int) -> None:
    for key in node:
        if not isinstance(key, str):
            raise _Invalid(path, f"property names that are strings, got {_kind(key)}")
        if len(key) > max_len:
            raise _Invalid(
                _join(path, _short(key, 40)),
                f"property names of at most {max_len:,} characters, got one of {len(key):,}",
            )


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _scalar_problem(value: Any, max_len: int) -> str:
    if isinstance(value, str):
        if len(value) > max_len:
            return f"a string of at most {max_len:,} characters, got {len(value):,}"
        return ""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return "" if _INT_MIN <= value <= _INT_MAX else "an integer that fits in 64 bits"
    if isinstance(value, float):
        return "" if math.isfinite(value) else "a finite number"
    return f"a JSON value, got a Python {type(value).__name__}"


def _check_types(obj: Mapping[str, Any], cls: Any, prefix: str) -> None:
    """JSON types exactly as STIX 2.1 defines them, where stix2 would coerce instead."""
    schema = _schema(cls)
    for name, value in obj.items():
        check = schema.get(name)
        if check is not None:  # unknown names are stix2's to refuse
            check(value, f"{prefix}{name}")


@functools.cache
def _schema(cls: Any) -> Mapping[str, _Checker]:
    """One compiled checker per property of a stix2 class, built once per process."""
    return {name: _compile(prop) for name, prop in cls._properties.items()}


def _compile(prop: Any) -> _Checker:  # noqa: PLR0911
    # Subclasses before their bases (Hashes/Extensions are Dictionary, Enum is String).
    if isinstance(prop, stix_props.ListProperty):
        contained = prop.contained
        item_check = (
            _compile(contained)
            if isinstance(contained, stix_props.Property)
            else _embedded(contained)
        )
        return functools.partial(_check_list, item_check)
    if isinstance(prop, stix_props.EmbeddedObjectProperty):
        return _embedded(prop.type)
    if isinstance(prop, stix_props.ExtensionsProperty):
        return _check_extension_types
    if isinstance(prop, stix_props.HashesProperty):
        return _check_hashes
    if isinstance(
        prop, stix_props.DictionaryProperty | stix_props.ObservableProperty | MarkingProperty
    ):
        return functools.partial(_check_json_type, dict, "a JSON object")
    if isinstance(prop, stix_props.ReferenceProperty):
        return _check_reference
    if isinstance(prop, stix_props.TimestampProperty):
        return _check_timestamp
    if isinstance(prop, stix_props.BooleanProperty):
        return functools.partial(_check_json_type, bool, "true or false")
    if isinstance(prop, stix_props.IntegerProperty):
        return _check_integer
    if isinstance(prop, stix_props.FloatProperty):
        return _check_number
    if isinstance(
        prop,
        stix_props.StringProperty
        | stix_props.TypeProperty
        | stix_props.IDProperty
        | stix_props.BinaryProperty
        | stix_props.HexProperty
        | stix_props.SelectorProperty,
    ):
        return functools.partial(_check_json_type, str, "a string")
    return _check_nothing


def _embedded(cls: Any) -> _Checker:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise _Invalid(path, f"a JSON object, got {_kind(value)}")
        _check_types(value, cls, f"{path}.")

    return check


def _check_list(item_check: _Checker, value: Any, path: str) -> None:
    if not isinstance(value, list) or not value:
        raise _Invalid(path, f"a non-empty list, got {_kind(value)}")
    for i, item in enumerate(value):
        item_check(item, f"{path}[{i}]")


def _check_json_type(json_type: type, words: str, value: Any, path: str) -> None:
    if not isinstance(value, json_type):
        raise _Invalid(path, f"{words}, got {_kind(value)}")


def _check_extension_types(value: Any, path: str) -> None:
    _check_json_type(dict, "a JSON object", value, path)
    for key, ext in value.items():
        _check_json_type(dict, "a JSON object", ext, f"{path}.{key}")
        if key in _EXTENSION_CLASSES:
            _check_types(ext, _EXTENSION_CLASSES[key], f"{path}.{key}.")


def _check_hashes(value: Any, path: str) -> None:
    _check_json_type(dict, "a JSON object", value, path)
    for key, digest in value.items():
        _check_json_type(str, "a string", digest, f"{path}.{key}")


def _check_reference(value: Any, path: str) -> None:
    if not isinstance(value, str) or not is_stix_id(value, value.partition("--")[0]):
        raise _Invalid(path, f'a STIX id "<type>--<lower-case UUID>", got {_shown(value)}')


def _check_timestamp(value: Any, path: str) -> None:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise _Invalid(path, f"a UTC timestamp like 2026-01-31T23:59:59.000Z, got {_shown(value)}")


def _check_integer(value: Any, path: str) -> None:
    if type(value) is not int:  # bool is an int to Python, not to JSON
        raise _Invalid(path, f"an integer, got {_kind(value)}")


def _check_number(value: Any, path: str) -> None:
    if type(value) not in (int, float):
        raise _Invalid(path, f"a number, got {_kind(value)}")


def _check_nothing(value: Any, path: str) -> None:
    return None


# -- after stix2 -----------------------------------------------------------------


def _check_after_parse(stored: dict[str, Any], parsed: Any, obj_type: str) -> None:
    created, modified = parsed.get("created"), parsed.get("modified")
    if created is not None and modified is not None and modified < created:
        raise _Invalid(
            "modified",
            f"later than or equal to created ({stored['created']}), got {stored['modified']}",
        )
    if obj_type == "indicator" and stored.get("pattern_type") == "stix":
        unknown = _pattern_object_types(stored["pattern"]) - _PATTERN_OBJECT_TYPES
        if unknown:
            extra = ", ".join(sorted(TRAFFICKING_OBSERVABLE_TYPES))
            raise _Invalid(
                "pattern",
                f"observable types from STIX 2.1 or the exchange's own ({extra}); "
                f"not {', '.join(_short(t, 60) for t in sorted(unknown))}",
            )


def _pattern_object_types(pattern: str) -> set[str]:
    """Object types named in a pattern stix2 has already accepted as syntactically valid."""
    return set(_PATTERN_OBJECT_TYPE.findall(_PATTERN_STRING.sub("''", pattern)))


def _explain(exc: Exception, obj: dict[str, Any], cls: Any) -> _Invalid:
    """Turn a stix2 exception into the property at fault and what was expected."""
    for exc_type, explain in _EXPLAINERS:
        if isinstance(exc, exc_type):
            return explain(exc, obj, cls)
    if type(exc) is ValueError:  # stix2's cross-property rules
        return _explain_value_error(str(exc), obj)
    raise exc  # not stix2 finding fault with the object: the last-resort handler reports it


def _explain_invalid_value(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    """InvalidValueError and InvalidObjRefError: stix2 names the class and property.

    stix2 names only the innermost property, and wraps errors of embedded objects
    (a kill chain phase, an extension) in one about the outer property; both are
    traced back here to a full path such as ``external_references[1].hashes``.
    """
    if exc.cls is not cls:  # raised inside an embedded object and passed up as it was
        found = _find_part(obj, cls, exc.cls)
        if found is None:
            return _Invalid(exc.prop_name, str(exc.reason))
        path, embedded = found
        return _prefixed(path, _explain_invalid_value(exc, embedded, exc.cls))
    prop_name = exc.prop_name
    part = _failing_part(cls._properties.get(prop_name), obj.get(prop_name))
    if part is None:
        return _Invalid(prop_name, _value_reason(prop_name, str(exc.reason), obj))
    suffix, item, item_cls = part
    if isinstance(exc.__cause__, stix_errors.STIXError):
        return _prefixed(prop_name + suffix, _explain(exc.__cause__, item, item_cls))
    return _Invalid(prop_name + suffix, str(exc.reason))


def _value_reason(prop_name: str, reason: str, obj: dict[str, Any]) -> str:
    if prop_name == "pattern":
        return f"a valid STIX pattern; {reason}"
    if reason.startswith("must be a datetime object"):
        # The format already passed _check_types, so the date itself is impossible.
        return (
            "a real UTC date and time like 2026-01-31T23:59:59.000Z, "
            f"got {_shown(obj.get(prop_name))}"
        )
    return reason


def _explain_missing(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    return _Invalid(", ".join(exc.properties), _missing_reason(exc.properties))


def _explain_extra(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    return _Invalid(", ".join(_short(p, 60) for p in exc.properties), _NO_CUSTOM)


def _explain_exclusive(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    names = exc.properties
    present = [p for p in names if p in obj]
    if len(present) > 1:
        return _Invalid(", ".join(present), f"only one of {_quoted(names)}")
    return _Invalid(", ".join(names), f"one of {_quoted(names)}")


def _explain_at_least_one(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    return _Invalid(", ".join(exc.properties), f"at least one of {_quoted(exc.properties)}")


def _explain_dependent(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    return _explain_dependency(exc.dependencies[0], obj)


def _explain_tlp_definition(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    return _Invalid("definition", _REDEFINE_TLP)


def _explain_selector(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    return _Invalid(
        "granular_markings",
        f"selectors that name properties of this object; {_shown(exc.key)} does not",
    )


def _explain_parse(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    return _Invalid("type", f"a STIX 2.1 object type; {exc}")


def _explain_presence(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    # The one generic presence rule in STIX 2.1: a marking needs a definition.
    prop = "definition" if obj.get("type") == "marking-definition" else ""
    return _Invalid(prop, str(exc))


def _explain_stix(exc: Any, obj: dict[str, Any], cls: Any) -> _Invalid:
    return _Invalid("", str(exc))


# Most specific first: the presence errors share a base class, all share STIXError.
_EXPLAINERS: tuple[tuple[type[Exception], Callable[[Any, dict[str, Any], Any], _Invalid]], ...] = (
    (stix_errors.InvalidValueError, _explain_invalid_value),
    (stix_errors.InvalidObjRefError, _explain_invalid_value),
    (stix_errors.MissingPropertiesError, _explain_missing),
    (stix_errors.ExtraPropertiesError, _explain_extra),
    (stix_errors.MutuallyExclusivePropertiesError, _explain_exclusive),
    (stix_errors.AtLeastOnePropertyError, _explain_at_least_one),
    (stix_errors.DependentPropertiesError, _explain_dependent),
    (stix_errors.TLPMarkingDefinitionError, _explain_tlp_definition),
    (stix_errors.InvalidSelectorError, _explain_selector),
    (stix_errors.ParseError, _explain_parse),
    (stix_errors.PropertyPresenceError, _explain_presence),
    (stix_errors.STIXError, _explain_stix),
)


def _explain_dependency(pair: tuple[str, str], obj: dict[str, Any]) -> _Invalid:
    needed, dependent = pair
    if needed not in obj:
        return _Invalid(dependent, f"'{dependent}' only together with '{needed}'")
    if obj[needed] in (None, False):
        return _Invalid(dependent, f"'{dependent}' only when '{needed}' is true")
    # email-message: a multipart message carries body_multipart, not body.
    shown = _short(orjson.dumps(obj[needed]).decode(), 40)
    return _Invalid(dependent, f"no '{dependent}' when '{needed}' is {shown}")


def _explain_value_error(message: str, obj: dict[str, Any]) -> _Invalid:
    # stix2 reports cross-property rules as "<id> 'valid_until' must be greater than ...".
    oid = obj.get("id", "")
    if message.startswith(f"{oid} "):
        message = message[len(oid) + 1 :]
    if match := _ORDERING.match(message):
        later, or_equal, earlier = match.group(1), match.group(2), match.group(3)
        return _Invalid(
            later,
            f"later than {'or equal to ' if or_equal else ''}{earlier} "
            f"({obj.get(earlier)}), got {obj.get(later)}",
        )
    if match := re.match(r"'(\w+)'", message):
        return _Invalid(match.group(1), message)
    if message.startswith("definition_type"):
        return _Invalid("definition_type", "a marking type: statement or tlp")
    return _Invalid("", message)


def _find_part(obj: dict[str, Any], cls: Any, err_cls: Any) -> tuple[str, dict[str, Any]] | None:
    """Path to, and content of, the embedded object of class ``err_cls`` that stix2 refuses."""
    for name, prop in cls._properties.items():
        part = _failing_part(prop, obj.get(name))
        if part is None:
            continue
        suffix, item, item_cls = part
        if item_cls is err_cls:
            return name + suffix, item
        deeper = _find_part(item, item_cls, err_cls)
        if deeper is not None:
            return f"{name}{suffix}.{deeper[0]}", deeper[1]
    return None


def _failing_part(prop: Any, value: Any) -> tuple[str, dict[str, Any], Any] | None:
    """The first embedded object in ``value`` that stix2 refuses: (path suffix, dict, class).

    Only ever called once an object has already failed, so building parts again is fine.
    """
    if isinstance(prop, stix_props.ListProperty) and isinstance(value, list):
        item_cls = prop.contained
        if isinstance(item_cls, stix_props.EmbeddedObjectProperty):
            item_cls = item_cls.type
        if not isinstance(item_cls, stix_props.Property):
            for i, item in enumerate(value):
                if isinstance(item, dict) and _refuses(item_cls, item):
                    return f"[{i}]", item, item_cls
    elif isinstance(prop, stix_props.EmbeddedObjectProperty) and isinstance(value, dict):
        if _refuses(prop.type, value):
            return "", value, prop.type
    elif isinstance(prop, stix_props.ExtensionsProperty) and isinstance(value, dict):
        for key, ext in value.items():
            ext_cls = _EXTENSION_CLASSES.get(key)
            if ext_cls is not None and isinstance(ext, dict) and _refuses(ext_cls, ext):
                return f".{key}", ext, ext_cls
    return None


def _refuses(cls: Any, item: dict[str, Any]) -> bool:
    try:
        cls(**item)
    except Exception:
        return True
    return False


def _prefixed(path: str, inner: _Invalid) -> _Invalid:
    # Several names ("hashes, name") stay in the reason; the path names the part.
    if not inner.prop or ", " in inner.prop:
        return _Invalid(path, inner.expected)
    return _Invalid(f"{path}.{inner.prop}", inner.expected)


# -- wording -------------------------------------------------------------------


def _missing_reason(names: Sequence[str]) -> str:
    if len(names) == 1:
        return f"required property {_quoted(names)} is missing"
    return f"required properties {_quoted(names)} are missing"


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _version_label(obj: dict[str, Any]) -> str:
    for name in ("modified", "created"):
        value = obj.get(name)
        if isinstance(value, str) and len(value) <= 64:
            return value
    return ""


def _printable(text: str) -> str:
    return text.translate(_INVISIBLE)


# Control characters, line breaks and bidi controls, shown escaped instead.
_INVISIBLE = {
    c: f"\\u{c:04x}"
    for c in [
        *range(0x20),
        0x7F,
        0x85,
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]
}


def _short(text: str, limit: int = _SHOWN) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _shown(value: Any) -> str:
    return f'"{_short(value)}"' if isinstance(value, str) else _kind(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"JSON {'true' if value else 'false'}"
    if isinstance(value, list) and not value:
        return "an empty list"
    for json_type, words in _KINDS:
        if isinstance(value, json_type):
            return words
    return f"a Python {type(value).__name__}"


_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "JSON null (leave out a property that has no value)"),
    (str, "a JSON string"),
    ((int, float), "a JSON number"),
    (list, "a JSON array"),
    (dict, "a JSON object"),
)
