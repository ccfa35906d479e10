"""The one error → HTTP translation: each error class's status and OperationOutcome issue code.

Errors below the edge say what happened; this table says how HTTP answers it. A class is looked up along
its MRO, as Starlette looks up exception handlers, so a new subclass answers as its parent until it is
given a row of its own. ``tests/unit/test_errors_registry.py`` walks the tree and checks every class.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gateway import errors as e
from gateway.fhir.outcome import operation_outcome

#: (HTTP status, FHIR issue type code) per error class.
HTTP_ANSWERS: Mapping[type[e.GatewayError], tuple[int, str]] = MappingProxyType(
    {
        e.GatewayError: (422, "processing"),
        e.StorageError: (500, "exception"),
        e.StorageConflictError: (409, "conflict"),
        e.StorageUnavailableError: (503, "transient"),
        e.TransportError: (400, "invalid"),
        e.MediaTypeError: (415, "invalid"),
        e.BodyTooLargeError: (413, "too-long"),
        e.FhirError: (400, "invalid"),
        e.StructureError: (400, "structure"),
        e.RequiredElementError: (400, "required"),
        e.ElementValueError: (400, "value"),
        e.EndpointRefusedError: (400, "security"),
        e.NotSupportedError: (400, "not-supported"),
        e.UnsupportedSearchError: (400, "not-supported"),
        e.NotAcceptableError: (406, "not-supported"),
        e.UnsupportedMediaTypeError: (415, "not-supported"),
        e.TooCostlyError: (400, "too-costly"),
        e.SearchFormTooLargeError: (413, "too-costly"),
        e.NotFoundError: (404, "not-found"),
        e.UnknownTypeError: (404, "not-supported"),
        e.GoneError: (410, "deleted"),
        e.PreconditionFailedError: (412, "conflict"),
        e.BusinessRuleError: (422, "business-rule"),
        e.ProfileViolationError: (422, "invariant"),
        e.ProfileRequiredError: (422, "required"),
        e.ProfileValueError: (422, "value"),
        e.ProfileCodeError: (422, "code-invalid"),
        e.ProfileUnsupportedError: (422, "not-supported"),
        e.AuthenticationError: (401, "login"),
        e.ForbiddenError: (403, "forbidden"),
        e.OAuthError: (400, "invalid"),
        e.InvalidClientError: (401, "login"),
    }
)


def http_answer(kind: type[e.GatewayError]) -> tuple[int, str]:
    """The status and issue code of the nearest class in ``kind``'s MRO that has a row."""
    for cls in kind.__mro__:
        if cls in HTTP_ANSWERS:
            return HTTP_ANSWERS[cls]
    raise TypeError(f"{kind.__name__} is not a GatewayError")  # the root has a row: only non-gateway classes


def http_status(exc: e.GatewayError) -> int:
    return http_answer(type(exc))[0]


def outcome_of(exc: e.GatewayError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the OperationOutcome body answering ``exc``."""
    status, code = http_answer(type(exc))
    return status, operation_outcome(exc.message, code=code, details=exc.slug, expression=exc.location or None)
