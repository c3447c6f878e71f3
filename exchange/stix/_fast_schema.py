"""Checkers for the fast path (``exchange.stix._fast``), compiled once per STIX type
from stix2's own class definitions.

Each checker answers one question about a submitted JSON value: is it *certainly*
accepted, by the exchange's JSON checks (``_json_checks``) and by stix2's ``clean``
for that property? True means certainly; False means "not sure", and the caller
falls back to the full path, which decides and explains. Every checker is stricter
than both: exact JSON types only (no coercion, no ``null``, no empty lists), ids and
references in the one canonical spelling the exchange accepts, timestamps in the
one format it accepts, hash algorithms named exactly as the spec names them.

The rules between properties (``_check_object_constraints`` and the ``__init__``
overrides of stix2's classes) are in ``exchange.stix._fast_rules``, one per class, as
read in stix2 3.0.2 (``stix2/v21/*.py``, ``stix2/base.py``). A class or property kind
not reviewed here compiles to None: objects of that type, or objects using that
property, always take the full path. The whole fast path is off under any other
stix2 version (``SUPPORTED``), since its rules may have changed.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import stix2
import stix2.base
import stix2.hashes
import stix2.v21.base
from stix2 import properties as stix_props
from stix2.registry import STIX2_OBJ_MAPS
from stix2.v21 import common as stix_common
from stix2.v21 import observables as stix_sco

from exchange.stix._explain import EXTENSION_CLASSES
from exchange.stix._fast_rules import (
    REVIEWED_BASES,
    REVIEWED_INIT,
    RULES,
    Rule,
    any_of,
    both,
    instant,
)
from exchange.stix.vocab import is_stix_id

__all__ = [
    "SUPPORTED",
    "Budget",
    "Checker",
    "Schema",
    "schema_for",
]

# The stix2 release whose classes, clean() methods and constraints were reviewed.
SUPPORTED = stix2.__version__ == "3.0.2"

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what check_json (and orjson) accept
_NUL = "\x00"
_MAX_GENERIC_DEPTH = 64  # free-form JSON (dictionary values) nested deeper: not sure
_MAPS = STIX2_OBJ_MAPS["2.1"]
_SOME_UUID = "00000000-0000-4000-8000-000000000000"


class Budget:
    """The exchange's JSON limits for one object, and what it has used of them."""

    __slots__ = ("containers", "max_depth", "max_len")

    def __init__(self, max_len: int, max_depth: int) -> None:
        self.max_len = max_len
        self.max_depth = max_depth
        self.containers = 1  # the object itself


# (value, budget, depth the value sits at if it is a container) -> certainly fine
Checker = Callable[[Any, Budget, int], bool]


@dataclass(frozen=True, slots=True)
class Schema:
    """One stix2 class, compiled: a checker per property, what must be present,
    and the class's own rules between properties."""

    cls: Any
    props: Mapping[str, Checker]
    required: frozenset[str]
    rule: Rule | None


# -- leaf checkers ----------------------------------------------------------------------


def _string(value: Any, budget: Budget, depth: int) -> bool:
    return type(value) is str and len(value) <= budget.max_len and _NUL not in value


def _boolean(value: Any, budget: Budget, depth: int) -> bool:
    return type(value) is bool


def _never(value: Any, budget: Budget, depth: int) -> bool:
    return False


def _timestamp(value: Any, budget: Budget, depth: int) -> bool:
    return type(value) is str and instant(value) is not None


def _fixed(expected: str) -> Checker:
    def check(value: Any, budget: Budget, depth: int) -> bool:
        return type(value) is str and value == expected

    return check


def _integer(low: int | None, high: int | None) -> Checker:
    low = _INT_MIN if low is None else max(low, _INT_MIN)
    high = _INT_MAX if high is None else min(high, _INT_MAX)

    def check(value: Any, budget: Budget, depth: int) -> bool:
        return type(value) is int and low <= value <= high

    return check


def _number(low: float | None, high: float | None) -> Checker:
    def check(value: Any, budget: Budget, depth: int) -> bool:
        kind = type(value)
        if kind is int:
            if not _INT_MIN <= value <= _INT_MAX:
                return False
        elif kind is not float or not math.isfinite(value):
            return False
        number = float(value)  # as FloatProperty.clean reads it
        return (low is None or number >= low) and (high is None or number <= high)

    return check


