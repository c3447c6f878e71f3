"""What only stix2 judges, asked again property by property once an object is refused,
and the checks the exchange makes on stix2's reading of an object.

stix2 stops at the first problem it finds. To name every problem in one answer,
an object already refused is put to stix2 piece by piece: each property through
the same ``clean`` its constructor runs, the required properties it would miss,
the pattern through ``exchange.stix._pattern``, and the rules between properties
by building the object without the properties already at fault. None of this
decides whether an object is refused (that was decided before), so anything here
that fails only leaves a problem out.
"""

from __future__ import annotations

import re
from typing import Any

import stix2
from stix2 import exceptions as stix_errors
from stix2 import properties as stix_props
from stix2.registry import STIX2_OBJ_MAPS

from exchange.stix._explain import NO_CUSTOM, PATTERN_REASON, explain, missing_reason, short
from exchange.stix._invalid import Invalid, Problems
from exchange.stix._pattern import pattern_object_types, pattern_problem
from exchange.stix.vocab import TRAFFICKING_OBSERVABLE_TYPES

__all__ = ["check_after_parse", "explained", "more_problems"]

_PATTERN_OBJECT_TYPES = (
    frozenset(STIX2_OBJ_MAPS["2.1"]["observables"]) | TRAFFICKING_OBSERVABLE_TYPES
)
# The properties stix2's constructor cleans with interoperability=False as well.
_INTEROPERABILITY = (
    stix_props.EmbeddedObjectProperty,
    stix_props.EnumProperty,
    stix_props.ExtensionsProperty,
    stix_props.DictionaryProperty,
    stix_props.HashesProperty,
    stix_props.IDProperty,
    stix_props.ListProperty,
    stix_props.OpenVocabProperty,
    stix_props.ReferenceProperty,
    stix_props.SelectorProperty,
)
# A pattern language stix2 does not parse (any but "stix").
_NOT_PARSED = "sigma"


def explained(exc: Exception, obj: dict[str, Any], cls: Any) -> Invalid:
    """``explain`` (which see), with a pattern's syntax error in words rather than
    in the words of the ANTLR parser stix2 uses."""
    pattern = obj.get("pattern")
    if obj.get("type") != "indicator" or obj.get("pattern_type") != "stix":
        pattern = None
    try:
        problem = explain(exc, obj, cls)
    except Exception:
        # stix2patterns fails on an empty pattern (UnboundLocalError) instead of
        # refusing it.
        if isinstance(pattern, str) and not pattern.strip():
            return Invalid("pattern", PATTERN_REASON + pattern_problem(pattern))
        raise
    if (
        problem.prop == "pattern"
        and problem.expected.startswith(PATTERN_REASON)
        and isinstance(pattern, str)
    ):
        words = pattern_problem(pattern, obj.get("pattern_version") or "2.1")
        if words:
            return Invalid("pattern", PATTERN_REASON + words)
    return problem


# -- after stix2.parse ---------------------------------------------------------------


def check_after_parse(
    stored: dict[str, Any], parsed: Any, obj_type: str, problems: Problems
) -> None:
    """What stix2 lets through: ``modified`` before ``created`` (compared as the
    instants stix2 read), and observable types in a pattern that STIX 2.1 and the
    exchange do not define. Properties already at fault are not looked at again."""
    created, modified = parsed.get("created"), parsed.get("modified")
    if (
        created is not None
        and modified is not None
        and modified < created
        and not (problems.faulted("created") or problems.faulted("modified"))
    ):
        problems.add(
            Invalid(
                "modified",
                f"later than or equal to created ({stored['created']}), got {stored['modified']}",
            )
        )
    if (
        obj_type == "indicator"
        and stored.get("pattern_type") == "stix"
        and not problems.faulted("pattern")
    ):
        unknown = pattern_object_types(stored["pattern"]) - _PATTERN_OBJECT_TYPES
        if unknown:
            extra = ", ".join(sorted(TRAFFICKING_OBSERVABLE_TYPES))
            problems.add(
                Invalid(
                    "pattern",
                    f"observable types from STIX 2.1 or the exchange's own ({extra}); "
                    f"not {', '.join(short(t, 60) for t in sorted(unknown))}",
                )
            )


