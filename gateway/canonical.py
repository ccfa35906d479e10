"""Canonical URLs, each declared once: the gateway's own base, and the profiles and code systems it cites.

A leaf module (it imports nothing from the gateway), so that every package may take its URLs from here
without importing another package for a constant. ``.example`` is reserved (RFC 2606): a deployment that
publishes its own definitions changes ``CANONICAL_BASE`` here.
"""

from typing import Final

#: The base of everything this gateway defines (topics, extensions, code and identifier systems).
CANONICAL_BASE: Final = "https://gateway.e-parcours.example/fhir"
#: FHIR core resource definitions (``{FHIR_CORE_SD}/Encounter``).
FHIR_CORE_SD: Final = "http://hl7.org/fhir/StructureDefinition"
#: FR Core 2.1.0 profiles and extensions.
FR_CORE_SD: Final = "https://hl7.fr/ig/fhir/core/StructureDefinition"
#: The Subscriptions R5 Backport IG's profiles and extensions.
BACKPORT_SD: Final = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
#: ANS TRE_R254-TypeEvenement: the event codes of the NdE and of the topics.
TRE_R254_SYSTEM: Final = "https://mos.esante.gouv.fr/NOS/TRE_R254-TypeEvenement/FHIR/TRE-R254-TypeEvenement"
