"""TAXII 2.1 media types and the Accept / Content-Type negotiation the spec asks for."""

from __future__ import annotations

from exchange.taxii._errors import TaxiiError

__all__ = [
    "STIX_MEDIA_TYPE",
    "TAXII_MEDIA_TYPE",
    "check_accept",
    "check_content_type",
]

TAXII_MEDIA_TYPE = "application/taxii+json;version=2.1"
STIX_MEDIA_TYPE = "application/stix+json;version=2.1"
_TAXII = "application/taxii+json"


def _ranges(header: str) -> list[tuple[str, dict[str, str]]]:
    """Media ranges of an Accept or Content-Type header: (type, parameters), lowercase."""
    out: list[tuple[str, dict[str, str]]] = []
    for part in header.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        values = {}
        for param in params:
            name, _, value = param.partition("=")
            values[name.strip().lower()] = value.strip().strip('"')
        if kind:
            out.append((kind.lower(), values))
    return out


def _taxii_21(kind: str, params: dict[str, str]) -> bool:
    # No version parameter means the latest the server speaks (TAXII 2.1, section 1.6.8).
    return kind == _TAXII and params.get("version", "2.1") == "2.1"


def check_accept(header: str | None) -> None:
    """406 unless the client accepts TAXII 2.1 (a missing Accept accepts anything)."""
    if header is None or not header.strip():
        return
    for kind, params in _ranges(header):
        if params.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        if kind in ("*/*", "application/*") or _taxii_21(kind, params):
            return
    raise TaxiiError(
        406,
        "Not Acceptable",
        f"this server answers only in {TAXII_MEDIA_TYPE}; the Accept header"
        f" ({header[:200]!r}) does not accept it",
    )


def check_content_type(header: str | None) -> None:
    """415 unless a request body is TAXII 2.1 JSON."""
    ranges = _ranges(header or "")
    if len(ranges) == 1 and _taxii_21(*ranges[0]):
        return
    raise TaxiiError(
        415,
        "Unsupported Media Type",
        f"send the envelope as Content-Type: {TAXII_MEDIA_TYPE} (got {(header or 'none')[:200]!r})",
    )
