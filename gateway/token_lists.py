"""FHIR token lists (``ADM,SOR``): one reader for the search layer, the policy and the NdE dialect (a leaf)."""

from __future__ import annotations


def split_tokens(value: str) -> list[str]:
    """A FHIR token list (``ADM,SOR``), with ``\\,`` escaping a comma inside a value."""
    parts, current, escaped = [], "", False
    for ch in value:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]