def _enum(allowed: frozenset[str]) -> Checker:
    def check(value: Any, budget: Budget, depth: int) -> bool:
        return type(value) is str and value in allowed

    return check


def _reference(prop: Any) -> Checker:
    """A reference in canonical form to a type this ReferenceProperty certainly takes:
    the types are found by asking its own clean() about each type stix2 knows."""
    known = {*_MAPS["objects"], *_MAPS["observables"]}
    if prop.spec_version != "2.1":
        return _never
    accepted = set()
    for type_name in known:
        try:
            prop.clean(f"{type_name}--{_SOME_UUID}", False, False)
        except Exception:  # noqa: BLE001, S112 - refused: not an accepted type
            continue
        accepted.add(type_name)
    types = frozenset(accepted)
    # References found good, for the ones that recur (markings, creators); bounded.
    good: set[str] = set()

    def check(value: Any, budget: Budget, depth: int) -> bool:
        if type(value) is not str:
            return False
        if value in good:
            return True
        type_name = value.partition("--")[0]
        if type_name in types and is_stix_id(value, type_name):
            if len(good) > 1024:
                good.clear()
            good.add(value)
            return True
        return False

    return check


_DICT_KEY = re.compile(r"[a-zA-Z0-9_-]+")


def _dictionary(prop: Any) -> Checker:
    if prop.spec_version != "2.1":
        return _never

    def check(value: Any, budget: Budget, depth: int) -> bool:
        if type(value) is not dict or not value or not _container(budget, depth):
            return False
        for key, item in value.items():
            if (
                type(key) is not str
                or len(key) > 250
                or len(key) > budget.max_len
                or _DICT_KEY.fullmatch(key) is None
                or not _json(item, budget, depth + 1)
            ):
                return False
        return True

    return check


def _hashes(prop: Any) -> Checker:
    """Hash algorithms named exactly as the spec names them (stix2 also takes other
    spellings, and custom names it then refuses), values as stix2 checks them."""
    names = prop._HashesProperty__spec_hash_names
    algorithms = {name: stix2.hashes.infer_hash_algorithm(name) for name in names}
    # ExternalReference accepts only hash-algorithm-ov names: all of these are.
    if not set(names) <= stix_common.ExternalReference._LEGAL_HASHES:
        return _never

    def check(value: Any, budget: Budget, depth: int) -> bool:
        if type(value) is not dict or not value or not _container(budget, depth):
            return False
        for key, digest in value.items():
            if type(key) is not str or key not in algorithms or not _string(digest, budget, 0):
                return False
            algorithm = algorithms[key]
            if algorithm is not None and not stix2.hashes.check_hash(algorithm, digest):
                return False
        return True

    return check


def _binary(value: Any, budget: Budget, depth: int) -> bool:
    if not _string(value, budget, depth):
        return False
    try:
        base64.b64decode(value)  # exactly what BinaryProperty.clean tries
    except Exception:  # noqa: BLE001 - any failure: stix2 refuses it
        return False
    return True


_HEX = re.compile(r"(?:[a-fA-F0-9]{2})+")


def _hex(value: Any, budget: Budget, depth: int) -> bool:
    return _string(value, budget, depth) and _HEX.fullmatch(value) is not None


def _container(budget: Budget, depth: int) -> bool:
    """Count one JSON object or array against check_json's limits."""
    budget.containers += 1
    return depth <= budget.max_depth


def _json(value: Any, budget: Budget, depth: int) -> bool:  # noqa: PLR0911 - one per kind
    """Free-form JSON (a dictionary property's values) that check_json accepts."""
    kind = type(value)
    if kind is str:
        return len(value) <= budget.max_len and _NUL not in value
    if kind is bool:
        return True
    if kind is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if kind is float:
        return math.isfinite(value)
    if depth > _MAX_GENERIC_DEPTH or not _container(budget, depth):
        return False
    if kind is list:
        return all(_json(item, budget, depth + 1) for item in value)
    if kind is dict:
        return all(
            type(key) is str
            and len(key) <= budget.max_len
            and _NUL not in key
            and _json(item, budget, depth + 1)
            for key, item in value.items()
        )
    return False  # null (stix2 reads it as absent) or not JSON


# -- containers ---------------------------------------------------------------------------


