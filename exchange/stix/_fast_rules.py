"""The rules between properties of stix2's classes, for the fast path
(``exchange.stix._fast_schema``): each class's ``_check_object_constraints`` and
``__init__`` overrides, as read in stix2 3.0.2, written out as checks on the
submitted JSON that pass only where stix2's pass for certain.

A class with an override not listed here (``RULES``, ``REVIEWED_INIT``,
``REVIEWED_BASES``) is never compiled: its objects always take the full path.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import stix2.base
import stix2.v21.base
from stix2.v21 import common as stix_common
from stix2.v21 import observables as stix_sco
from stix2.v21 import sdo as stix_sdo
from stix2.v21 import sro as stix_sro

__all__ = ["REVIEWED_BASES", "REVIEWED_INIT", "RULES", "Rule", "any_of", "both", "instant"]

Rule = Callable[[dict[str, Any]], bool]


# -- timestamps ---------------------------------------------------------------------

# A subset of what _json_checks accepts (at most 6 fraction digits: strptime's %f).
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?Z"
)
_Instant = tuple[int, int, int, int, int, int, int]
_INSTANTS: dict[str, _Instant | None] = {}


def _read_instant(value: str) -> _Instant | None:
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, frac = match.groups()
    parts = (int(year), int(month), int(day), int(hour), int(minute), int(second))
    try:
        # What strptime("%Y-%m-%dT%H:%M:%S[.%f]Z") then takes: a real date and time.
        dt.datetime(*parts)
    except ValueError:
        return None
    return (*parts, int(frac.ljust(6, "0")) if frac else 0)


def instant(value: str, prop: Any = None) -> _Instant | None:
    """The UTC instant stix2 reads from ``value`` (as a comparable tuple), with the
    precision ``prop`` truncates it to; None when not certainly a timestamp."""
    if value in _INSTANTS:
        found = _INSTANTS[value]
    else:
        found = _read_instant(value)
        if len(_INSTANTS) > 4096:  # submitted text: keep the cache bounded
            _INSTANTS.clear()
        _INSTANTS[value] = found
    if found is None or prop is None or prop.precision_constraint != "exact":
        return found
    if prop.precision == "second":
        return (*found[:6], 0)
    if prop.precision == "millisecond":
        return (*found[:6], found[6] // 1000 * 1000)
    return found


# Reviewed: each class's own _check_object_constraints / __init__ (and those of its
# bases), in stix2 3.0.2. Any other override makes its class take the full path.
REVIEWED_BASES = frozenset(
    {
        stix2.base._STIXBase,
        stix2.base._Extension,
        stix2.base._Observable,
        stix2.v21.base._Observable,
    }
)


def _ordered(first: str, then: str, *, strictly: bool, cls: Any) -> Rule:
    """``then`` no earlier than ``first`` (or strictly later), as stix2 compares them."""
    first_prop, then_prop = cls._properties[first], cls._properties[then]

    def rule(obj: dict[str, Any]) -> bool:
        if first not in obj or then not in obj:
            return True
        start, end = instant(obj[first], first_prop), instant(obj[then], then_prop)
        if start is None or end is None:
            return False
        return end > start if strictly else end >= start

    return rule


def any_of(*names: str) -> Rule:
    wanted = frozenset(names)

    def rule(obj: dict[str, Any]) -> bool:
        return not wanted.isdisjoint(obj)

    return rule


def _one_of(*names: str) -> Rule:
    wanted = frozenset(names)

    def rule(obj: dict[str, Any]) -> bool:
        return len(wanted.intersection(obj)) == 1

    return rule


def both(*rules: Rule) -> Rule:
    def rule(obj: dict[str, Any]) -> bool:
        return all(r(obj) for r in rules)

    return rule


def _location(obj: dict[str, Any]) -> bool:
    has_lat, has_long = "latitude" in obj, "longitude" in obj
    if "precision" in obj and not (has_lat and has_long):
        return False
    if has_lat != has_long:
        return False
    return "region" in obj or "country" in obj or (has_lat and has_long)


def _malware_family(obj: dict[str, Any]) -> bool:
    return obj.get("is_family") is not True or "name" in obj


def _email_body(obj: dict[str, Any]) -> bool:
    if obj.get("is_multipart") is False and "body_multipart" in obj:
        return False
    return not (obj.get("is_multipart") is True and obj.get("body"))


def _artifact(obj: dict[str, Any]) -> bool:
    return len({"payload_bin", "url"}.intersection(obj)) == 1 and (
        "url" not in obj or "hashes" in obj
    )


def _network_traffic(obj: dict[str, Any]) -> bool:
    return "end" not in obj or obj.get("is_active") is False


_PROCESS_PROPS = frozenset(stix_sco.Process._properties) - {
    "extensions",
    "type",
    "id",
    "defanged",
    "spec_version",
}


def _process(obj: dict[str, Any]) -> bool:
    # At least one property; failing that, any extensions (each has one already).
    return not _PROCESS_PROPS.isdisjoint(obj) or "extensions" in obj


_SOCKET_PREFIXES = frozenset({"SO_", "ICMP_", "ICMP6_", "IP_", "IPV6_", "MCAST_", "TCP_", "IRLMP_"})


def _socket_options(obj: dict[str, Any]) -> bool:
    options = obj.get("options")
    if options is None:
        return True
    return all(
        key[: key.find("_") + 1] in _SOCKET_PREFIXES and type(val) is int
        for key, val in options.items()
    )


def _non_empty(*names: str) -> Rule:
    """Arguments an ``__init__`` override takes by name and passes on only if truthy."""

    def rule(obj: dict[str, Any]) -> bool:
        return all(obj.get(name) != "" for name in names)

    return rule


def _marking_definition(obj: dict[str, Any]) -> bool:
    # No extensions reach here (the exchange refuses them on marking definitions).
    return obj.get("definition_type") == "statement" and "definition" in obj


def _seen(cls: Any) -> Rule:
    return _ordered("first_seen", "last_seen", strictly=False, cls=cls)


RULES: dict[Any, Rule | None] = {
    stix_sdo.Campaign: _seen(stix_sdo.Campaign),
    stix_sdo.Infrastructure: _seen(stix_sdo.Infrastructure),
    stix_sdo.IntrusionSet: _seen(stix_sdo.IntrusionSet),
    stix_sdo.ThreatActor: _seen(stix_sdo.ThreatActor),
    stix_sdo.Malware: both(_seen(stix_sdo.Malware), _malware_family),
    stix_sdo.MalwareAnalysis: any_of("result", "analysis_sco_refs"),
    # objects (ObservableProperty) is never fast: object_refs is then required.
    stix_sdo.ObservedData: both(
        _ordered("first_observed", "last_observed", strictly=False, cls=stix_sdo.ObservedData),
        _one_of("objects", "object_refs"),
    ),
    # The pattern (and the pattern_version __init__ fills in) is _fast's to check.
    stix_sdo.Indicator: _ordered(
        "valid_from", "valid_until", strictly=True, cls=stix_sdo.Indicator
    ),
    stix_sdo.Location: _location,
    stix_sro.Relationship: both(
        _ordered("start_time", "stop_time", strictly=True, cls=stix_sro.Relationship),
        _non_empty("relationship_type", "source_ref", "target_ref"),
    ),
    stix_sro.Sighting: both(_seen(stix_sro.Sighting), _non_empty("sighting_of_ref")),
    stix_common.MarkingDefinition: _marking_definition,
    stix_common.ExternalReference: any_of("description", "external_id", "url"),
    stix_common.GranularMarking: _one_of("lang", "marking_ref"),
    stix_sco.EmailMIMEComponent: any_of("body", "body_raw_ref"),
    stix_sco.EmailMessage: _email_body,
    stix_sco.Artifact: _artifact,
    stix_sco.File: any_of("hashes", "name"),
    stix_sco.NetworkTraffic: both(
        any_of("src_ref", "dst_ref"),
        _network_traffic,
        _ordered("start", "end", strictly=False, cls=stix_sco.NetworkTraffic),
    ),
    stix_sco.Process: _process,
    stix_sco.SocketExt: _socket_options,
    stix_sco.X509Certificate: any_of(
        "is_self_signed",
        "hashes",
        "version",
        "serial_number",
        "signature_algorithm",
        "issuer",
        "validity_not_before",
        "validity_not_after",
        "subject",
        "subject_public_key_algorithm",
        "subject_public_key_modulus",
        "subject_public_key_exponent",
        "x509_v3_extensions",
    ),
    stix_sco.WindowsPEOptionalHeaderType: None,  # at least one property: below
}
# Classes whose own __init__ was reviewed (its effect is in their rule above).
REVIEWED_INIT = frozenset(
    {
        stix_sdo.Indicator,
        stix_sdo.ObservedData,  # only warns about objects
        stix_sro.Relationship,
        stix_sro.Sighting,
        stix_common.MarkingDefinition,
    }
)
