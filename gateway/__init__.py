"""HL7 v2 (IHE PAM France) → FHIR R4 gateway for e-parcours platforms."""

__version__ = "0.1.0"