def _list(item: Checker) -> Checker:
    def check(value: Any, budget: Budget, depth: int) -> bool:
        if type(value) is not list or not value or not _container(budget, depth):
            return False
        inner = depth + 1
        for element in value:  # noqa: SIM110 - a plain loop is the faster here
            if not item(element, budget, inner):
                return False
        return True

    return check


def _embedded(schema: Schema) -> Checker:
    def check(value: Any, budget: Budget, depth: int) -> bool:
        return (
            type(value) is dict
            and _container(budget, depth)
            and check_fields(schema, value, budget, depth)
        )

    return check


def check_fields(schema: Schema, value: dict[str, Any], budget: Budget, depth: int) -> bool:
    """Every property known and certainly fine, the required ones present, and the
    class's rules kept. ``depth``: where ``value`` itself sits."""
    props = schema.props
    inner = depth + 1
    for key, item in value.items():
        check = props.get(key)  # a key that is no str is never found
        if check is None or not check(item, budget, inner):
            return False
    if not schema.required <= value.keys():
        return False
    return schema.rule is None or schema.rule(value)


def _extensions(prop: Any) -> Checker:
    """The spec's SCO extensions, each built by its stix2 class (which one may be on
    which object type is the exchange's rule, checked in ``_fast``)."""
    if prop.spec_version != "2.1":
        return _never

    def check(value: Any, budget: Budget, depth: int) -> bool:
        if type(value) is not dict or not value or not _container(budget, depth):
            return False
        for key, ext in value.items():
            schema = _EXTENSION_SCHEMAS.get(key)
            if (
                schema is None
                or type(ext) is not dict
                or not _container(budget, depth + 1)
                or not check_fields(schema, ext, budget, depth + 1)
            ):
                return False
        return True

    return check


# -- compiling ----------------------------------------------------------------------------


def _compile_property(prop: Any) -> Checker:  # noqa: PLR0911, PLR0912 - one case per kind
    """One property kind of stix2, as a checker; ``_never`` for kinds not reviewed
    (an object using it takes the full path)."""
    kind = type(prop)
    if hasattr(prop, "_fixed_value"):
        fixed = prop._fixed_value
        return _fixed(fixed) if type(fixed) is str else _never
    if kind is stix_props.ListProperty:
        contained = prop.contained
        if isinstance(contained, stix_props.Property):
            # ListProperty passes clean() three arguments: only these kinds take them.
            if type(contained) not in (
                stix_props.StringProperty,
                stix_props.OpenVocabProperty,
                stix_props.EnumProperty,
                stix_props.ReferenceProperty,
                stix_props.EmbeddedObjectProperty,
                stix_props.SelectorProperty,
            ):
                return _never
            item = _compile_property(contained)
        else:
            schema = _compile_class(contained)
            if schema is None:
                return _never
            item = _embedded(schema)
        return _never if item is _never else _list(item)
    if kind in (stix_props.StringProperty, stix_props.PatternProperty):
        return _string
    if kind is stix_props.OpenVocabProperty:
        return _string  # open vocabularies take any string
    if kind is stix_props.EnumProperty:
        return _enum(frozenset(a for a in prop.allowed if type(a) is str))
    if kind is stix_props.TimestampProperty:
        return _timestamp
    if kind is stix_props.BooleanProperty:
        return _boolean
    if kind is stix_props.IntegerProperty:
        return _integer(prop.min, prop.max)
    if kind is stix_props.FloatProperty:
        return _number(prop.min, prop.max)
    if kind is stix_props.ReferenceProperty:
        return _reference(prop)
    if kind is stix_props.DictionaryProperty:
        return _dictionary(prop)
    if kind is stix_props.HashesProperty:
        return _hashes(prop)
    if kind is stix_props.ExtensionsProperty:
        return _extensions(prop)
    if kind is stix_props.EmbeddedObjectProperty:
        schema = _compile_class(prop.type)
        return _never if schema is None else _embedded(schema)
    if kind is stix_props.BinaryProperty:
        return _binary
    if kind is stix_props.HexProperty:
        return _hex
    if kind is stix_common.MarkingProperty:
        return _statement
    if kind is stix_props.SelectorProperty:
        return _string  # only in granular markings: see selectors_found
    # IDProperty is checked with the object's type (Schema for the top level),
    # SelectorProperty with the object (granular markings); ObservableProperty,
    # STIXObjectProperty and anything else: not reviewed.
    return _never


