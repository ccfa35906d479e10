"""Deterministic resource ids: the same business key always gives the same id, so replays change nothing."""

from __future__ import annotations

import hashlib


def resource_id(resource_type: str, key: str) -> str:
    """A FHIR id (32 hex chars) from a business key such as ``system|value``; no PHI is readable in it."""
    digest = hashlib.sha256(f"{resource_type}\x1f{key}".encode()).hexdigest()
    return digest[:32]
