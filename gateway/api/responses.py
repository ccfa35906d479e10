"""FHIR JSON responses (orjson; the models are for tests and the cold path, not for serializing)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson
from fastapi import Response

FHIR_JSON = "application/fhir+json"


def fhir_response(body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def http_date(instant: str) -> str | None:
    """A FHIR instant as an RFC 9110 HTTP-date (``Last-Modified`` must be one; ISO 8601 is not)."""
    try:
        moment = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def versioned(body: dict[str, Any], *, status: int = 200, location: str | None = None) -> Response:
    meta = body.get("meta", {})
    headers = {"ETag": f'W/"{meta.get("versionId", "")}"'}
    modified = http_date(str(meta["lastUpdated"])) if meta.get("lastUpdated") else None
    if modified:
        headers["Last-Modified"] = modified
    if location:
        headers["Location"] = location
    return fhir_response(body, status=status, headers=headers)