# -- an object already refused -------------------------------------------------------


def more_problems(
    obj: dict[str, Any], cls: Any, problems: Problems, *, pattern_parsable: bool
) -> None:
    """Add to ``problems`` what stix2 finds wrong with ``obj`` besides them.

    ``pattern_parsable``: the pattern passed the cost limits, so it may be parsed.
    """
    if any(not isinstance(name, str) for name in obj):
        return  # stix2 takes properties as keyword arguments
    extra = sorted(name for name in obj if name not in cls._properties)
    if extra:
        problems.add(Invalid(", ".join(short(name, 60) for name in extra), NO_CUSTOM))
    for name, prop in cls._properties.items():
        if problems.faulted(name) or obj.get(name) in (None, []):
            continue
        error = _clean_error(cls, name, prop, obj[name])
        if error is not None:
            problems.add(explain(error, obj, cls))
    missing = _missing(obj, cls)
    if missing:
        problems.add(Invalid(", ".join(missing), missing_reason(missing)))
    if pattern_parsable:
        _check_pattern(obj, problems)
    if not missing:
        _check_rules(obj, cls, problems)


def _clean_error(cls: Any, name: str, prop: Any, value: Any) -> Exception | None:
    """What stix2's constructor would raise for this one property, if anything."""
    arguments = [value, False]
    if isinstance(prop, _INTEROPERABILITY):
        arguments.append(False)
    try:
        prop.clean(*arguments)
    except Exception as exc:  # noqa: BLE001 - stix2 wraps any error of a property the same way
        error: Exception = exc
        if not isinstance(exc, stix_errors.InvalidValueError):
            error = stix_errors.InvalidValueError(cls, name, reason=str(exc))
            error.__cause__ = exc
        return error
    return None


def _missing(obj: dict[str, Any], cls: Any) -> list[str]:
    # As stix2 counts them: an empty list or null is no value.
    return sorted(
        name
        for name, prop in cls._properties.items()
        if prop.required and obj.get(name) in (None, [])
    )


def _check_pattern(obj: dict[str, Any], problems: Problems) -> None:
    pattern = obj.get("pattern")
    if (
        obj.get("type") != "indicator"
        or obj.get("pattern_type") != "stix"
        or not isinstance(pattern, str)
        or problems.faulted("pattern")
    ):
        return
    # As stix2 does: no pattern_version means the 2.1 grammar.
    words = pattern_problem(pattern, obj.get("pattern_version") or "2.1")
    if words:
        problems.add(Invalid("pattern", PATTERN_REASON + words))


def _check_rules(obj: dict[str, Any], cls: Any, problems: Problems) -> None:
    """The rules between properties (valid_until after valid_from, properties that
    need or exclude others), on the object without the properties at fault: stix2
    reports the first one broken."""
    faulted = {name for name in [*obj, *cls._properties] if problems.faulted(name)}
    reduced = {name: value for name, value in obj.items() if name not in faulted}
    if obj.get("type") == "indicator":
        # The pattern was judged already, or is too costly to parse, or at fault: stix2,
        # told it is in another language, leaves it alone.
        if "pattern" in obj and "pattern" in faulted:
            reduced["pattern"] = "-"
        if "pattern_type" in obj and ("pattern_type" in faulted or obj["pattern_type"] == "stix"):
            reduced["pattern_type"] = _NOT_PARSED
    if _missing(reduced, cls):
        return  # stix2 would stop there, and that was reported already
    try:
        parsed = stix2.parse(reduced, allow_custom=False, version="2.1")
    except Exception as exc:  # noqa: BLE001 - stix2 raises many types; explain() names them
        try:
            problem = explained(exc, reduced, cls)
        except Exception:  # noqa: BLE001 - not stix2 finding fault: nothing to add
            return
        # A rule broken only because a property was left out (or stood in for by
        # stix2's default, as created is) is no problem of the object's.
        if not _mentions(f"{exc} {problem.prop} {problem.expected}", faulted):
            problems.add(problem)
        return
    check_after_parse(obj, parsed, str(obj.get("type")), problems)


def _mentions(text: str, names: set[str]) -> bool:
    return any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) for name in names)
