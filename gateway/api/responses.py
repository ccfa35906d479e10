"""FHIR JSON responses (orjson; the models are for tests and the cold path, not for serializing)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

FHIR_JSON = "application/fhir+json"


def fhir_response(body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def versioned(body: dict[str, Any], *, status: int = 200, location: str | None = None) -> Response:
    meta = body.get("meta", {})
    headers = {"ETag": f'W/"{meta.get("versionId", "")}"'}
    if meta.get("lastUpdated"):
        headers["Last-Modified"] = str(meta["lastUpdated"])
    if location:
        headers["Location"] = location
    return fhir_response(body, status=status, headers=headers)