def _statement(value: Any, budget: Budget, depth: int) -> bool:
    """A marking definition's ``definition``, as StatementMarking(**value) takes it
    (its ``statement`` argument must be truthy). TLP definitions never pass: stix2
    takes only the predefined ones, which the exchange refuses to redefine."""
    return (
        type(value) is dict
        and value.keys() == {"statement"}
        and _container(budget, depth)
        and _string(value["statement"], budget, depth + 1)
        and value["statement"] != ""
    )


def _id_checker(type_name: str) -> Checker:
    def check(value: Any, budget: Budget, depth: int) -> bool:
        return type(value) is str and is_stix_id(value, type_name)

    return check


def _granular(value: Any, budget: Budget, depth: int) -> bool:
    """Granular markings, except their selectors (``selectors_found``, which needs
    the whole object): exactly one of lang and marking_ref, as GranularMarking's
    rules say."""
    return _GRANULAR_LIST(value, budget, depth)


_SELECTOR = stix_props.SELECTOR_REGEX


def selectors_found(obj: dict[str, Any]) -> bool:
    """Every granular marking selector names a top-level property of ``obj`` with a
    truthy value: found for certain by stix2's markings.utils.validate, which walks
    the object (its parsed copy, whose values are truthy exactly when these are)."""
    props = _TOP_SCHEMAS[obj["type"]].props
    for marking in obj["granular_markings"]:
        for selector in marking["selectors"]:
            if (
                type(selector) is not str
                or selector not in props
                or not obj.get(selector)
                or _SELECTOR.match(selector) is None
            ):
                return False
    return True


_COMPILED: dict[Any, Schema | None] = {}


def _compile_class(cls: Any) -> Schema | None:
    """A stix2 class as a Schema, or None when it has rules not reviewed here."""
    if cls in _COMPILED:
        return _COMPILED[cls]
    _COMPILED[cls] = None  # while compiling (no class contains itself)
    schema = _build(cls)
    _COMPILED[cls] = schema
    return schema


def _build(cls: Any) -> Schema | None:
    for klass in cls.__mro__:
        if klass in REVIEWED_BASES or not issubclass(klass, stix2.base._STIXBase):
            continue
        if "_check_object_constraints" in klass.__dict__ and klass not in RULES:
            return None
        if "__init__" in klass.__dict__ and klass not in REVIEWED_INIT:
            return None
    properties = cls._properties
    props: dict[str, Checker] = {}
    for name, prop in properties.items():
        if type(prop) is stix_props.IDProperty:
            props[name] = _id_checker(cls._type)
        elif name == "granular_markings":
            props[name] = _granular
        else:
            props[name] = _compile_property(prop)
    rules = [r for r in [RULES.get(cls)] if r is not None]
    if issubclass(cls, stix2.base._Extension) or cls is stix_sco.WindowsPEOptionalHeaderType:
        # _check_at_least_one_property() with its default list; these have no defaults.
        rules.append(any_of(*(set(properties) - {"extensions", "type"})))
    return Schema(
        cls=cls,
        props=props,
        required=frozenset(n for n, p in properties.items() if p.required),
        rule=both(*rules) if len(rules) > 1 else (rules[0] if rules else None),
    )


_GRANULAR_SCHEMA = _compile_class(stix_common.GranularMarking)
_GRANULAR_LIST: Checker = _list(_embedded(_GRANULAR_SCHEMA)) if _GRANULAR_SCHEMA else _never

_EXTENSION_SCHEMAS: dict[str, Schema] = {}
for _key, _cls in EXTENSION_CLASSES.items():
    _schema = _compile_class(_cls)
    if _schema is not None:
        _EXTENSION_SCHEMAS[_key] = _schema

_TOP_SCHEMAS: dict[str, Schema] = {}


def schema_for(type_name: str, cls: Any) -> Schema | None:
    """The compiled Schema of a top-level class (the snapshot's ``cls``), built on
    first use; None when objects of the type always take the full path."""
    schema = _TOP_SCHEMAS.get(type_name)
    if schema is None:
        if not SUPPORTED or type_name == "bundle":
            return None
        built = _compile_class(cls)
        if built is None:
            return None
        _TOP_SCHEMAS[type_name] = schema = built
    return schema
