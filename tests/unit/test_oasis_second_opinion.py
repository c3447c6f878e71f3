"""A second opinion: what the exchange accepts and stores is valid STIX 2.1 for
the OASIS validator too (including what the exchange stamps on it)."""

from __future__ import annotations

import orjson
from stix2validator import ValidationOptions, validate_instance

from exchange.config import Limits
from exchange.model import Tlp, ValidObject
from exchange.stix import validate_objects
from tests.helpers import bundle, indicator, partner_export

IDENTITY = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"


def test_stored_bodies_pass_the_oasis_validator() -> None:
    export = partner_export(IDENTITY, "Harbor Light Alliance")
    objects = [*export["objects"], indicator(None, tlp=None)]
    checked = validate_objects(
        objects, submitter_identity=IDENTITY, default_tlp=Tlp.AMBER, limits=Limits()
    )
    assert all(isinstance(c, ValidObject) for c in checked)
    stored = [orjson.loads(c.body) for c in checked if isinstance(c, ValidObject)]
    result = validate_instance(bundle(stored), ValidationOptions(version="2.1"))
    assert result.is_valid, [e.message for e in result.errors]
