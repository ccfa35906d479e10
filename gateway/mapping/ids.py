"""Deterministic resource ids: the same business key always gives the same id, so replays change nothing."""

from __future__ import annotations

import hashlib
from functools import lru_cache

#: Arguments longer than this are not memoized by the hot path's small caches (``lru_cache`` keeps its
#: keys): a hostile 300 kB field must not be held a thousand times over.
MEMO_LONGEST = 256


def resource_id(resource_type: str, key: str) -> str:
    """A FHIR id (32 hex chars) from a business key such as ``system|value``; no PHI is readable in it."""
    return _digest(resource_type, key) if len(key) > MEMO_LONGEST else _known_digest(resource_type, key)


def _digest(resource_type: str, key: str) -> str:
    return hashlib.sha256(f"{resource_type}\x1f{key}".encode()).hexdigest()[:32]


#: ~25 ids a message, most of them the same doctors, units, patient and stay again
_known_digest = lru_cache(maxsize=1024)(_digest)


#: ANS national identifiers of health professionals (FR Core 2.1.0 fr-core-practitioner slices).
PS_OID = "urn:oid:1.2.250.1.71.4.2.1"  # idNatPs: the prefixed national id (8 + RPPS, 0 + ADELI)
RPPS_SYSTEM = "https://rpps.esante.gouv.fr"
ADELI_SYSTEM = "https://adeli.esante.gouv.fr"
#: national system → (type code, idNatPs prefix)
NATIONAL_PS = {RPPS_SYSTEM: ("RPPS", "8"), ADELI_SYSTEM: ("ADELI", "0")}
NATIONAL_LENGTH = {RPPS_SYSTEM: 11, ADELI_SYSTEM: 9}


def national_ps(system: str, value: str, type_code: str = "") -> tuple[str, str] | None:
    """(RPPS or ADELI system, bare number) of a professional's national id in any of the forms senders
    use: the RPPS or ADELI under the idNatPs OID (typed or told apart by length), the prefixed idNatPs
    (8 + RPPS, 0 + ADELI), or already under the RPPS / ADELI system. ``None``: not a national id."""
    if system in NATIONAL_PS:
        return system, value
    if system != PS_OID or not value.isdigit():
        return None
    if type_code == "RPPS" or (type_code != "IDNPS" and len(value) == 11):
        return RPPS_SYSTEM, value
    if type_code == "ADELI" or (type_code != "IDNPS" and len(value) == 9):
        return ADELI_SYSTEM, value
    for national, (_code, prefix) in NATIONAL_PS.items():
        if value.startswith(prefix) and len(value) == 1 + NATIONAL_LENGTH[national]:
            return national, value[1:]
    return None


def ps_identifier_forms(system: str, value: str) -> list[tuple[str, str]]:
    """Every (system, value) a search for this professional may use: RPPS, the RPPS under the idNatPs OID
    (the gateway's form before FR Core 2.1.0), and the prefixed idNatPs. Others: just themselves."""
    found = national_ps(system, value)
    if found is None:
        return [(system, value)]
    national, number = found
    prefix = NATIONAL_PS[national][1]
    return [(national, number), (PS_OID, number), (PS_OID, f"{prefix}{number}")]
