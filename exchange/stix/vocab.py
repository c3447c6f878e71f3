"""STIX 2.1 words the exchange relies on, plus the few trafficking work adds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from stix2.registry import STIX2_OBJ_MAPS
from stix2.v21 import vocab as _stix_vocab

__all__ = [
    "INDUSTRY_SECTORS",
    "OBSERVABLE_TYPES",
    "SCO_EXTENSION_TYPES",
    "TRAFFICKING_OBSERVABLE_TYPES",
    "is_observable",
    "is_stix_id",
]

# industry-sector-ov, straight from the library so it follows the spec it implements.
INDUSTRY_SECTORS: frozenset[str] = frozenset(_stix_vocab.INDUSTRY_SECTOR)

# The STIX 2.1 cyber-observable (SCO) types, snapshot at import. An SCO's id is a
# UUIDv5 of its value and it names no creator: two partners who share the same phone
# number or wallet share one id, so each partner holds its own copy of it.
OBSERVABLE_TYPES: frozenset[str] = frozenset(STIX2_OBJ_MAPS["2.1"]["observables"])


def is_observable(object_type: str) -> bool:
    """True for an SCO type: an object of it is held per submitting partner."""
    return object_type in OBSERVABLE_TYPES


# Observable types trafficking work needs that STIX 2.1 lacks. They may appear in
# indicator patterns (the pattern grammar accepts any type name); they are not
# accepted as objects of their own, because STIX has no schema to check them against.
TRAFFICKING_OBSERVABLE_TYPES: frozenset[str] = frozenset(
    {"x-phone-number", "cryptocurrency-wallet"}
)

# The spec-defined SCO extensions and the one object type each belongs to. The
# stix2 library checks their content but accepts them on any object.
SCO_EXTENSION_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "archive-ext": "file",
        "ntfs-ext": "file",
        "pdf-ext": "file",
        "raster-image-ext": "file",
        "windows-pebinary-ext": "file",
        "http-request-ext": "network-traffic",
        "icmp-ext": "network-traffic",
        "socket-ext": "network-traffic",
        "tcp-ext": "network-traffic",
        "unix-account-ext": "user-account",
        "windows-process-ext": "process",
        "windows-service-ext": "process",
    }
)

# Canonical lower-case RFC 4122-variant UUID. The library also takes upper case,
# braces and missing hyphens; one spelling per object keeps ids comparable as strings.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def is_stix_id(value: str, type_name: str) -> bool:
    """True if ``value`` is ``<type_name>--<UUID>`` in canonical form."""
    prefix_len = len(type_name) + 2
    return (
        value.startswith(type_name)
        and value[len(type_name) : prefix_len] == "--"
        and _UUID.fullmatch(value, prefix_len) is not None
    )
