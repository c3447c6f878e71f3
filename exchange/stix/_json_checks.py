"""JSON-level checks: what stix2 would coerce, fill in or fail to write back.

Two passes over the submitted JSON, both before stix2 sees it: ``check_json``
bounds string lengths and nesting, refuses NUL characters (U+0000: PostgreSQL cannot
store them, and both stores must answer alike) and values orjson cannot write back
unchanged; ``check_types`` holds each property to the JSON type STIX 2.1 defines,
using a schema compiled once per stix2 class from its property classes.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stix2 import properties as stix_props
from stix2.v21.common import MarkingProperty

from exchange.config import Limits
from exchange.stix._explain import EXTENSION_CLASSES, kind, short, shown
from exchange.stix._invalid import Invalid, Problems
from exchange.stix.vocab import is_stix_id

__all__ = ["check_json", "check_types"]

_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson can write back
_NUL = "\x00"

_Checker = Callable[[Any, str], None]  # (value, property path); raises Invalid


# -- JSON-level checks -----------------------------------------------------------


def check_json(obj: dict[str, Any], limits: Limits, problems: Problems) -> None:
    """String lengths, nesting depth, no NUL in any string (property names too), and
    values orjson can write back unchanged: each problem is added to ``problems``,
    except a depth or size past the limits, which is raised (nothing more of such an
    object is looked at).

    Iterative, so no input can exhaust the stack; paths are built only for
    containers and for the value that fails.
    """
    max_len = limits.max_string_length
    max_depth = limits.max_depth
    # Checking each nested object or array costs stix2 ~0.2 ms: bound how long one
    # object can hold a core.
    containers_left = limits.max_json_containers + 1  # the object itself
    stack: list[tuple[Any, str, int]] = [(obj, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > max_depth:
            raise Invalid(path, f"nesting no deeper than {max_depth} levels")
        containers_left -= 1
        if containers_left < 0:
            raise Invalid(
                "",
                f"an object holding at most {limits.max_json_containers:,} JSON objects and"
                " arrays (limits.max_json_containers)",
                "limits.max_json_containers",
            )
        pairs: Iterable[tuple[str | int, Any]]
        if isinstance(node, dict):
            problems.run(_check_keys, node, path, max_len)
            pairs = node.items()
        else:
            pairs = enumerate(node)
        for key, value in pairs:
            if type(value) is str and len(value) <= max_len and _NUL not in value:
                continue  # the common case, kept cheap
            if isinstance(value, dict | list):
                stack.append((value, _join(path, key), depth + 1))
            elif problem := _scalar_problem(value, max_len):
                problems.add(Invalid(_join(path, key), problem))


def _check_keys(node: dict[Any, Any], path: str, max_len: int) -> None:
    for key in node:
        if not isinstance(key, str):
            raise Invalid(path, f"property names that are strings, got {kind(key)}")
        if len(key) > max_len:
            raise Invalid(
                _join(path, short(key, 40)),
                f"property names of at most {max_len:,} characters, got one of {len(key):,}",
            )
        if _NUL in key:
            raise Invalid(
                _join(path, short(key, 40)),
                f"property names without NUL characters (U+0000), got one at position"
                f" {key.index(_NUL)}",
            )


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _scalar_problem(value: Any, max_len: int) -> str:
    if isinstance(value, str):
        return _string_problem(value, max_len)
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return "" if _INT_MIN <= value <= _INT_MAX else "an integer that fits in 64 bits"
    if isinstance(value, float):
        return "" if math.isfinite(value) else "a finite number"
    return f"a JSON value, got a Python {type(value).__name__}"


def _string_problem(value: str, max_len: int) -> str:
    if len(value) > max_len:
        return f"a string of at most {max_len:,} characters, got {len(value):,}"
    if _NUL in value:
        # PostgreSQL cannot store it, and both stores must answer alike.
        return (
            "text without NUL characters (U+0000), which the exchange does not store;"
            f" got one at position {value.index(_NUL)}"
        )
    return ""


def check_types(obj: Mapping[str, Any], cls: Any, problems: Problems) -> None:
    """JSON types exactly as STIX 2.1 defines them, where stix2 would coerce instead;
    the first problem of each property is added to ``problems``."""
    schema = _schema(cls)
    for name, value in obj.items():
        check = schema.get(name)
        if check is not None:  # unknown names are stix2's to refuse
            problems.run(check, value, name)


def _check_types(obj: Mapping[str, Any], cls: Any, prefix: str) -> None:
    """check_types inside a property: the first problem is raised."""
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
            raise Invalid(path, f"a JSON object, got {kind(value)}")
        _check_types(value, cls, f"{path}.")

    return check


def _check_list(item_check: _Checker, value: Any, path: str) -> None:
    if not isinstance(value, list) or not value:
        raise Invalid(path, f"a non-empty list, got {kind(value)}")
    for i, item in enumerate(value):
        item_check(item, f"{path}[{i}]")


def _check_json_type(json_type: type, words: str, value: Any, path: str) -> None:
    if not isinstance(value, json_type):
        raise Invalid(path, f"{words}, got {kind(value)}")


def _check_extension_types(value: Any, path: str) -> None:
    _check_json_type(dict, "a JSON object", value, path)
    for key, ext in value.items():
        _check_json_type(dict, "a JSON object", ext, f"{path}.{key}")
        if key in EXTENSION_CLASSES:
            _check_types(ext, EXTENSION_CLASSES[key], f"{path}.{key}.")


def _check_hashes(value: Any, path: str) -> None:
    _check_json_type(dict, "a JSON object", value, path)
    for key, digest in value.items():
        _check_json_type(str, "a string", digest, f"{path}.{key}")


def _check_reference(value: Any, path: str) -> None:
    if not isinstance(value, str) or not is_stix_id(value, value.partition("--")[0]):
        raise Invalid(path, f'a STIX id "<type>--<lower-case UUID>", got {shown(value)}')


def _check_timestamp(value: Any, path: str) -> None:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise Invalid(path, f"a UTC timestamp like 2026-01-31T23:59:59.000Z, got {shown(value)}")


def _check_integer(value: Any, path: str) -> None:
    if type(value) is not int:  # bool is an int to Python, not to JSON
        raise Invalid(path, f"an integer, got {kind(value)}")


def _check_number(value: Any, path: str) -> None:
    if type(value) not in (int, float):
        raise Invalid(path, f"a number, got {kind(value)}")


def _check_nothing(value: Any, path: str) -> None:
    return None
