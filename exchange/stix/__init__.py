"""STIX 2.1 handling: bundle decoding, per-object validation, TLP and vocabularies.

"Is this valid STIX?" is answered here and nowhere else.
"""

from exchange.stix._fast import fast_validate
from exchange.stix.bundle import decode_bundle
from exchange.stix.tlp import TLP_BY_MARKING_ID, marking_id, parse_tlp
from exchange.stix.validate import validate_objects, validate_objects_counted
from exchange.stix.vocab import INDUSTRY_SECTORS, TRAFFICKING_OBSERVABLE_TYPES

__all__ = [
    "INDUSTRY_SECTORS",
    "TLP_BY_MARKING_ID",
    "TRAFFICKING_OBSERVABLE_TYPES",
    "decode_bundle",
    "fast_validate",
    "marking_id",
    "parse_tlp",
    "validate_objects",
    "validate_objects_counted",
]
