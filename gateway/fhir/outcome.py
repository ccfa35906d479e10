"""OperationOutcome bodies: the FHIR face of every error."""

from __future__ import annotations

from typing import Any

from gateway.canonical import CANONICAL_BASE

ERROR_CODE_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/gateway-error"


def operation_outcome(
    text: str,
    *,
    code: str = "processing",
    severity: str = "error",
    details: str | None = None,
    expression: str | None = None,
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
    if details:
        issue["details"] = {"coding": [{"system": ERROR_CODE_SYSTEM, "code": details}], "text": text}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
