"""Why stix2 refused an object, said precisely: the property at fault and what was expected.

stix2 reports the innermost property and wraps errors of embedded objects in one
about the outer property; the explainers here trace them back to a full path and
word the reason for a partner to act on. The wording helpers are shared with the
other validation stages, so every reason reads the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson
from stix2 import exceptions as stix_errors
from stix2 import properties as stix_props
from stix2.registry import STIX2_OBJ_MAPS

from exchange.stix._invalid import Invalid

__all__ = [
    "EXTENSION_CLASSES",
    "NO_CUSTOM",
    "PATTERN_REASON",
    "REDEFINE_TLP",
    "explain",
    "kind",
    "missing_reason",
    "printable",
    "short",
    "shown",
]

# Snapshot of the spec-defined extension classes, taken at import like the object
# classes in exchange.stix.validate: extensions registered later stay refused.
EXTENSION_CLASSES: Mapping[str, Any] = MappingProxyType(dict(STIX2_OBJ_MAPS["2.1"]["extensions"]))

_ORDERING = re.compile(r"'(\w+)' must be (?:greater|later) than (or equal to )?'(\w+)'")

_SHOWN = 80  # characters of submitted text quoted back in a reason
NO_CUSTOM = (
    "no custom properties; STIX 2.1 allows custom content only through a registered extension"
)
# How the reason for a pattern stix2patterns refuses begins; exchange.stix._pattern
# words what follows.
PATTERN_REASON = "a valid STIX pattern; "
REDEFINE_TLP = (
    "predefined TLP marking definitions are built in and cannot be redefined; "
    "reference them in object_marking_refs"
)


# -- stix2 exceptions ------------------------------------------------------------


def explain(exc: Exception, obj: dict[str, Any], cls: Any) -> Invalid:
    """Turn a stix2 exception into the property at fault and what was expected."""
    for exc_type, explainer in _EXPLAINERS:
        if isinstance(exc, exc_type):
            return explainer(exc, obj, cls)
    if type(exc) is ValueError:  # stix2's cross-property rules
        return _explain_value_error(str(exc), obj)
    raise exc  # not stix2 finding fault with the object: the last-resort handler reports it


def _explain_invalid_value(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    """InvalidValueError and InvalidObjRefError: stix2 names the class and property.

    stix2 names only the innermost property, and wraps errors of embedded objects
    (a kill chain phase, an extension) in one about the outer property; both are
    traced back here to a full path such as ``external_references[1].hashes``.
    """
    if exc.cls is not cls:  # raised inside an embedded object and passed up as it was
        found = _find_part(obj, cls, exc.cls)
        if found is None:
            return Invalid(exc.prop_name, str(exc.reason))
        path, embedded = found
        return _prefixed(path, _explain_invalid_value(exc, embedded, exc.cls))
    prop_name = exc.prop_name
    part = _failing_part(cls._properties.get(prop_name), obj.get(prop_name))
    if part is None:
        return Invalid(prop_name, _value_reason(prop_name, str(exc.reason), obj))
    suffix, item, item_cls = part
    if isinstance(exc.__cause__, stix_errors.STIXError):
        return _prefixed(prop_name + suffix, explain(exc.__cause__, item, item_cls))
    return Invalid(prop_name + suffix, str(exc.reason))


def _value_reason(prop_name: str, reason: str, obj: dict[str, Any]) -> str:
    if prop_name == "pattern":
        return PATTERN_REASON + reason
    if reason.startswith("must be a datetime object"):
        # The format already passed check_types, so the date itself is impossible.
        return (
            "a real UTC date and time like 2026-01-31T23:59:59.000Z, "
            f"got {shown(obj.get(prop_name))}"
        )
    return reason


def _explain_missing(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    return Invalid(", ".join(exc.properties), missing_reason(exc.properties))


def _explain_extra(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    return Invalid(", ".join(short(p, 60) for p in exc.properties), NO_CUSTOM)


def _explain_exclusive(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    names = exc.properties
    present = [p for p in names if p in obj]
    if len(present) > 1:
        return Invalid(", ".join(present), f"only one of {_quoted(names)}")
    return Invalid(", ".join(names), f"one of {_quoted(names)}")


def _explain_at_least_one(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    return Invalid(", ".join(exc.properties), f"at least one of {_quoted(exc.properties)}")


def _explain_dependent(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    return _explain_dependency(exc.dependencies[0], obj)


def _explain_tlp_definition(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    return Invalid("definition", REDEFINE_TLP)


def _explain_selector(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    return Invalid(
        "granular_markings",
        f"selectors that name properties of this object; {shown(exc.key)} does not",
    )


def _explain_parse(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    return Invalid("type", f"a STIX 2.1 object type; {exc}")


def _explain_presence(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    # The one generic presence rule in STIX 2.1: a marking needs a definition.
    prop = "definition" if obj.get("type") == "marking-definition" else ""
    return Invalid(prop, str(exc))


def _explain_stix(exc: Any, obj: dict[str, Any], cls: Any) -> Invalid:
    return Invalid("", str(exc))


# Most specific first: the presence errors share a base class, all share STIXError.
_EXPLAINERS: tuple[tuple[type[Exception], Callable[[Any, dict[str, Any], Any], Invalid]], ...] = (
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


def _explain_dependency(pair: tuple[str, str], obj: dict[str, Any]) -> Invalid:
    needed, dependent = pair
    if needed not in obj:
        return Invalid(dependent, f"'{dependent}' only together with '{needed}'")
    if obj[needed] in (None, False):
        return Invalid(dependent, f"'{dependent}' only when '{needed}' is true")
    # email-message: a multipart message carries body_multipart, not body.
    needed_value = short(orjson.dumps(obj[needed]).decode(), 40)
    return Invalid(dependent, f"no '{dependent}' when '{needed}' is {needed_value}")


def _explain_value_error(message: str, obj: dict[str, Any]) -> Invalid:
    # stix2 reports cross-property rules as "<id> 'valid_until' must be greater than ...".
    oid = obj.get("id", "")
    if message.startswith(f"{oid} "):
        message = message[len(oid) + 1 :]
    if match := _ORDERING.match(message):
        later, or_equal, earlier = match.group(1), match.group(2), match.group(3)
        return Invalid(
            later,
            f"later than {'or equal to ' if or_equal else ''}{earlier} "
            f"({obj.get(earlier)}), got {obj.get(later)}",
        )
    if match := re.match(r"'(\w+)'", message):
        return Invalid(match.group(1), message)
    if message.startswith("definition_type"):
        return Invalid("definition_type", "a marking type: statement or tlp")
    return Invalid("", message)


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
            ext_cls = EXTENSION_CLASSES.get(key)
            if ext_cls is not None and isinstance(ext, dict) and _refuses(ext_cls, ext):
                return f".{key}", ext, ext_cls
    return None


def _refuses(cls: Any, item: dict[str, Any]) -> bool:
    try:
        cls(**item)
    except Exception:  # noqa: BLE001 - any stix2 error means the item is refused
        return True
    return False


def _prefixed(path: str, inner: Invalid) -> Invalid:
    # Several names ("hashes, name") stay in the reason; the path names the part.
    if not inner.prop or ", " in inner.prop:
        return Invalid(path, inner.expected)
    return Invalid(f"{path}.{inner.prop}", inner.expected)


# -- wording -------------------------------------------------------------------


def missing_reason(names: Sequence[str]) -> str:
    if len(names) == 1:
        return f"required property {_quoted(names)} is missing"
    return f"required properties {_quoted(names)} are missing"


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def printable(text: str) -> str:
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


def short(text: str, limit: int = _SHOWN) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def shown(value: Any) -> str:
    return f'"{short(value)}"' if isinstance(value, str) else kind(value)


def kind(value: Any) -> str:
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
