"""TLP marking definitions: which marking-definition id means which level.

STIX 2.1 predefines the TLP 1.0 markings (the stix2 library ships them as
``stix2.TLP_WHITE`` etc.); TLP 2.0 markings come from the OASIS TLP 2.0
extension definition. Both are accepted when reading; the exchange writes
TLP 2.0 ids only.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from exchange.model import Tlp

__all__ = [
    "TLP_BY_MARKING_ID",
    "TLP_EXTENSION_DEFINITION_ID",
    "marking_id",
    "parse_tlp",
]

# The OASIS extension definition the TLP 2.0 marking definitions are built on.
TLP_EXTENSION_DEFINITION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"

_TLP2_MARKING_IDS: Mapping[Tlp, str] = MappingProxyType(
    {
        Tlp.CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
        Tlp.GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        Tlp.AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        Tlp.AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        Tlp.RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
    }
)

# TLP 1.0, as predefined by STIX 2.1 (same ids as stix2.TLP_WHITE/GREEN/AMBER/RED).
_TLP1_MARKING_IDS: Mapping[str, Tlp] = MappingProxyType(
    {
        "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": Tlp.CLEAR,  # WHITE
        "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": Tlp.GREEN,
        "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": Tlp.AMBER,
        "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": Tlp.RED,
    }
)

TLP_BY_MARKING_ID: Mapping[str, Tlp] = MappingProxyType(
    {**{mid: tlp for tlp, mid in _TLP2_MARKING_IDS.items()}, **_TLP1_MARKING_IDS}
)

_NAMES: Mapping[str, Tlp] = MappingProxyType(
    {**{tlp.value: tlp for tlp in Tlp}, "white": Tlp.CLEAR}
)


def marking_id(tlp: Tlp) -> str:
    """The TLP 2.0 marking-definition id for ``tlp``."""
    return _TLP2_MARKING_IDS[tlp]


def parse_tlp(name: str) -> Tlp:
    """Read a TLP level as people write it: ``amber``, ``TLP:AMBER+STRICT``, ``white``."""
    key = name.strip().lower()
    if key.startswith("tlp:"):
        key = key[4:].strip()
    try:
        return _NAMES[key]
    except KeyError:
        choices = ", ".join(tlp.value for tlp in Tlp)
        raise ValueError(
            f"unknown TLP level {name[:40]!r}; expected one of {choices} "
            "(case-insensitive, optional 'TLP:' prefix; 'white' is read as clear)"
        ) from None
