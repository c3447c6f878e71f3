"""STIX 2.1 words the exchange relies on, plus the few trafficking work adds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from stix2.v21 import vocab as _stix_vocab

__all__ = [
    "INDUSTRY_SECTORS",
    "SCO_EXTENSION_TYPES",
    "TRAFFICKING_OBSERVABLE_TYPES",
    "is_stix_id",
]

# industry-sector-ov, straight from the library so it follows the spec it implements.
INDUSTRY_SECTORS: frozenset[str] = frozenset(_stix_vocab.INDUSTRY_SECTOR)

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
